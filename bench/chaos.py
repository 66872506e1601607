"""Faults in one run: uploads while the worker is killed, Redis restarts, the webhook fails.

    .venv/bin/python bench/chaos.py                               # 200 uploads, 20 kills
    .venv/bin/python bench/chaos.py --uploads 30 --kills 4        # a quick look
    .venv/bin/python bench/chaos.py --json bench/out/chaos.json

One private distributed deployment from ``bench/load.py`` (temporary data directory,
loopback only, its own ``redis-server``, ``minyin serve`` and one ``minyin worker``),
with two consumers of the tickets that the bench runs itself:

- a webhook receiver on 127.0.0.1 that checks each delivery's signature and, during
  ``--webhook-outages`` stretches of ``--outage-s`` seconds, answers 500 to everything;
- a consumer group on the ticket stream (`pipeline.sinks.StreamConsumer`: XREADGROUP,
  XAUTOCLAIM, de-duplication by ``event_id``), which reconnects after a Redis restart.

While ``--uploads`` voice notes (the samples cut to ``--clip-seconds``) go up,
``--concurrency`` at a time, the bench at random moments (seeded):
- SIGKILLs the worker ``--kills`` times, alternately the pool process running the job
  (Celery sends its message back: ``reject_on_worker_lost``) and the whole worker (main
  process and pool, as a crash or OOM kill would; the bench restarts it as a supervisor
  would, and the job's lease runs out before the sweep hands it over again);
- restarts Redis ``--redis-restarts`` times with SIGKILL. Redis keeps an append-only file
  with ``appendfsync always``, as a Redis that holds the complaint system's feed must
  (a stream entry acknowledged to the producer is not lost); the broker's queue, which
  the store can rebuild, survives with it;
- approves every ``--approve-every``-th finished ticket through the review API, so that
  revision 2 (``ticket.revised``) goes through the same faults.

Afterwards, once the outbox is drained, it counts from the store (the source of truth)
and from what the two consumers received:
- every accepted upload (HTTP 202) has exactly one ticket, and no ticket lacks an upload;
- the consumer group handled each outbox event (each ticket revision, each 重复件 and
  一类事 update) exactly once, and lists how many re-deliveries it de-duplicated;
- the webhook accepted every outbox event, and how many deliveries (500s, retries,
  repeats) that took.
Prints the counts as a table; ``--json`` writes them with the fault log. Exits 1 when a
count is off. Takes about 10 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
import redis
import typer
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (  # bench/ is not a package
    HOST,
    SETS,
    Deployment,
    _client,
    _minyin,
    err,
    free_port,
    load_clips,
    out,
    stop_process,
    upload_and_wait,
)
from soak import cut_clips, outbox

from pipeline.sinks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    StreamConsumer,
    TicketEvent,
    verify_signature,
)

STREAM_GROUP = "chaos-bench"


# --------------------------------------------------------------------------- consumers


class Webhook:
    """The complaint system's webhook endpoint, with switchable outages."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.failing = threading.Event()
        self.lock = threading.Lock()
        self.accepted: Counter[str] = Counter()  # event_id -> 2xx answers
        self.refused_500 = 0
        self.bad_signature = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if hook.failing.is_set():
                    with hook.lock:
                        hook.refused_500 += 1
                    self._answer(500)
                    return
                if not verify_signature(hook.secret, self.headers.get(TIMESTAMP_HEADER, ""),
                                        body, self.headers.get(SIGNATURE_HEADER, "")):
                    with hook.lock:
                        hook.bad_signature += 1
                    self._answer(401)
                    return
                event = TicketEvent.model_validate_json(body)
                if event.event_id != self.headers.get(DELIVERY_HEADER):
                    self._answer(400)
                    return
                with hook.lock:
                    hook.accepted[event.event_id] += 1
                self._answer(204)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, free_port()), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def deliveries(self) -> int:
        return sum(self.accepted.values())


class GroupReader(threading.Thread):
    """One consumer of a consumer group on the ticket stream, through Redis restarts."""

    def __init__(self, url: str, stream: str) -> None:
        super().__init__(daemon=True)
        self.consumer = StreamConsumer(
            redis.Redis.from_url(url, decode_responses=True, socket_timeout=5,
                                 socket_connect_timeout=2),
            stream, STREAM_GROUP, "bench-1", claim_idle_ms=5_000)
        self.handled: Counter[str] = Counter()  # event_id -> handler calls
        self.by_ticket: Counter[tuple[str, int, str]] = Counter()
        self.skipped = 0  # re-deliveries the seen-keys de-duplicated
        self.reconnects = 0
        self.last_read = time.monotonic()
        self._halt = threading.Event()

    def _handle(self, event: TicketEvent) -> None:
        self.handled[event.event_id] += 1
        self.by_ticket[(event.ticket_id, event.revision, event.type)] += 1

    def run(self) -> None:
        grouped = False
        while not self._halt.is_set():
            try:
                if not grouped:
                    self.consumer.ensure_group("0")
                    grouped = True
                handled, skipped = self.consumer.process(self._handle, count=50, block_ms=500)
                self.skipped += skipped
                if handled or skipped:
                    self.last_read = time.monotonic()
            except redis.RedisError:
                grouped = False  # a restarted Redis without its file would need the group
                self.reconnects += 1
                self._halt.wait(0.5)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


# --------------------------------------------------------------------------- the faults


class ChaosDeployment(Deployment):
    def redis_args(self) -> list[str]:
        return ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]

    def replace(self, name: str) -> None:
        self.procs = [(n, p) for n, p in self.procs if n != name]

    def proc(self, name: str) -> subprocess.Popen | None:
        return next((p for n, p in self.procs if n == name), None)

    def start_worker(self) -> None:
        self.replace("worker")
        self._spawn("worker", [_minyin(), "worker", "--concurrency", "1"])


class Faults:
    """Runs the fault plan against a deployment and logs what it did."""

    def __init__(self, dep: ChaosDeployment, hook: Webhook) -> None:
        self.dep, self.hook = dep, hook
        self.log: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def _note(self, what: str, **detail: Any) -> None:
        entry = {"t_s": round(time.monotonic() - self.t0, 1), "fault": what, **detail}
        self.log.append(entry)
        err.print(f"  [{entry['t_s']:7.1f} s] {what} {detail or ''}")

    def kill_worker(self, whole: bool) -> None:
        worker = self.dep.proc("worker")
        if worker is None or worker.poll() is not None:
            self._note("kill skipped: no worker")
            return
        if not whole:
            try:
                children = psutil.Process(worker.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            if children:
                for child in children:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.send_signal(signal.SIGKILL)
                self._note("SIGKILL worker pool process", pids=[c.pid for c in children])
                return  # Celery's main process starts a new one
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        self._note("SIGKILL whole worker", pid=worker.pid)
        time.sleep(1.0)  # a supervisor's restart delay
        self.dep.start_worker()

    def restart_redis(self) -> None:
        proc = self.dep.proc("redis")
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self._note("SIGKILL redis")
        time.sleep(2.0)
        self.dep.replace("redis")
        self.dep.start_redis()
        self._note("redis back")

    def webhook_outage(self, seconds: float, halt: threading.Event) -> None:
        self.hook.failing.set()
        self._note("webhook answers 500", seconds=seconds)
        halt.wait(seconds)
        self.hook.failing.clear()
        self._note("webhook back")


def fault_plan(rng: random.Random, span_s: float, kills: int, restarts: int, outages: int,
               outage_s: float) -> list[tuple[float, str]]:
    """(moment, fault) pairs, random over the span, kinds interleaved by time."""
    plan = [(rng.uniform(0.05, 0.95) * span_s, "kill-pool" if i % 2 == 0 else "kill-worker")
            for i in range(kills)]
    plan += [((i + rng.uniform(0.2, 0.8)) * span_s / restarts, "redis") for i in range(restarts)]
    plan += [(rng.uniform(0.05, 0.95) * max(span_s - outage_s, 1.0), "webhook")
             for _ in range(outages)]
    return sorted(plan)


def run_faults(faults: Faults, plan: list[tuple[float, str]], outage_s: float,
               halt: threading.Event) -> None:
    outages: list[threading.Thread] = []
    for at, kind in plan:
        if halt.wait(max(0.0, at - (time.monotonic() - faults.t0))):
            break
        try:
            if kind == "kill-pool":
                faults.kill_worker(whole=False)
            elif kind == "kill-worker":
                faults.kill_worker(whole=True)
            elif kind == "redis":
                faults.restart_redis()
            else:
                t = threading.Thread(target=faults.webhook_outage, args=(outage_s, halt),
                                     daemon=True)
                t.start()
                outages.append(t)
        except Exception as e:  # keep the plan going; the counts will tell
            faults._note(f"fault {kind} raised", error=f"{type(e).__name__}: {e}")
    for t in outages:
        t.join()


# --------------------------------------------------------------------------- uploads


async def upload_all(dep: Deployment, clips: list[Any], uploads: int, concurrency: int,
                     approve_every: int, timeout_s: float) -> tuple[list[Any], list[str]]:
    slots = asyncio.Semaphore(concurrency)
    approved: list[str] = []
    staff = {"Authorization": f"Bearer {dep.staff_key}"}
    async with _client(dep.url, concurrency) as client:

        async def approve(ticket_id: str) -> None:
            for _ in range(5):  # the API is up throughout; a 409 means a newer revision
                r = await client.get(f"/v1/tickets/{ticket_id}/review", headers=staff)
                if r.status_code != 200:
                    return
                body = {"revision": r.json()["revision"], "comment": "chaos bench approval"}
                r = await client.post(f"/v1/tickets/{ticket_id}/approve", headers=staff,
                                      json=body)
                if r.status_code == 200:
                    approved.append(ticket_id)
                    return
                if r.status_code != 409:
                    return

        async def one(i: int) -> Any:
            async with slots:
                up = await upload_and_wait(client, dep.submitter_key, clips[i % len(clips)],
                                           f"chaos-{i}", 0.3, 1.0, timeout_s)
            finished.append(i)
            if len(finished) % 25 == 0:
                err.print(f"  {len(finished)}/{uploads} uploads finished")
            if approve_every and up.status == "done" and i % approve_every == 0:
                ticket = await client.get(f"/v1/jobs/{up.job_id}", headers=staff)
                if ticket.status_code == 200 and ticket.json().get("ticket_id"):
                    await approve(ticket.json()["ticket_id"])
            return up

        finished: list[int] = []
        ups = list(await asyncio.gather(*(one(i) for i in range(uploads))))
    return ups, approved


# --------------------------------------------------------------------------- counts


def store_truth(data_dir: Path) -> dict[str, Any]:
    """Jobs, tickets and outbox events as the store holds them."""
    from sqlalchemy import select

    from pipeline.outbox import _event
    from pipeline.store import Job, OutboxEvent, Store, TicketRow

    store = Store.from_url(f"sqlite:///{data_dir / 'minyin.db'}")
    try:
        with store.session() as s:
            jobs = {j.id: (j.status, j.attempts) for j in s.scalars(select(Job))}
            tickets = Counter(t.job_id for t in s.scalars(select(TicketRow)))
            events = []
            for row in s.scalars(select(OutboxEvent)):
                ev = _event(row)
                events.append({"event_id": ev.event_id, "type": ev.type,
                               "ticket_id": ev.ticket_id, "revision": ev.revision,
                               "sent": row.sent_at is not None,
                               "parked": row.parked_at is not None,
                               "attempts": row.attempts})
    finally:
        store.engine.dispose()
    return {"jobs": jobs, "tickets_by_job": tickets, "events": events}


def count(ups: list[Any], truth: dict[str, Any], reader: GroupReader, hook: Webhook,
          approved: list[str]) -> dict[str, Any]:
    accepted = [u for u in ups if u.http_status == 202 and u.job_id]
    by_job = truth["tickets_by_job"]
    one_each = sum(1 for u in accepted if by_job.get(u.job_id) == 1)
    missing = [u.job_id for u in accepted if by_job.get(u.job_id, 0) == 0]
    doubled = [u.job_id for u in accepted if by_job.get(u.job_id, 0) > 1]
    accepted_ids = {u.job_id for u in accepted}
    orphans = [j for j in by_job if j not in accepted_ids]
    events = {e["event_id"]: e for e in truth["events"]}
    types = Counter(e["type"] for e in events.values())
    stream_once = sum(1 for eid in events if reader.handled.get(eid) == 1)
    stream_missing = [eid for eid in events if eid not in reader.handled]
    stream_twice = [eid for eid, n in reader.handled.items() if n > 1]
    stream_unknown = [eid for eid in reader.handled if eid not in events]
    hook_got = [eid for eid in events if hook.accepted.get(eid)]
    hook_missing = [eid for eid in events if eid not in hook.accepted]
    failed = Counter(u.status for u in ups if u.status != "done")
    attempts = Counter(a for _s, a in truth["jobs"].values())
    result = {
        "uploads": len(ups), "accepted": len(accepted),
        "not_accepted": Counter(u.status for u in ups if u not in accepted),
        "jobs_not_done": dict(failed),
        "job_attempts": dict(sorted(attempts.items())),
        "one_ticket_each": one_each, "without_ticket": missing, "more_than_one": doubled,
        "tickets_without_upload": orphans,
        "approved": len(approved),
        "events": len(events), "event_types": dict(types),
        "events_unsent": [e for e, v in events.items() if not v["sent"] or v["parked"]],
        "stream_handled_once": stream_once, "stream_missing": stream_missing,
        "stream_handled_twice": stream_twice, "stream_unknown": stream_unknown,
        "stream_redeliveries_skipped": reader.skipped,
        "stream_reconnects": reader.reconnects,
        "webhook_received": len(hook_got), "webhook_missing": hook_missing,
        "webhook_deliveries": hook.deliveries(),
        "webhook_repeats": hook.deliveries() - len(hook_got),
        "webhook_500s": hook.refused_500, "webhook_bad_signature": hook.bad_signature,
    }
    result["ok"] = (bool(accepted) and one_each == len(accepted) and not orphans
                    and not result["events_unsent"] and stream_once == len(events)
                    and not stream_twice and not stream_unknown
                    and len(hook_got) == len(events) and not hook.bad_signature)
    return result


def wait_drained(dep: Deployment, reader: GroupReader, events_goal: int | None,
                 timeout_s: float) -> dict[str, float]:
    """Until the outbox has nothing pending and the stream reader went quiet."""
    deadline = time.monotonic() + timeout_s
    box: dict[str, float] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            box = outbox(dep)
        quiet = time.monotonic() - reader.last_read > 3
        if not box.get("pending") and quiet and (events_goal is None
                                                 or len(reader.handled) >= events_goal):
            return box
        time.sleep(1.0)
    return box


# --------------------------------------------------------------------------- main


app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    uploads: Annotated[int, typer.Option(min=1)] = 200,
    kills: Annotated[int, typer.Option(min=0, help="worker SIGKILLs")] = 20,
    redis_restarts: Annotated[int, typer.Option(min=0)] = 2,
    webhook_outages: Annotated[int, typer.Option(min=0)] = 3,
    outage_s: Annotated[float, typer.Option(min=1, help="seconds of 500s each")] = 30.0,
    approve_every: Annotated[int, typer.Option(min=0, help="0: no approvals")] = 10,
    concurrency: Annotated[int, typer.Option(min=1)] = 4,
    clips: Annotated[str, typer.Option(help=f"{', '.join(SETS)} or a manifest")] = "samples",
    clip_seconds: Annotated[float, typer.Option(help="cut each clip to this (0: whole)")] = 3.0,
    span_s: Annotated[float | None, typer.Option(
        help="seconds over which the faults are spread (default: uploads x 2 s)")] = None,
    lease_s: Annotated[float, typer.Option(help="MINYIN_JOB_LEASE_SECONDS")] = 30.0,
    seed: Annotated[int, typer.Option()] = 2026,
    timeout: Annotated[float, typer.Option(help="per upload, seconds")] = 1800.0,
    drain_timeout: Annotated[float, typer.Option()] = 600.0,
    ready_timeout: Annotated[float, typer.Option()] = 240.0,
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
) -> None:
    for tool in ("redis-server",):
        if not shutil.which(tool):
            raise SystemExit(f"bench/chaos.py needs {tool} on PATH")
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="minyin-chaos-"))
    secret = secrets.token_hex(16)
    hook = Webhook(secret)
    dep = ChaosDeployment("distributed", 1, os.cpu_count() or 1, free_port())
    dep.env.update(MINYIN_WEBHOOK_URL=hook.url, MINYIN_WEBHOOK_SECRET=secret,
                   MINYIN_JOB_LEASE_SECONDS=str(lease_s))
    plan = fault_plan(rng, span_s or uploads * 2.0, kills, redis_restarts, webhook_outages,
                      outage_s)
    halt = threading.Event()
    reader: GroupReader | None = None
    try:
        cut = cut_clips(load_clips(clips), clip_seconds, work)
        hook.start()
        dep.start(ready_timeout)
        stream = f"{dep.env['MINYIN_REDIS_PREFIX']}:tickets"
        reader = GroupReader(dep.env["MINYIN_REDIS_URL"], stream)
        reader.start()
        err.print(f"chaos: {uploads} uploads of {clip_seconds:g} s, {concurrency} at a time; "
                  f"{kills} worker kills, {redis_restarts} Redis restarts, {webhook_outages} "
                  f"webhook outages of {outage_s:g} s over ~{span_s or uploads * 2.0:.0f} s")
        faults = Faults(dep, hook)
        chaos = threading.Thread(target=run_faults, args=(faults, plan, outage_s, halt),
                                 daemon=True)
        t0 = time.perf_counter()
        chaos.start()
        ups, approved = asyncio.run(upload_all(dep, cut, uploads, concurrency, approve_every,
                                               timeout))
        upload_wall = time.perf_counter() - t0
        chaos.join()  # the plan's remaining faults run too: the drain starts after the last
        err.print(f"uploads finished in {upload_wall:.0f} s; waiting for the outbox to drain")
        truth = store_truth(dep.tmp / "data")
        box = wait_drained(dep, reader, len(truth["events"]), drain_timeout)
        truth = store_truth(dep.tmp / "data")  # approvals and repeats may have added some
        box = wait_drained(dep, reader, len(truth["events"]), drain_timeout)
        result = count(ups, truth, reader, hook, approved)
        result.update(outbox_after=box, upload_wall_s=round(upload_wall, 1),
                      total_wall_s=round(time.perf_counter() - t0, 1), faults=faults.log,
                      plan={"kills": kills, "redis_restarts": redis_restarts,
                            "webhook_outages": webhook_outages, "outage_s": outage_s,
                            "seed": seed, "lease_s": lease_s})
    finally:
        halt.set()
        if reader is not None:
            reader.stop()
        for name, proc in reversed(dep.procs):
            if name != "redis":
                stop_process(proc)
        dep.stop()
        hook.stop()
        shutil.rmtree(work, ignore_errors=True)

    kinds = Counter(f["fault"] for f in result["faults"])
    table = Table(title=f"chaos: {uploads} uploads under faults (seed {seed})")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("of")
    rows = [
        ("faults: worker pool SIGKILLed", kinds["SIGKILL worker pool process"], ""),
        ("faults: whole worker SIGKILLed", kinds["SIGKILL whole worker"], ""),
        ("faults: Redis SIGKILLed and restarted", kinds["SIGKILL redis"], ""),
        ("faults: webhook 500 stretches", kinds["webhook answers 500"], f"{outage_s:g} s each"),
        ("uploads accepted (202)", result["accepted"], f"{uploads} sent"),
        ("accepted uploads with exactly one ticket", result["one_ticket_each"],
         f"{result['accepted']} accepted"),
        ("accepted uploads without a ticket / with more", f"{len(result['without_ticket'])} / "
         f"{len(result['more_than_one'])}", ""),
        ("tickets with no accepted upload", len(result["tickets_without_upload"]), ""),
        ("tickets approved (revision 2)", result["approved"], ""),
        ("outbox events", result["events"], json.dumps(result["event_types"])),
        ("outbox events not sent", len(result["events_unsent"]), ""),
        ("consumer group: events handled exactly once", result["stream_handled_once"],
         f"{result['events']} events"),
        ("consumer group: missing / handled twice", f"{len(result['stream_missing'])} / "
         f"{len(result['stream_handled_twice'])}", ""),
        ("consumer group: re-deliveries de-duplicated", result["stream_redeliveries_skipped"],
         f"{result['stream_reconnects']} reconnect tries"),
        ("webhook: events received", result["webhook_received"], f"{result['events']} events"),
        ("webhook: 500s answered / repeated deliveries", f"{result['webhook_500s']} / "
         f"{result['webhook_repeats']}", ""),
        ("job attempts (attempts: jobs)", json.dumps(result["job_attempts"]), ""),
        ("wall time: uploads / to drained (s)", f"{result['upload_wall_s']} / "
         f"{result['total_wall_s']}", ""),
    ]
    for what, n, of in rows:
        table.add_row(what, str(n), of)
    out.print(table)
    out.print("verdict: " + ("pass" if result["ok"] else "FAIL"))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1, default=str))
    raise typer.Exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    app()
