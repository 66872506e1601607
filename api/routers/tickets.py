"""Tickets: the list, one ticket (JSON or the 12345 work order), its audio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel

from api.auth import Caller, require
from api.deps import BlobsDep, SettingsDep, StoreDep, own_ticket, ticket_doc
from api.errors import ApiError, ErrorBody, require_time_zones
from pipeline.audio import AudioError, sniff_format, write_playable_wav
from pipeline.fields import DB_INT_MAX, IsoDateTime
from pipeline.store import Store
from pipeline.store_clusters import get_cluster, ticket_repeats
from pipeline.ticket_schema import Ticket
from pipeline.tickets import load_rules
from pipeline.tickets.exports import work_order_12345

router = APIRouter(tags=["tickets"])
_submitter = require("submitter")

_MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "mp4": "audio/mp4", "3gp": "audio/3gpp",
         "amr": "audio/amr", "ogg": "audio/ogg", "webm": "audio/webm", "flac": "audio/flac",
         "aac": "audio/aac", "silk": "audio/silk", "caf": "audio/x-caf",
         "aiff": "audio/aiff", "mkv": "audio/x-matroska", "asf": "audio/x-ms-wma"}

# what GET /v1/tickets/{id} gives, both forms, for the OpenAPI document (a submitter's
# view of a typed message; tests/test_open311.py validates them against the code)
_EXAMPLES = Path(__file__).resolve().parents[1] / "data"
TICKET_EXAMPLE = json.loads((_EXAMPLES / "ticket_example.json").read_text(encoding="utf-8"))
WORK_ORDER_EXAMPLE = json.loads((_EXAMPLES / "work_order_example.json").read_text(
    encoding="utf-8"))


class TicketList(BaseModel):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int
    next_offset: int | None


def related_tickets(store: Store, ticket: Ticket) -> list[str]:
    """The ticket's 重复件 (its repeats) and the other members of its 一类事 cluster."""
    _, repeats = ticket_repeats(store, ticket.id)
    members: list[str] = []
    if ticket.cluster_id is not None:
        detail = get_cluster(store, ticket.cluster_id)
        members = [m.ticket_id for m in detail.members] if detail is not None else []
    return list(dict.fromkeys(repeats + members))


@router.get("/v1/tickets", response_model=TicketList,
            summary="Tickets, newest first (a submitter sees its own)")
def list_tickets(
    store: StoreDep,
    caller: Annotated[Caller, Depends(_submitter)],
    status: Literal["new", "in_review", "reviewed"] | None = None,
    category: Annotated[str | None, Query(max_length=64, description="code or prefix")] = None,
    urgency: Literal["normal", "urgent"] | None = None,
    needs_review: bool | None = None,
    source: Literal["voice_note", "hotline", "message"] | None = None,
    created_from: IsoDateTime | None = None,
    created_to: IsoDateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
) -> dict[str, Any]:
    require_time_zones(created_from=created_from, created_to=created_to)
    page = store.list_tickets(
        status=status, category=category, urgency=urgency, needs_review=needs_review,
        source=source, created_from=created_from, created_to=created_to, limit=limit,
        offset=offset, submitter_id=None if caller.at_least("staff") else caller.key_id,
    )
    return {"items": [ticket_doc(r, caller) for r in page.items], "total": page.total,
            "limit": page.limit, "offset": page.offset, "next_offset": page.next_offset}


@router.get(
    "/v1/tickets/{ticket_id}", summary="One ticket: the ticket JSON, or a 12345 work order",
    responses={
        200: {"model": Ticket,
              "description": "format=json: the ticket document (staff see the phone, a "
                             "submitter the masked number); format=12345: the work order "
                             "(工单编号, 来电时间, 来源渠道, 诉求类型, 事项分类, 诉求内容, "
                             "诉求概要, 事发地址, 承办单位, 办理时限, 紧急程度, 是否重复, "
                             "关联工单)",
              "content": {"application/json": {"examples": {
                  "json": {"summary": "format=json (default)", "value": TICKET_EXAMPLE},
                  "12345": {"summary": "format=12345", "value": WORK_ORDER_EXAMPLE}}}}},
        404: {"model": ErrorBody},
        422: {"model": ErrorBody, "description": "an unknown format"}},
)
def get_ticket(
    ticket_id: str, store: StoreDep, caller: Annotated[Caller, Depends(_submitter)],
    format: Annotated[Literal["json", "12345"], Query(
        description="json: the ticket; 12345: the work-order fields a 12345 platform "
                    "takes (工单编号, 来电时间, 事项分类, 办理时限, ...)")] = "json",
) -> dict[str, Any]:
    row = own_ticket(store, ticket_id, caller)
    if format == "12345":
        ticket = row.ticket
        return work_order_12345(ticket, related=related_tickets(store, ticket),
                                rules=load_rules())
    return ticket_doc(row, caller)


@router.get("/v1/tickets/{ticket_id}/audio", response_class=FileResponse,
            responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
            summary="The audio (staff): the original, or a WAV any browser plays")
def ticket_audio(
    ticket_id: str, store: StoreDep, blobs: BlobsDep, settings: SettingsDep,
    caller: Annotated[Caller, Depends(require("staff"))],
    format: Annotated[Literal["original", "wav"], Query(
        description="original: the bytes as received; wav: 16 kHz PCM, every "
                    "channel, seekable (browsers play no AMR or SILK)")] = "original",
) -> FileResponse:
    row = own_ticket(store, ticket_id, caller)
    job = store.get_job(row.job_id) if row.job_id else None
    if job is None or row.source == "message" or not blobs.exists(job.audio_sha256):
        raise ApiError(404, "not_found", f"ticket {ticket_id} has no stored audio")
    path = blobs.path(job.audio_sha256)
    if format == "wav":
        wav = settings.data_dir / "renditions" / f"{job.audio_sha256}.wav"
        if not wav.exists():
            try:
                write_playable_wav(path, wav)
            except AudioError as e:
                raise ApiError(422, f"unreadable_audio.{e.code}", str(e)) from None
        return FileResponse(wav, media_type="audio/wav",
                            filename=f"{ticket_id}.wav", content_disposition_type="inline")
    with path.open("rb") as fh:
        fmt = sniff_format(fh.read(64 * 1024))
    name = job.audio_filename or f"{ticket_id}.{fmt or 'bin'}"
    return FileResponse(path, media_type=_MIME.get(fmt or "", "application/octet-stream"),
                        filename=name)
