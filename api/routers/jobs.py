"""Jobs: what became of an upload."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.auth import Caller, require
from api.deps import StoreDep, own_job
from api.errors import ErrorBody
from pipeline.store import Job

router = APIRouter(tags=["voice notes"])


class JobOut(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    queue: str
    status_url: str
    ticket_id: str | None = Field(None, description="set once the job is done")
    ticket_url: str | None = None
    failure_code: str | None = None
    failure_reason: str | None = None
    attempts: int
    client_ref: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    audio_seconds: float | None = None
    processing_seconds: float | None = None


def job_out(job: Job) -> dict[str, Any]:
    return JobOut(
        job_id=job.id, status=job.status, queue=job.queue,  # type: ignore[arg-type]
        status_url=f"/v1/jobs/{job.id}", ticket_id=job.ticket_id,
        ticket_url=f"/v1/tickets/{job.ticket_id}" if job.ticket_id else None,
        failure_code=job.failure_code, failure_reason=job.failure_reason,
        attempts=job.attempts, client_ref=job.client_ref, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
        audio_seconds=job.audio_seconds, processing_seconds=job.processing_seconds,
    ).model_dump(mode="json")


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorBody}},
            summary="A job's state")
def get_job(job_id: str, store: StoreDep,
            caller: Annotated[Caller, Depends(require("submitter"))]) -> dict[str, Any]:
    return job_out(own_job(store, job_id, caller))
