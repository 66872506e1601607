"""Soak: many voice notes through one deployment, its memory sampled as it goes.

    .venv/bin/python bench/soak.py                                 # 1,000 embedded + 1,000 Celery
    .venv/bin/python bench/soak.py --modes embedded --notes 200    # a quick look
    .venv/bin/python bench/soak.py --json bench/out/soak.json --png docs/soak-memory.png

Each mode gets a private deployment from ``bench/load.py`` (temporary data directory,
loopback only, bounded; in distributed mode its own ``redis-server`` and one ``minyin
worker --concurrency 1``). Voice notes are the samples cut to ``--clip-seconds`` (their
own formats where ffmpeg can write them, else WAV): the whole path runs for each
(decode, VAD, Whisper, the ticket, the store, the outbox) at a pace that gets through
``--notes`` in minutes on 2 cores. ``--concurrency`` clients each upload, wait for the
ticket, and upload the next (closed loop, at most that many in flight).

Every ``--sample-s`` seconds the resident memory (RSS) of the processes that do the
work is read with psutil: in embedded mode ``minyin serve`` (it runs the jobs in
threads), in distributed mode the worker and its pool children, and the API.

The verdict, after the first ``--warmup`` share of the notes:
- growth: the median RSS of the last tenth of the samples over the median of the first
  tenth after the warm-up, minus 1; under 10 % passes;
- trend: the least-squares slope of RSS against notes done, in MB per 1,000 notes,
  with a 95 % interval; "no upward trend" when the slope's rise over the whole run is
  under 5 % of the level, or its interval reaches 0;
- every upload a ticket (no failed job, no HTTP error), and the outbox drained
  (``minyin_outbox_events{state="pending"}`` and ``parked`` back to 0 on /metrics).

It prints a table, writes every sample with ``--json``, and draws the memory curves
(MB against notes done) with ``--png``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
import typer
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (  # bench/ is not a package
    SETS,
    Clip,
    Deployment,
    _client,
    err,
    free_port,
    load_clips,
    out,
    upload_and_wait,
)

ROOT = Path(__file__).resolve().parents[1]
# what ffmpeg here can write in the clip's own format (no AMR encoder: those go as WAV)
WRITABLE = {".wav", ".mp3", ".ogg", ".m4a"}


def cut_clips(clips: list[Clip], seconds: float, work: Path) -> list[Clip]:
    """The first `seconds` of each clip (decoded by minyin's own decoder, so SILK too,
    channels kept), written back in its own format where ffmpeg can, else as WAV."""
    if seconds <= 0:
        return clips
    from pipeline.audio import SAMPLE_RATE, decode_audio, write_wav

    cut = []
    for clip in clips:
        decoded = decode_audio(clip.data, name=clip.name, split_channels=True)
        tracks = decoded.tracks[:, : int(seconds * SAMPLE_RATE)]
        stem = f"{Path(clip.name).stem}-{seconds:g}s"
        dst = write_wav(work / f"{stem}.wav", tracks)
        suffix = Path(clip.name).suffix.lower()
        if suffix in WRITABLE and suffix != ".wav" and shutil.which("ffmpeg"):
            coded = work / f"{stem}{suffix}"
            done = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(dst), str(coded)],
                                  capture_output=True, check=False)
            if done.returncode == 0:
                dst = coded
        cut.append(Clip(dst.name, dst.read_bytes(), tracks.shape[1] / SAMPLE_RATE))
    return cut


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (Celery's pool), in MB; 0 once it is gone."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


class Sampler(threading.Thread):
    """Samples the deployment's RSS every `every` seconds, with the notes done so far."""

    def __init__(self, dep: Deployment, every: float) -> None:
        super().__init__(daemon=True)
        self.dep, self.every = dep, every
        self.done = 0
        self.samples: list[dict[str, float]] = []
        self._halt = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.is_set():
            row: dict[str, float] = {"t_s": round(time.perf_counter() - self.t0, 1),
                                     "done": self.done}
            for name, proc in self.dep.procs:
                if name in ("serve", "worker"):
                    row[f"{name}_mb"] = round(tree_rss_mb(proc.pid), 1)
            self.samples.append(row)
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def working_mb(mode: str, row: dict[str, float]) -> float:
    """The memory that does the work: the API in embedded mode, the worker in Celery's."""
    return row["serve_mb"] if mode == "embedded" else row.get("worker_mb", 0.0)


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and its standard error."""
    n = len(xs)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 3 or sxx == 0:
        return 0.0, math.inf
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    return b, math.sqrt(resid / (n - 2) / sxx)


def verdict(mode: str, samples: list[dict[str, float]], notes: int,
            warmup: float) -> dict[str, Any]:
    after = [s for s in samples if s["done"] >= warmup * notes]
    if len(after) < 10:
        return {"samples_after_warmup": len(after), "ok": False,
                "why": "too few samples after the warm-up (lower --sample-s)"}
    tenth = max(1, len(after) // 10)
    first = statistics.median(working_mb(mode, s) for s in after[:tenth])
    last = statistics.median(working_mb(mode, s) for s in after[-tenth:])
    growth = last / first - 1
    b, se = slope([s["done"] for s in after], [working_mb(mode, s) for s in after])
    span = after[-1]["done"] - after[0]["done"]
    rise = b * span / first
    no_trend = rise < 0.05 or b - 1.96 * se <= 0
    return {"samples_after_warmup": len(after), "first_mb": round(first, 1),
            "last_mb": round(last, 1), "growth": round(growth, 4),
            "slope_mb_per_1000": round(b * 1000, 2),
            "slope_interval_mb_per_1000": [round((b - 1.96 * se) * 1000, 2),
                                           round((b + 1.96 * se) * 1000, 2)],
            "fitted_rise": round(rise, 4), "growth_ok": growth < 0.10,
            "no_upward_trend": no_trend, "ok": growth < 0.10 and no_trend}


def outbox(dep: Deployment) -> dict[str, float]:
    r = httpx.get(f"{dep.url}/metrics", headers={"Authorization": f"Bearer {dep.staff_key}"},
                  timeout=10, trust_env=False)
    found = {}
    for line in r.text.splitlines():
        if line.startswith("minyin_outbox_events{"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            found[state] = float(line.rsplit(" ", 1)[1])
    return found


async def soak(dep: Deployment, clips: list[Clip], notes: int, concurrency: int,
               sampler: Sampler, timeout_s: float) -> list[Any]:
    slots = asyncio.Semaphore(concurrency)
    async with _client(dep.url, concurrency) as client:

        async def one(i: int) -> Any:
            async with slots:
                up = await upload_and_wait(client, dep.submitter_key, clips[i % len(clips)],
                                           f"soak-{i}", 0.2, 0.5, timeout_s)
            sampler.done += 1
            if sampler.done % 100 == 0:
                err.print(f"  {dep.mode}: {sampler.done}/{notes} notes, "
                          f"{sampler.samples[-1] if sampler.samples else ''}")
            return up

        return list(await asyncio.gather(*(one(i) for i in range(notes))))


def run_mode(mode: str, clips: list[Clip], args: dict[str, Any]) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    dep = Deployment(mode, 1, cores, free_port())
    try:
        dep.start(args["ready_timeout"])
        sampler = Sampler(dep, args["sample_s"])
        sampler.start()
        t0 = time.perf_counter()
        ups = asyncio.run(soak(dep, clips, args["notes"], args["concurrency"], sampler,
                               args["timeout"]))
        wall = time.perf_counter() - t0
        deadline = time.monotonic() + 120
        box = outbox(dep)
        while (box.get("pending", 0) or box.get("parked", 0)) and time.monotonic() < deadline:
            time.sleep(1)
            box = outbox(dep)
        time.sleep(args["sample_s"])
        sampler.stop()
    finally:
        dep.stop()
    failures: dict[str, int] = {}
    for u in ups:
        if u.status != "done":
            failures[u.status or "unknown"] = failures.get(u.status or "unknown", 0) + 1
    judged = verdict(mode, sampler.samples, args["notes"], args["warmup"])
    return {"mode": mode, "notes": len(ups), "done": sum(u.status == "done" for u in ups),
            "failures": failures, "outbox_after": box, "wall_s": round(wall, 1),
            "notes_per_min": round(len(ups) / wall * 60, 1), "memory": judged,
            "ok": judged["ok"] and not failures and not box.get("pending")
            and not box.get("parked"),
            "samples": sampler.samples}


def draw(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=110)
    for res in results:
        xs = [s["done"] for s in res["samples"]]
        label = "embedded: minyin serve" if res["mode"] == "embedded" else \
            "Celery: minyin worker (+ pool)"
        ax.plot(xs, [working_mb(res["mode"], s) for s in res["samples"]], label=label)
    ax.set_xlabel("voice notes done")
    ax.set_ylabel("resident memory (MB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("bench/soak.py", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    modes: Annotated[str, typer.Option(help="embedded, distributed, or both")] =
        "embedded,distributed",
    notes: Annotated[int, typer.Option(min=1)] = 1000,
    concurrency: Annotated[int, typer.Option(min=1)] = 2,
    clips: Annotated[str, typer.Option(help=f"{', '.join(SETS)} or a manifest")] = "samples",
    clip_seconds: Annotated[float, typer.Option(help="cut each clip to this (0: whole)")] = 3.0,
    sample_s: Annotated[float, typer.Option(min=0.2)] = 2.0,
    warmup: Annotated[float, typer.Option(min=0, max=0.9)] = 0.2,
    timeout: Annotated[float, typer.Option(help="per note, seconds")] = 300.0,
    ready_timeout: Annotated[float, typer.Option()] = 240.0,
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
    png: Annotated[Path | None, typer.Option()] = None,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="minyin-soak-"))
    try:
        cut = cut_clips(load_clips(clips), clip_seconds, work)
        args = {"notes": notes, "concurrency": concurrency, "sample_s": sample_s,
                "warmup": warmup, "timeout": timeout, "ready_timeout": ready_timeout}
        results = []
        for mode in [m.strip() for m in modes.split(",") if m.strip()]:
            if mode not in ("embedded", "distributed"):
                raise typer.BadParameter(f"--modes: {mode!r} is not embedded or distributed")
            if mode == "distributed" and not shutil.which("redis-server"):
                raise SystemExit("distributed mode needs redis-server on PATH")
            err.print(f"{mode}: {notes} notes of {clip_seconds:g} s, {concurrency} at a time")
            results.append(run_mode(mode, cut, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"soak: {notes} voice notes per mode")
    for col in ("mode", "done", "failures", "outbox after", "notes/min", "RSS first → last "
                "(MB)", "growth", "slope MB/1000 notes (95 %)", "verdict"):
        table.add_column(col)
    for r in results:
        m = r["memory"]
        table.add_row(r["mode"], f"{r['done']}/{r['notes']}", str(r["failures"] or 0),
                      str(r["outbox_after"]), f"{r['notes_per_min']}",
                      f"{m.get('first_mb')} → {m.get('last_mb')}",
                      f"{m.get('growth', 0):+.1%}",
                      f"{m.get('slope_mb_per_1000')} {m.get('slope_interval_mb_per_1000')}",
                      "pass" if r["ok"] else "FAIL")
    out.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"clip_seconds": clip_seconds, "concurrency":
                                        concurrency, "results": results}, indent=1))
    if png:
        draw(results, png)
        out.print(f"memory curve: {png}")
    raise typer.Exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    app()
