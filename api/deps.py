"""What routes take from the app (its store, blobs, settings) and the ownership rules
every resource shares: another submitter's job or ticket is "not found"."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from api.auth import Caller
from api.errors import ApiError
from pipeline.blobs import BlobStore
from pipeline.config import Settings
from pipeline.store import Job, Store, TicketRow


def store_of(request: Request) -> Store:
    return request.app.state.store


def blobs_of(request: Request) -> BlobStore:
    return request.app.state.blobs


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(store_of)]
BlobsDep = Annotated[BlobStore, Depends(blobs_of)]
SettingsDep = Annotated[Settings, Depends(settings_of)]


def own_job(store: Store, job_id: str, caller: Caller) -> Job:
    job = store.get_job(job_id)
    # another submitter's job is "not found": its existence is not theirs to learn
    if job is None or (not caller.at_least("staff") and job.submitter_id != caller.key_id):
        raise ApiError(404, "not_found", f"no job {job_id}")
    return job


def own_ticket(store: Store, ticket_id: str, caller: Caller) -> TicketRow:
    row = store.get_ticket_row(ticket_id)
    if row is not None and not caller.at_least("staff"):
        job = store.get_job(row.job_id) if row.job_id else None
        if job is None or job.submitter_id != caller.key_id:
            row = None
    if row is None:
        raise ApiError(404, "not_found", f"no ticket {ticket_id}")
    return row


def ticket_doc(row: TicketRow, caller: Caller) -> dict[str, Any]:
    # staff call citizens back: they see the number; a submitter sees it masked
    return row.document if caller.at_least("staff") else row.ticket.public_dict()
