"""Load benchmark of the HTTP API: concurrent voice-note uploads, upload-to-ticket latency.

    .venv/bin/python bench/load.py --workers 1,2 --concurrency 50 --json bench/out/load.json
    .venv/bin/python bench/load.py --workers 1 --uploads 0 --latency-probe   # latency only
    .venv/bin/python bench/load.py --mode embedded --workers 1,2              # no Redis
    .venv/bin/python bench/load.py --workers 1 --concurrency 3 --uploads 3    # a quick check

For each worker count W the script starts a private deployment on this machine and
nothing else: a temporary data directory (SQLite store, blobs), in distributed mode
its own ``redis-server`` on a free port (no persistence; the shared Redis on 6379 is
never touched), ``minyin serve`` on 127.0.0.1 and ``minyin worker --concurrency W``,
each worker process with ``cores // W`` CTranslate2 threads (at least 1) so that every W
uses the same cores. In embedded mode only ``minyin serve`` with
``MINYIN_EMBEDDED_WORKERS=W`` (one model in one process: it keeps all cores).
Webhook and other outside sinks are cleared from the environment; rate limits are
raised out of the way and the de-duplication window is set to 0, because the same
sample is uploaded more than once and would otherwise be merged into one job.

Once ``/readyz`` reports W workers with a loaded model, one warm-up upload (not
counted); with ``--latency-probe`` (on the W=1 deployment, or one started for it) a
sequential probe on the idle system: ``--probe-uploads`` voice notes of 12-20 s, one
at a time, upload-to-ticket p50/p95, which is the target "a 15-second voice note in
under 4 s (p95) with one idle worker". Then the load run: ``--uploads`` uploads
(default ``--concurrency``), each its own ``client_ref``, the samples round-robin,
at most ``--concurrency`` in flight; a slot is held from the upload until its job is
done or failed (closed loop: ``--concurrency`` clients each waiting for their ticket).

Per upload: HTTP status, time to the 202, then ``GET /v1/jobs/{id}`` every ``--poll``
seconds while the job runs (every ``--poll-queued`` while it waits in the queue, so
that 50 waiting clients do not load the 2-core machine that also runs the model),
until done or failed. Latency is upload start to the poll that saw "done" (what a
client sees); ``latency_server`` is upload start to the job's ``finished_at`` (same
clock, loopback), free of the polling interval. Errors: any answer but 202 (a
duplicate's 200 included), failed jobs, timeouts, connection errors. Throughput: done
jobs per minute and audio seconds per wall second, from the first upload to the last
ticket. Also ``minyin_realtime_factor`` from ``/metrics`` (all done jobs of that
deployment: warm-up and probe included).

Loopback only (127.0.0.1) and bounded: a fixed number of uploads, per-job and
readiness timeouts, and every process it started is stopped (SIGTERM to its process
group, then SIGKILL) and the temporary directory removed, on errors and Ctrl-C too.
Prints a table (rich); ``--json`` writes every measurement. Run it on an otherwise
quiet machine: the client, the API and the workers share its cores, and CTranslate2's
threads slow down several times over when another process takes one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SETS = {"samples": ROOT / "samples" / "manifest.jsonl",
        "shared": ROOT.parent / "shared" / "audio" / "manifest.jsonl"}
HOST = "127.0.0.1"
PROBE_SECONDS = (12.0, 20.0)  # "a ~15-second voice note"
# never inherited: anything that would send tickets or data off this machine or into
# a store other than the temporary one
ISOLATE = ("MINYIN_DATABASE_URL", "MINYIN_REDIS_URL", "MINYIN_WEBHOOK_URL",
           "MINYIN_WEBHOOK_SECRET", "MINYIN_JSONL_PATH", "MINYIN_STREAM_NAME")

# piped: wide enough for the table instead of rich's 80 columns
out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)


def _minyin() -> str:
    beside = Path(sys.executable).parent / "minyin"
    if beside.is_file():
        return str(beside)
    found = shutil.which("minyin")
    if not found:
        raise SystemExit("the minyin command is not installed (make setup)")
    return found


# --------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class Clip:
    name: str
    data: bytes
    duration_s: float


def load_clips(spec: str) -> list[Clip]:
    manifest = SETS.get(spec, Path(spec))
    if not manifest.is_file():
        raise typer.BadParameter(f"no manifest {manifest} (sets: {', '.join(SETS)}, or a path)")
    clips = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        path = (manifest.parent / entry["audio"]).resolve()
        duration = entry.get("duration_s")
        if duration is None:
            from pipeline.audio import decode_audio  # only for manifests without durations

            duration = decode_audio(path, split_channels=False).duration
        clips.append(Clip(path.name, path.read_bytes(), float(duration)))
    if not clips:
        raise typer.BadParameter(f"{manifest} lists no audio")
    return clips


# --------------------------------------------------------------------------- processes


def free_port(start: int | None = None) -> int:
    """`start` or the first free port above it; any free port when None."""
    port = start or 0
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                port += 1
                if port > 65535:
                    raise RuntimeError("no free port") from None
                continue
            return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM to the process group it leads (Celery's pool processes included), then
    SIGKILL to whatever of the group is left."""
    pgid = proc.pid  # started with start_new_session: it leads its own group
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Deployment:
    """One private minyin deployment in a temporary directory; `stop()` leaves nothing."""

    def __init__(self, mode: str, workers: int, cores: int, port: int) -> None:
        self.mode, self.workers, self.cores, self.port = mode, workers, cores, port
        self.tmp = Path(tempfile.mkdtemp(prefix=f"minyin-load-w{workers}-"))
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.logs: dict[str, Path] = {}
        self.url = f"http://{HOST}:{port}"
        threads = cores if mode == "embedded" else max(1, cores // workers)
        env = {k: v for k, v in os.environ.items() if k not in ISOLATE}
        env.update(
            MINYIN_DATA_DIR=str(self.tmp / "data"),
            MINYIN_UPLOAD_RATE_LIMIT="100000/minute",
            MINYIN_RATE_LIMIT="100000/minute",
            MINYIN_CPU_THREADS=str(threads),
            MINYIN_DEDUP_WINDOW_MINUTES="0",
            PYTHONUNBUFFERED="1",
        )
        if mode == "embedded":
            env["MINYIN_EMBEDDED_WORKERS"] = str(workers)
        self.env = env
        self.threads = threads
        self.submitter_key = self.staff_key = ""
        self.redis_port = 0

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as fh:  # a restarted process (bench/chaos.py) appends
            proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def _key(self, role: str) -> str:
        done = subprocess.run([_minyin(), "keys", "create", "--role", role, "--name", "load"],
                              env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=False)
        key = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if done.returncode != 0 or not key:
            raise RuntimeError(f"minyin keys create failed: {done.stderr.strip()[-2000:]}")
        return key

    def start(self, ready_timeout_s: float) -> None:
        (self.tmp / "data").mkdir()
        if self.mode == "distributed":
            self.redis_port = free_port()
            self.start_redis()
            self.env["MINYIN_REDIS_URL"] = f"redis://{HOST}:{self.redis_port}/0"
            self.env["MINYIN_REDIS_PREFIX"] = "load"
        self.submitter_key = self._key("submitter")
        self.staff_key = self._key("staff")
        minyin = _minyin()
        self._spawn("serve", [minyin, "serve", "--host", HOST, "--port", str(self.port)])
        if self.mode == "distributed":
            self._spawn("worker", [minyin, "worker", "--concurrency", str(self.workers)])
        self._wait_ready(ready_timeout_s)

    def redis_args(self) -> list[str]:
        """No persistence: a load run needs none (bench/chaos.py keeps an AOF)."""
        return ["--save", "", "--appendonly", "no"]

    def start_redis(self) -> subprocess.Popen:
        proc = self._spawn("redis", ["redis-server", "--port", str(self.redis_port),
                                     "--bind", HOST, "--dir", str(self.tmp),
                                     *self.redis_args()])
        self._wait_port(self.redis_port, 20.0, "redis")
        return proc

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n"
                                   f"{tail(self.logs[name])}")

    def _wait_port(self, port: int, timeout_s: float, name: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            with socket.socket() as s:
                if s.connect_ex((HOST, port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not listen on {port} within {timeout_s:.0f} s")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    r = client.get("/readyz")
                    last = r.json()
                    if r.status_code == 200 and (self.mode == "embedded"
                                                 or int(last.get("workers", 0)) >= self.workers):
                        return
                except (httpx.HTTPError, ValueError) as e:
                    last = f"{type(e).__name__}"
                time.sleep(0.5)
        logs = "\n".join(f"--- {n}\n{tail(p)}" for n, p in self.logs.items())
        raise RuntimeError(f"not ready within {timeout_s:.0f} s (last /readyz: {last})\n{logs}")

    def stop(self) -> None:
        # the API first (it submits), then the workers, the broker last
        for _name, proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- client


@dataclass
class Upload:
    clip: str
    audio_s: float
    client_ref: str
    http_status: int | None = None
    accept_s: float | None = None  # request start to the 202
    job_id: str | None = None
    status: str | None = None  # done | failed | timeout | error | http_<code>
    latency_s: float | None = None  # upload start to the poll that saw done
    latency_server_s: float | None = None  # upload start to the job's finished_at
    processing_s: float | None = None  # the worker's time on it
    polls: int = 0
    error: str | None = None
    t_start: float = 0.0  # perf_counter, for the run's wall time
    t_end: float | None = None


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def upload_and_wait(client: httpx.AsyncClient, key: str, clip: Clip, tag: str,
                          poll_s: float, poll_queued_s: float, timeout_s: float) -> Upload:
    up = Upload(clip=clip.name, audio_s=clip.duration_s,
                client_ref=f"load-{tag}-{uuid.uuid4().hex[:12]}")
    headers = {"Authorization": f"Bearer {key}"}
    wall0 = time.time()
    up.t_start = t0 = time.perf_counter()
    deadline = t0 + timeout_s
    try:
        r = await client.post("/v1/voice-notes", headers=headers,
                              files={"audio": (clip.name, clip.data, "application/octet-stream")},
                              data={"client_ref": up.client_ref})
        up.accept_s = time.perf_counter() - t0
        up.http_status = r.status_code
        if r.status_code != 202:
            up.status = f"http_{r.status_code}"
            up.error = r.text[:300]
            return up
        job = r.json()
        up.job_id = job["job_id"]
        while job["status"] not in ("done", "failed"):
            if time.perf_counter() > deadline:
                up.status, up.error = "timeout", f"still {job['status']} after {timeout_s:.0f} s"
                return up
            await asyncio.sleep(poll_s if job["status"] == "running" else poll_queued_s)
            r = await client.get(f"/v1/jobs/{up.job_id}", headers=headers)
            up.polls += 1
            if r.status_code != 200:
                up.status, up.error = f"http_{r.status_code}", f"poll: {r.text[:300]}"
                return up
            job = r.json()
        up.t_end = time.perf_counter()
        up.status = job["status"]
        up.latency_s = up.t_end - t0
        finished = _ts(job.get("finished_at"))
        if finished is not None:
            up.latency_server_s = finished - wall0
        up.processing_s = job.get("processing_seconds")
        if job.get("audio_seconds"):
            up.audio_s = float(job["audio_seconds"])
        if up.status == "failed":
            up.error = f"{job.get('failure_code')}: {job.get('failure_reason')}"
    except httpx.HTTPError as e:
        up.status, up.error = "error", f"{type(e).__name__}: {e}"
    return up


def _client(url: str, connections: int) -> httpx.AsyncClient:
    # trust_env=False: no proxy from the environment between us and 127.0.0.1
    return httpx.AsyncClient(base_url=url, trust_env=False, timeout=httpx.Timeout(120.0),
                             limits=httpx.Limits(max_connections=connections + 8,
                                                 max_keepalive_connections=connections + 8))


async def run_sequential(dep: Deployment, clips: list[Clip], n: int, tag: str,
                         timeout_s: float, poll_s: float) -> list[Upload]:
    async with _client(dep.url, 2) as client:
        return [await upload_and_wait(client, dep.submitter_key, clips[i % len(clips)],
                                      f"{tag}{i}", poll_s, poll_s, timeout_s)
                for i in range(n)]


async def run_load(dep: Deployment, clips: list[Clip], uploads: int, concurrency: int,
                   timeout_s: float, poll_s: float, poll_queued_s: float) -> list[Upload]:
    slots = asyncio.Semaphore(concurrency)
    progress = Progress(TextColumn(f"W={dep.workers}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True,
                        disable=not err.is_terminal)

    async with _client(dep.url, concurrency) as client:

        async def one(i: int) -> Upload:
            async with slots:
                up = await upload_and_wait(client, dep.submitter_key, clips[i % len(clips)],
                                           f"w{dep.workers}-{i}", poll_s, poll_queued_s,
                                           timeout_s)
            progress.advance(task)
            return up

        with progress:
            task = progress.add_task("load", total=uploads)
            return list(await asyncio.gather(*(one(i) for i in range(uploads))))


def realtime_factor(dep: Deployment) -> float | None:
    try:
        r = httpx.get(f"{dep.url}/metrics", headers={"Authorization": f"Bearer {dep.staff_key}"},
                      timeout=10, trust_env=False)
    except httpx.HTTPError:
        return None
    for line in r.text.splitlines():
        if line.startswith("minyin_realtime_factor "):
            return float(line.split()[1])
    return None


# --------------------------------------------------------------------------- summary


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1]


def summarise(ups: list[Upload]) -> dict[str, Any]:
    done = [u for u in ups if u.status == "done"]
    lat = [u.latency_s for u in done if u.latency_s is not None]
    srv = [u.latency_server_s for u in done if u.latency_server_s is not None]
    accept = [u.accept_s for u in ups if u.http_status == 202 and u.accept_s is not None]
    ends = [u.t_end for u in done if u.t_end is not None]
    wall = (max(ends) - min(u.t_start for u in ups)) if ends else None
    audio = sum(u.audio_s for u in done)
    processing = [u.processing_s for u in done if u.processing_s is not None]
    errors: dict[str, int] = {}
    for u in ups:
        if u.status != "done":
            errors[u.status or "unknown"] = errors.get(u.status or "unknown", 0) + 1

    def r(x: float | None, nd: int = 3) -> float | None:
        return None if x is None else round(x, nd)

    return {
        "uploads": len(ups), "done": len(done), "errors": sum(errors.values()),
        "error_kinds": errors,
        "latency_p50_s": r(pct(lat, 50)), "latency_p95_s": r(pct(lat, 95)),
        "latency_max_s": r(max(lat) if lat else None),
        "latency_server_p50_s": r(pct(srv, 50)), "latency_server_p95_s": r(pct(srv, 95)),
        "accept_mean_s": r(statistics.fmean(accept) if accept else None, 4),
        "accept_p95_s": r(pct(accept, 95), 4),
        "wall_s": r(wall), "audio_s": round(audio, 2),
        "jobs_per_min": r(len(done) / wall * 60 if wall else None, 2),
        "audio_s_per_s": r(audio / wall if wall else None, 3),
        "processing_mean_s": r(statistics.fmean(processing) if processing else None),
    }


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


# --------------------------------------------------------------------------- main


app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    workers: Annotated[str, typer.Option(help="worker counts to measure, comma-separated")
                       ] = "1,2",
    concurrency: Annotated[int, typer.Option(min=1, help="uploads in flight at once")] = 50,
    uploads: Annotated[int | None, typer.Option(
        min=0, help="uploads per run (default: --concurrency; 0: no load run)")] = None,
    set_: Annotated[str, typer.Option("--set", help="'samples', 'shared' or a manifest "
                                                    "path; uploads take its files in turn")
                    ] = "samples",
    mode: Annotated[str, typer.Option(help="distributed (Redis + minyin worker) or "
                                           "embedded (jobs in the API process)")
                    ] = "distributed",
    json_path: Annotated[Path | None, typer.Option("--json", help="write the results here")
                         ] = None,
    latency_probe: Annotated[bool, typer.Option(
        "--latency-probe", help="also: sequential 12-20 s voice notes on one idle worker")
                             ] = False,
    probe_uploads: Annotated[int, typer.Option(min=1, help="uploads in the probe")] = 10,
    port: Annotated[int, typer.Option(help="base port of the API (the next free one is "
                                           "taken per run)")] = 8790,
    cores: Annotated[int, typer.Option(min=1, help="cores shared among the worker "
                                                   "processes")] = os.cpu_count() or 1,
    poll: Annotated[float, typer.Option(help="poll interval (s) of a running job")] = 0.1,
    poll_queued: Annotated[float, typer.Option(help="poll interval (s) of a queued job")
                           ] = 0.5,
    job_timeout: Annotated[float, typer.Option(help="give up on a job after (s)")] = 900.0,
    ready_timeout: Annotated[float, typer.Option(help="wait for /readyz at most (s)")
                             ] = 300.0,
    plain: Annotated[bool, typer.Option(help="also time plain faster-whisper on the same "
                                             "audio, for the ratios")] = True,
) -> None:
    """Start a private deployment per worker count, load it with uploads, print a table."""
    if mode not in ("distributed", "embedded"):
        raise typer.BadParameter("--mode is distributed or embedded")
    try:
        counts = [int(w) for w in workers.split(",") if w.strip()]
    except ValueError:
        raise typer.BadParameter("--workers takes integers, e.g. 1,2") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("--workers needs at least one count >= 1")
    if mode == "distributed" and not shutil.which("redis-server"):
        raise typer.BadParameter("distributed mode needs redis-server on PATH")
    n_uploads = concurrency if uploads is None else uploads
    clips = load_clips(set_)
    probe_clips = [c for c in clips if PROBE_SECONDS[0] <= c.duration_s <= PROBE_SECONDS[1]]
    if latency_probe and not probe_clips:
        raise typer.BadParameter(f"no clip of {PROBE_SECONDS[0]:g}-{PROBE_SECONDS[1]:g} s "
                                 f"in {set_} for the probe")

    # SIGTERM to this script: unwind like Ctrl-C, so that the finally blocks run
    def _term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)

    plan = sorted(set(counts))
    if latency_probe and 1 not in plan:
        plan = [1, *plan]
    report: dict[str, Any] = {
        "mode": mode, "set": set_, "clips": len(clips), "concurrency": concurrency,
        "uploads": n_uploads, "cores": cores, "poll_s": poll, "poll_queued_s": poll_queued,
        "runs": [], "probe": None, "plain": None,
    }
    for i, w in enumerate(plan):
        measure_load = w in counts and n_uploads > 0
        probe_here = latency_probe and w == 1
        if not (measure_load or probe_here):
            continue
        dep = Deployment(mode, w, cores, free_port(port + i))
        try:
            t0 = time.perf_counter()
            err.print(f"W={w}: starting ({mode}, {dep.threads} thread(s) per model, "
                      f"{dep.url}, {dep.tmp})", highlight=False)
            dep.start(ready_timeout)
            err.print(f"W={w}: ready in {time.perf_counter() - t0:.1f} s; warm-up",
                      highlight=False)
            warm = asyncio.run(run_sequential(dep, clips, 1, "warm", job_timeout, poll))
            if warm[0].status != "done":
                raise RuntimeError(f"warm-up upload: {warm[0].status} {warm[0].error}\n"
                                   + "\n".join(f"--- {n}\n{tail(p)}"
                                               for n, p in dep.logs.items()))
            if probe_here:
                err.print(f"W=1: latency probe, {probe_uploads} sequential uploads",
                          highlight=False)
                probe = asyncio.run(run_sequential(dep, probe_clips, probe_uploads, "probe",
                                                   job_timeout, poll))
                report["probe"] = {**summarise(probe), "workers": 1,
                                   "clips_s": [c.duration_s for c in probe_clips],
                                   "results": [asdict(u) for u in probe]}
            if measure_load:
                err.print(f"W={w}: {n_uploads} uploads, {concurrency} in flight",
                          highlight=False)
                ups = asyncio.run(run_load(dep, clips, n_uploads, concurrency, job_timeout,
                                           poll, poll_queued))
                row = {"workers": w, "threads_per_model": dep.threads, **summarise(ups),
                       "realtime_factor": realtime_factor(dep),
                       "results": [asdict(u) for u in ups]}
                report["runs"].append(row)
                err.print(f"W={w}: {row['done']} done, {row['errors']} errors "
                          f"{row['error_kinds'] or ''}", highlight=False)
            elif report["probe"] is not None:
                report["probe"]["realtime_factor"] = realtime_factor(dep)
        finally:
            err.print(f"W={w}: stopping", highlight=False)
            dep.stop()

    if plain:
        err.print("plain faster-whisper on the same audio (baseline)", highlight=False)
        report["plain"] = run_plain(clips, probe_clips if latency_probe else [], cores)
    print_report(report)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
        err.print(f"wrote {json_path}", highlight=False)


def run_plain(clips: list[Clip], probe_clips: list[Clip], cores: int) -> dict[str, Any]:
    """Plain faster-whisper on the same audio, in this process: each clip once, in turn
    (the throughput baseline), and each probe clip (the latency baseline). As
    bench/compare.py: ``WhisperModel(model, cpu_threads=cores).transcribe(f, beam_size=5)``."""
    import io

    from faster_whisper import WhisperModel

    from pipeline.audio import decode_audio
    from pipeline.config import Settings
    from pipeline.process import VoicePipeline

    model = WhisperModel(VoicePipeline(Settings()).model_ref.path, device="cpu",
                         cpu_threads=cores)

    def one(clip: Clip) -> float:
        t0 = time.perf_counter()
        try:
            segments, _ = model.transcribe(io.BytesIO(clip.data), beam_size=5)
            "".join(seg.text for seg in segments)
        except Exception:  # plain faster-whisper cannot open SILK: give it PCM
            audio = decode_audio(clip.data, split_channels=False).mono
            segments, _ = model.transcribe(audio, beam_size=5)
            "".join(seg.text for seg in segments)
        return time.perf_counter() - t0

    one(clips[0])  # warm-up, as the service gets one
    seconds = [one(c) for c in clips]
    probe = [one(c) for c in probe_clips]
    return {"audio_s": sum(c.duration_s for c in clips), "wall_s": sum(seconds),
            "audio_s_per_s": sum(c.duration_s for c in clips) / sum(seconds),
            "probe_p50_s": pct(probe, 50), "probe_p95_s": pct(probe, 95),
            "cpu_threads": cores}


def print_report(report: dict[str, Any]) -> None:
    runs = report["runs"]
    base = next((r for r in runs if r["workers"] == 1 and r["jobs_per_min"]), None)
    if runs:
        table = Table(title=f"minyin load: {report['mode']}, set {report['set']}, "
                            f"{report['concurrency']} in flight")
        for col in ("W", "uploads", "errors", "p50 s", "p95 s", "max s", "p95 srv s",
                    "jobs/min", "audio s/s", "vs W=1", "mean 202 s", "RTF"):
            table.add_column(col, justify="right")
        for r in runs:
            scale = (r["jobs_per_min"] / base["jobs_per_min"]
                     if base and r["jobs_per_min"] else None)
            table.add_row(str(r["workers"]), str(r["uploads"]), str(r["errors"]),
                          _f(r["latency_p50_s"]), _f(r["latency_p95_s"]),
                          _f(r["latency_max_s"]), _f(r["latency_server_p95_s"]),
                          _f(r["jobs_per_min"], "{:.1f}"), _f(r["audio_s_per_s"]),
                          _f(scale, "{:.2f}x"), _f(r["accept_mean_s"], "{:.3f}"),
                          _f(r["realtime_factor"], "{:.3f}"))
        out.print(table)
        by_w = {r["workers"]: r for r in runs}
        if 1 in by_w and 2 in by_w and by_w[1]["jobs_per_min"] and by_w[2]["jobs_per_min"]:
            out.print(f"scaling: throughput(W=2) / throughput(W=1) = "
                      f"{by_w[2]['jobs_per_min'] / by_w[1]['jobs_per_min']:.2f}",
                      highlight=False)
    probe = report["probe"]
    if probe is not None:
        clips_s = probe["clips_s"]
        out.print(f"latency probe (1 idle worker, {probe['uploads']} sequential uploads of "
                  f"{min(clips_s):.1f}-{max(clips_s):.1f} s voice notes): "
                  f"p50 {_f(probe['latency_p50_s'])} s, p95 {_f(probe['latency_p95_s'])} s "
                  f"(server-stamped p95 {_f(probe['latency_server_p95_s'])} s), "
                  f"errors {probe['errors']}; target p95 < 4 s", highlight=False)
    base_plain = report.get("plain")
    if base_plain:
        out.print(f"plain faster-whisper, same audio, one clip at a time, "
                  f"{base_plain['cpu_threads']} threads: {base_plain['audio_s_per_s']:.2f} "
                  f"audio s/s", highlight=False)
        for r in runs:
            out.print(f"  service W={r['workers']} throughput / plain: "
                      f"{r['audio_s_per_s'] / base_plain['audio_s_per_s']:.2f}x",
                      highlight=False)
        if probe is not None and base_plain["probe_p95_s"]:
            out.print(f"  probe: plain transcribe p50 {_f(base_plain['probe_p50_s'])} s, "
                      f"p95 {_f(base_plain['probe_p95_s'])} s; service upload-to-ticket "
                      f"p95 / plain p95 = "
                      f"{probe['latency_p95_s'] / base_plain['probe_p95_s']:.2f}",
                      highlight=False)


if __name__ == "__main__":
    app()
