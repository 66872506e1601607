"""Intake and the job run: the one code path behind every way minyin runs.

- `accept_upload`: check the bytes are readable audio within the limits, keep the
  original (content-addressed, fsynced) and create the job, de-duplicated. The API
  route and `minyin batch` are thin wrappers around it.
- `run_job`: claim a job, transcribe its audio, build the ticket and store ticket,
  segments and outbox event in one transaction. The in-process pool and the Celery
  task are thin wrappers around it.

Nothing here knows HTTP or Celery: failures come back as `AudioError` codes
(intake) or as a `JobRun` outcome, and the callers map them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pipeline.audio import AudioError, decode_audio
from pipeline.blobs import BlobStore
from pipeline.config import Settings
from pipeline.dialect import current_detector_spec
from pipeline.language_model import current_lm_spec
from pipeline.metrics import AUDIO_SECONDS, JOB_RUNS, PROCESSING_SECONDS, REALTIME_FACTOR
from pipeline.models import current_spec
from pipeline.process import VoicePipeline, ticket_from_outcome
from pipeline.store import Job, Store, sanitise_filename
from pipeline.tickets.classifier import current_classifier_spec, use_classifier

log = logging.getLogger(__name__)

# AudioError codes that mean "the client sent something wrong" at intake, by the HTTP
# status a service answers with; every other code is a 422 (readable but unusable).
INTAKE_STATUS = {"empty": 400, "too_large": 413, "not_audio": 415,
                 "unsupported_format": 415}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Accepted:
    job: Job
    created: bool  # False: an existing job came back (same client_ref, or a resend)
    duration_s: float
    format: str


@dataclass
class JobContext:
    """What running a job needs; one per process, the model loaded once."""

    settings: Settings
    store: Store
    blobs: BlobStore
    pipeline: VoicePipeline

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = False) -> JobContext:
        return cls(settings=settings, store=Store.from_settings(settings, migrate=migrate),
                   blobs=blob_store(settings), pipeline=VoicePipeline(settings))


def blob_store(settings: Settings) -> BlobStore:
    return BlobStore(settings.data_dir / "audio")


def accept_upload(
    store: Store,
    blobs: BlobStore,
    settings: Settings,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    filename: str | None = None,
    submitter_id: str | None = None,
    client_ref: str | None = None,
    queue: Literal["voice", "batch"] = "voice",
    dialect: str | None = None,
    phone: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    address: str | None = None,
    **call: Any,
) -> Accepted:
    """Validate, store the original, create (or find) the job. Raises `AudioError`.

    `call`: a hotline batch's fields (batch_id, call_id, source_path, agent_id,
    caller_channel, submitted_at), stored on the job.

    The audio is decoded once here so that an unusable upload is refused while the
    client is still connected (a 4xx now instead of a failed job later); a 15 s voice
    note decodes in ~30 ms. Only then is it kept: junk never reaches the blob store.
    """
    label = sanitise_filename(filename) or "<upload>"
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is None:
        # decode_audio takes a path or bytes; uploads arrive spooled to a temp file
        fileobj = source  # type: ignore[assignment]
        fileobj.seek(0)
        data: str | os.PathLike[str] | bytes = fileobj.read()  # type: ignore[union-attr]
    else:
        data = path
    decoded = decode_audio(data, name=label, max_seconds=settings.max_audio_seconds,
                           max_bytes=settings.max_upload_bytes)
    sha = blobs.put(data if isinstance(data, bytes) else Path(data))
    size = blobs.size(sha)
    job, created = store.create_job(
        audio_sha256=sha, submitter_id=submitter_id, client_ref=client_ref, queue=queue,
        audio_filename=filename, audio_bytes=size, dialect=dialect, phone=phone, lat=lat,
        lon=lon, address=address, dedup_window=settings.dedup_window_minutes, **call,
    )
    return Accepted(job=job, created=created, duration_s=round(decoded.duration, 3),
                    format=decoded.format)


# --------------------------------------------------------------------------- running


Outcome = Literal["done", "failed", "retry", "busy", "over", "missing"]


@dataclass(frozen=True)
class JobRun:
    job_id: str
    outcome: Outcome  # done; failed (for good); retry (transient, job queued again);
    # busy (another live worker holds it); over (already done/failed); missing
    ticket_id: str | None = None
    error: str | None = None


class _Heartbeat:
    """Refreshes the job's lease from a thread while the (GIL-releasing) model runs."""

    def __init__(self, store: Store, job_id: str, attempt: int, interval: float) -> None:
        self.store, self.job_id, self.attempt, self.interval = store, job_id, attempt, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"beat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.heartbeat(self.job_id, self.attempt):
                    self.lost = True  # taken over after a missed lease; finish stays idempotent
                    return
            except Exception:  # a store hiccup must not kill the job; the next beat retries
                log.warning("heartbeat for %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_job(ctx: JobContext, job_id: str, *, force: bool = False) -> JobRun:
    """Run one job to its end. Safe to call twice, concurrently, or after a crash.

    `force`: the broker redelivered this job because its worker died, so a running
    state with a fresh heartbeat is a dead worker's, not a live one's.
    Transient failures (anything but bad audio) put the job back to queued until
    `job_max_attempts` is used up, then fail it with the last error.
    """
    settings, store = ctx.settings, ctx.store
    lease = settings.job_lease_seconds
    job = store.claim_job(job_id, lease=lease, worker=worker_name(), force=force)
    if job is None:
        current = store.get_job(job_id)
        if current is None:
            return JobRun(job_id, "missing", error="no such job")
        if current.status in ("done", "failed"):
            return JobRun(job_id, "over", ticket_id=current.ticket_id)
        return JobRun(job_id, "busy")
    if job.attempts > settings.job_max_attempts:
        reason = (f"gave up after {job.attempts - 1} attempts; last error: "
                  f"{job.failure_reason or 'worker lost'}")
        store.fail_job(job.id, "too_many_attempts", reason)
        JOB_RUNS.labels(job.queue, "failed").inc()
        return JobRun(job.id, "failed", error=reason)

    t0 = time.perf_counter()
    with _Heartbeat(store, job.id, job.attempts, max(0.5, lease / 4)):
        try:
            path = ctx.blobs.path(job.audio_sha256)
            if not path.exists():
                raise AudioError("not_found", "the stored original is missing",
                                 job.audio_filename or job.audio_sha256[:12])
            caller = job.caller_channel or 0
            # the registry's current model: a promotion reaches a running worker here
            ctx.pipeline.use_model(current_spec(store, settings))
            ctx.pipeline.use_lm(current_lm_spec(store, settings))
            use_classifier(current_classifier_spec(store, settings))
            ctx.pipeline.use_detector(current_detector_spec(store, settings))
            outcome = ctx.pipeline.process(path, name=job.audio_filename or "<upload>",
                                           dialect=job.dialect, sha256=job.audio_sha256,
                                           roles={caller: "caller", 1 - caller: "agent"})
            ticket_id = job.planned_ticket_id
            ticket = ticket_from_outcome(
                outcome, phone=job.phone, address=job.address, lat=job.lat, lon=job.lon,
                client_ref=job.client_ref, ticket_id=ticket_id,
                media_url=f"/v1/tickets/{ticket_id}/audio", submitted_at=job.submitted_at,
                review_confidence_below=settings.review_confidence_below,
            )
            elapsed = time.perf_counter() - t0
            audio_s = outcome.decoded.duration
            row = store.finish_job(job.id, ticket, audio_seconds=round(audio_s, 3),
                                   processing_seconds=round(elapsed, 3))
        except AudioError as e:
            store.fail_job(job.id, e.code, str(e))
            JOB_RUNS.labels(job.queue, "failed").inc()
            return JobRun(job.id, "failed", error=str(e))
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            log.exception("job %s attempt %d failed", job.id, job.attempts)
            store.fail_job(job.id, "internal_error", reason, retry=True)
            JOB_RUNS.labels(job.queue, "retry").inc()
            return JobRun(job.id, "retry", error=reason)
    JOB_RUNS.labels(job.queue, "done").inc()
    PROCESSING_SECONDS.labels(job.queue).observe(elapsed)
    AUDIO_SECONDS.labels(job.queue).observe(audio_s)
    if audio_s > 0:
        REALTIME_FACTOR.labels(job.queue).observe(elapsed / audio_s)
    log.info("job %s done: ticket %s, %.1f s audio in %.2f s", job.id, row.id, audio_s,
             elapsed)
    return JobRun(job.id, "done", ticket_id=row.id)
