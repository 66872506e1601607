"""`run_job`, the one job path behind the in-process pool and the Celery task: a real
store and blob store, the real pipeline or a scripted one that fails on cue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.audio import AudioError
from pipeline.config import Settings
from pipeline.jobs import JobContext, accept_upload, blob_store, run_job
from pipeline.store import Store

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
NOTE = SAMPLES / "05_garbage_not_collected.wav"


class Scripted:
    """A pipeline whose process() raises the given errors in turn, then runs the real one."""

    def __init__(self, real: Any, errors: list[BaseException]) -> None:
        self.real, self.errors, self.calls = real, list(errors), 0

    def process(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.real.process(*args, **kw)

    def use_model(self, spec: str) -> bool:
        return bool(self.real.use_model(spec))

    def use_lm(self, spec: str | None) -> bool:
        return bool(self.real.use_lm(spec))

    def use_detector(self, spec: str) -> bool:
        return bool(self.real.use_detector(spec))


@pytest.fixture
def ctx(tmp_path: Path, pipeline: Any) -> JobContext:
    settings = Settings(data_dir=tmp_path, job_max_attempts=3)
    return JobContext(settings=settings, store=Store.from_settings(settings, migrate=True),
                      blobs=blob_store(settings), pipeline=pipeline)


def submit(ctx: JobContext, path: Path = NOTE, **kw: Any) -> str:
    return accept_upload(ctx.store, ctx.blobs, ctx.settings, path, filename=path.name,
                         **kw).job.id


def test_a_job_becomes_a_ticket_once(ctx: JobContext) -> None:
    job_id = submit(ctx, phone="13812345678", address="和平路")
    run = run_job(ctx, job_id)
    assert run.outcome == "done" and run.ticket_id == f"T{job_id[1:]}"
    job = ctx.store.get_job(job_id)
    assert job is not None and job.status == "done" and job.audio_seconds > 10
    ticket = ctx.store.get_ticket(run.ticket_id)
    assert ticket is not None and ticket.submitter.phone == "13812345678"
    assert ticket.audio.media_url == f"/v1/tickets/{run.ticket_id}/audio"
    assert "垃圾" in ticket.transcript.text
    # a redelivered or duplicated task finds the job over and writes nothing
    assert run_job(ctx, job_id).outcome == "over"
    assert run_job(ctx, job_id, force=True).outcome == "over"
    assert ctx.store.job_stats().outbox_pending == 1


def test_transient_errors_retry_then_give_up(ctx: JobContext) -> None:
    job_id = submit(ctx)
    ctx.pipeline = Scripted(ctx.pipeline, [RuntimeError("CUDA out of memory")] * 5)
    outcomes = [run_job(ctx, job_id).outcome for _ in range(4)]
    assert outcomes == ["retry", "retry", "retry", "failed"]
    job = ctx.store.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.failure_code == "too_many_attempts"
    assert "CUDA out of memory" in (job.failure_reason or "")


def test_a_transient_error_then_success(ctx: JobContext) -> None:
    job_id = submit(ctx)
    ctx.pipeline = Scripted(ctx.pipeline, [ConnectionError("store blip")])
    assert run_job(ctx, job_id).outcome == "retry"
    assert run_job(ctx, job_id).outcome == "done"


def test_bad_audio_fails_for_good_with_its_reason(ctx: JobContext) -> None:
    job_id = submit(ctx)
    ctx.pipeline = Scripted(ctx.pipeline, [AudioError("corrupt", "damaged frames", "x.amr")])
    run = run_job(ctx, job_id)
    assert run.outcome == "failed"
    job = ctx.store.get_job(job_id)
    assert job is not None and job.failure_code == "corrupt"
    assert job.failure_reason == "x.amr: damaged frames"
    assert run_job(ctx, job_id).outcome == "over"


def test_a_missing_original_fails_the_job(ctx: JobContext) -> None:
    job_id = submit(ctx)
    job = ctx.store.get_job(job_id)
    assert job is not None
    path = ctx.blobs.path(job.audio_sha256)
    path.chmod(0o644)
    path.unlink()
    run = run_job(ctx, job_id)
    assert run.outcome == "failed" and "missing" in (run.error or "")


def test_busy_while_another_worker_holds_the_lease(ctx: JobContext) -> None:
    job_id = submit(ctx)
    assert ctx.store.claim_job(job_id, worker="other:1") is not None
    assert run_job(ctx, job_id).outcome == "busy"
    assert run_job(ctx, "J20000101-000000-00000000").outcome == "missing"


def test_intake_refuses_before_storing(ctx: JobContext, tmp_path: Path) -> None:
    junk = tmp_path / "junk.amr"
    junk.write_bytes(b"#!AMR\n" + b"\xff" * 10)
    with pytest.raises(AudioError):
        accept_upload(ctx.store, ctx.blobs, ctx.settings, junk)
    assert not (ctx.settings.data_dir / "audio").exists() or not any(
        p.is_file() for p in (ctx.settings.data_dir / "audio").rglob("*"))
