"""Run a hotline batch: intake every call, transcribe them (in this process, or fanned
out to `minyin worker`s on the Celery ``batch`` queue), write each call's outputs and
the run's summary, and publish the tickets.

Resumable by construction: each call becomes a job with the client_ref
``<batch id>:<call id>`` (the batch id is derived from the output directory), so running
the same command again finds the same jobs: done ones only get their outputs checked,
unfinished ones run. A recording already transcribed under another call or batch (same
content hash) is skipped. An unreadable file is a failed row; it never stops the others.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from rich.progress import Progress, TaskID

from asr.model import sha256_file
from pipeline.audio import AudioError
from pipeline.batch import (
    CallItem,
    SummaryRow,
    batch_id_for,
    outputs_complete,
    write_call_outputs,
    write_summary,
)
from pipeline.config import Settings
from pipeline.jobs import JobContext, accept_upload, blob_store, run_job
from pipeline.outbox import StoreOutbox
from pipeline.process import VoicePipeline
from pipeline.sinks import relay, sinks_from_settings
from pipeline.store import Job, Store

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    batch_id: str
    out_dir: Path
    rows: list[SummaryRow] = field(default_factory=list)
    wall_s: float = 0.0
    # audio transcribed by this run (a resumed run also lists calls done before it)
    ran_audio_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def audio_s(self) -> float:
        return sum(float(r.audio_seconds or 0) for r in self.rows if r.status == "done")

    @property
    def processing_s(self) -> float:
        return sum(float(r.processing_seconds or 0) for r in self.rows if r.status == "done")

    @property
    def realtime_factor(self) -> float | None:
        """Wall seconds per audio second transcribed by this run (what a night's
        schedule needs); None when it transcribed nothing (all done before)."""
        return self.wall_s / self.ran_audio_s if self.ran_audio_s else None


def _row(item: CallItem, status: str, job: Job | None = None, *, ticket: object = None,
         code: str = "", error: str = "") -> SummaryRow:
    row = SummaryRow(call_id=item.call_id, path=str(item.path), status=status,
                     error_code=code, error=error)
    if job is not None:
        row.ticket_id = job.ticket_id or ""
        row.audio_seconds = f"{job.audio_seconds:.2f}" if job.audio_seconds else ""
        row.processing_seconds = (f"{job.processing_seconds:.2f}"
                                  if job.processing_seconds else "")
        if job.status == "failed":
            row.error_code, row.error = job.failure_code or "", job.failure_reason or ""
    if ticket is not None:
        row.category = ticket.category.code  # type: ignore[attr-defined]
        row.kind = ticket.kind  # type: ignore[attr-defined]
        row.urgency = ticket.urgency.level  # type: ignore[attr-defined]
        row.needs_review = str(ticket.review.needed).lower()  # type: ignore[attr-defined]
    return row


class _Run:
    def __init__(self, settings: Settings, store: Store, out_dir: Path, batch_id: str,
                 include_contact: bool, progress: Progress | None) -> None:
        self.settings, self.store, self.out_dir = settings, store, out_dir
        self.batch_id, self.include_contact = batch_id, include_contact
        self.rows: dict[str, SummaryRow] = {}
        self.progress = progress
        self.task: TaskID | None = None
        self.files_done = 0
        self.files_total = 0
        self.audio_done_h = 0.0
        self.ran_audio_s = 0.0

    def advance(self, audio_s: float = 0.0) -> None:
        self.files_done += 1
        if self.progress is not None and self.task is not None:
            self.audio_done_h += audio_s / 3600
            self.progress.update(self.task, advance=audio_s / 3600,
                                 description=f"calls {self.files_done}/{self.files_total}",
                                 audio=f"{self.audio_done_h:.2f} audio h")

    def finish(self, item: CallItem, job: Job, *, ran: bool = False) -> None:
        """Record an ended job; write its outputs unless they are already there.
        `ran`: transcribed during this run (not found done at intake)."""
        if job.status == "done" and job.ticket_id:
            if ran:
                self.ran_audio_s += job.audio_seconds or 0.0
            ticket = self.store.get_ticket(job.ticket_id)
            if ticket is None:
                raise LookupError(f"job {job.id} is done but ticket {job.ticket_id} is gone")
            if not outputs_complete(self.out_dir, item.call_id, ticket.id):
                write_call_outputs(self.out_dir, item.call_id, ticket,
                                   include_contact=self.include_contact)
            self.rows[item.call_id] = _row(item, "done", job, ticket=ticket)
        else:
            self.rows[item.call_id] = _row(item, "failed", job)
        self.advance(job.audio_seconds or 0.0)


def _dead_here(worker: str | None) -> bool:
    """A job 'running' on a process of this host that no longer exists."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))


def run_batch(settings: Settings, items: Sequence[CallItem], out_dir: Path, *,
              source: str = "", distributed: bool = False, dialect: str | None = None,
              include_contact: bool = False, progress: Progress | None = None,
              poll_s: float = 1.0) -> BatchReport:
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Store.from_settings(settings, migrate=True)
    blobs = blob_store(settings)
    batch = store.batch(batch_id_for(out_dir), source=source, out_dir=str(out_dir.resolve()))
    run = _Run(settings, store, out_dir, batch.id, include_contact, progress)
    run.files_total = len(items)
    if progress is not None:
        # the bar runs on audio hours (what the ETA depends on), the text counts calls
        run.task = progress.add_task(f"calls 0/{len(items)}", total=None, audio="intake")

    # 1. intake: every readable call becomes a job (or finds the one it already has)
    pending: dict[str, CallItem] = {}
    audio_total = 0.0
    for item in items:
        ref = f"{batch.id}:{item.call_id}"
        try:
            prior = store.done_job_for_audio(sha256_file(item.path))
            if prior is not None and prior.client_ref != ref:
                run.rows[item.call_id] = _row(
                    item, "skipped", prior,
                    error=f"the same recording was done before (job {prior.id})")
                run.advance()
                continue
            accepted = accept_upload(
                store, blobs, settings, item.path, filename=item.path.name, client_ref=ref,
                queue="batch", dialect=dialect, phone=item.caller, batch_id=batch.id,
                call_id=item.call_id, source_path=str(item.path), agent_id=item.agent_id,
                caller_channel=item.caller_channel, submitted_at=item.started_at)
        except AudioError as e:
            run.rows[item.call_id] = _row(item, "failed", code=e.code, error=str(e))
            run.advance()
            continue
        except OSError as e:  # unreadable, vanished, permission
            run.rows[item.call_id] = _row(item, "failed", code="unreadable", error=str(e))
            run.advance()
            continue
        job = accepted.job
        if job.status in ("done", "failed"):
            run.finish(item, job)
        else:
            pending[job.id] = item
            audio_total += accepted.duration_s
    if progress is not None and run.task is not None:
        progress.update(run.task, total=audio_total / 3600 + run.audio_done_h)

    # 2. transcription
    if distributed:
        _fan_out(run, pending, poll_s)
    else:
        _in_process(run, pending, blobs)

    # 3. the complaint queue: publish what this run stored (at least once; sinks dedup)
    sinks = sinks_from_settings(settings)
    outbox = StoreOutbox(store, retry_base_s=settings.outbox_retry_base_seconds)
    try:
        while relay(outbox, sinks).sent:
            pass
    finally:
        for sink in sinks:
            getattr(sink, "close", lambda: None)()

    report = BatchReport(batch.id, out_dir, [run.rows[i.call_id] for i in items
                                             if i.call_id in run.rows])
    report.wall_s = time.perf_counter() - t0
    report.ran_audio_s = run.ran_audio_s
    write_summary(out_dir, report.rows)
    store.finish_batch(batch.id)
    store.dispose()
    return report


def _in_process(run: _Run, pending: dict[str, CallItem], blobs: object) -> None:
    if not pending:
        return
    ctx = JobContext(settings=run.settings, store=run.store, blobs=blobs,  # type: ignore[arg-type]
                     pipeline=VoicePipeline(run.settings))
    for job_id, item in pending.items():
        while True:
            job = run.store.get_job(job_id)
            # our own earlier run, killed: its process is gone, take the job over now
            force = job is not None and job.status == "running" and _dead_here(job.worker)
            result = run_job(ctx, job_id, force=force)
            if result.outcome in ("done", "failed", "over", "missing"):
                break
            # retry: run_job re-queued it (and fails it after job_max_attempts);
            # busy: another live process holds it; wait for it or for its lease to lapse
            time.sleep(0.5 if result.outcome == "retry" else 2.0)
        job = run.store.get_job(job_id)
        if job is not None:
            run.finish(item, job, ran=True)


def _fan_out(run: _Run, pending: dict[str, CallItem], poll_s: float) -> None:
    from workers.runtime import CeleryDispatcher

    dispatcher = CeleryDispatcher(run.settings, run.store)
    try:
        jobs = run.store.get_jobs(list(pending))
        for job in jobs.values():
            if job.status == "queued":
                dispatcher.submit(job)
        waiting = dict(pending)
        last_sweep = time.monotonic()
        while waiting:
            for job in run.store.get_jobs(list(waiting)).values():
                if job.status in ("done", "failed"):
                    run.finish(waiting.pop(job.id), job, ran=True)
            if time.monotonic() - last_sweep > 5:
                # no API may be running: re-hand lost jobs and revive dead workers' here
                dispatcher.sweep()
                last_sweep = time.monotonic()
            if waiting:
                time.sleep(poll_s)
    finally:
        dispatcher.stop()
