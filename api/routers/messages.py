"""Typed messages: a title and a text in, a ticket out at once (no audio, no job wait)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.auth import Caller, upload_rate
from api.deps import StoreDep
from api.errors import ErrorBody
from pipeline.messages import TypedMessage, accept_message

router = APIRouter(tags=["messages"])


class MessageOut(BaseModel):
    ticket_id: str
    ticket_url: str
    duplicate: bool = Field(description="true: this client_ref already made this ticket")
    ticket: dict[str, Any] = Field(description="the ticket, public form (phone masked)")


@router.post(
    "/v1/messages", status_code=201, response_model=MessageOut,
    summary="Submit a typed message; the ticket is built and stored before the answer",
    responses={200: {"model": MessageOut,
                     "description": "the ticket an earlier message with this client_ref made"},
               422: {"model": ErrorBody,
                     "description": "empty or too long text, lat without lon, ...: "
                                    "`details` names each field"}},
)
async def post_message(body: TypedMessage, store: StoreDep,
                       caller: Annotated[Caller, Depends(upload_rate)]) -> JSONResponse:
    ticket, created = await run_in_threadpool(accept_message, store, body,
                                              submitter_id=caller.key_id)
    url = f"/v1/tickets/{ticket.id}"
    out = MessageOut(ticket_id=ticket.id, ticket_url=url, duplicate=not created,
                     ticket=ticket.public_dict())
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200,
                        headers={"Location": url})
