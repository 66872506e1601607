"""Typed messages: a title and a text from an app, a web form or Open311, built into
the same ticket as a voice note (`build_ticket`), without audio.

    msg = TypedMessage(title="路灯坏了", text="和平路口的路灯坏了一个星期", phone="139...")
    ticket = ticket_from_message(msg)                 # build only
    ticket, created = accept_message(store, msg)      # build + store + outbox event

The message's words are the transcript (one segment, confidence 1, no ASR flags); its
title counts as the caller's words too.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from asr.types import Segment, Transcript
from pipeline.ticket_schema import Ticket
from pipeline.tickets.build import TicketContext, build_ticket
from pipeline.tickets.rules import TicketRules

if TYPE_CHECKING:
    from pipeline.store import Store

MAX_TITLE_CHARS = 200
MAX_TEXT_CHARS = 5000
# what the transcript's model reference says for words nobody had to recognise
TYPED_MODEL = "typed"


class TypedMessage(BaseModel):
    """One typed complaint as a platform sends it. Empty text, a too long text, or a
    lone or out-of-range coordinate is a validation error naming the field."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str = Field("", max_length=MAX_TITLE_CHARS, description="the message's subject")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS,
                      description="the citizen's words, as typed")
    phone: str | None = Field(None, max_length=32, repr=False,
                              description="call-back number (stored, masked when shown)")
    address: str | None = Field(None, max_length=500, description="the typed address")
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    client_ref: str | None = Field(
        None, max_length=128,
        description="the platform's own id: sending it again returns the first ticket")
    submitted_at: AwareDatetime | None = Field(None, description="when the citizen sent it")
    user: str | None = Field(None, max_length=200,
                             description="the platform's account id of the sender")

    @field_validator("phone", "address", "client_ref", "user")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v or None

    @model_validator(mode="after")
    def _coordinates_pair(self) -> TypedMessage:
        if (self.lat is None) != (self.lon is None):
            missing = "lon" if self.lon is None else "lat"
            raise ValueError(f"{missing}: lat and lon come together or not at all")
        return self

    def content_sha256(self) -> str:
        """Stands in for the audio hash where a store row needs one."""
        seed = "\x1f".join((self.title, self.text, self.address or "", self.client_ref or ""))
        return hashlib.sha256(seed.encode()).hexdigest()


def message_ticket_id(msg: TypedMessage, now: datetime) -> str:
    """The same message (text, client_ref, submitted_at) always gets the same id; one
    without a submission time gets a fresh one."""
    when = (msg.submitted_at or now).astimezone(timezone.utc)
    if msg.submitted_at is not None:
        tail = hashlib.sha256(f"{msg.content_sha256()}|{when.isoformat()}".encode()
                              ).hexdigest()[:8]
    else:
        tail = secrets.token_hex(4)
    return f"T{when:%Y%m%d}-{when:%H%M%S}-{tail}"


def message_transcript(msg: TypedMessage) -> Transcript:
    """The typed text as a transcript: one segment, certain (confidence 1)."""
    segments = [Segment(start=0.0, end=0.0, text=msg.text)]
    return Transcript(text=msg.text, segments=segments, language="zh",
                      language_probability=1.0, duration=0.0, model=TYPED_MODEL)


def ticket_from_message(
    msg: TypedMessage,
    *,
    rules: TicketRules | None = None,
    now: datetime | None = None,
    ticket_id: str | None = None,
) -> Ticket:
    """The ticket for one typed message, through the same builder as voice notes."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    context = TicketContext(
        source="message",
        title=msg.title or None,
        phone=msg.phone,
        client_ref=msg.client_ref,
        address=msg.address,
        lat=msg.lat,
        lon=msg.lon,
        submitted_at=msg.submitted_at,
        ticket_id=ticket_id or message_ticket_id(msg, now),
    )
    return build_ticket(message_transcript(msg), context, rules, now=now)


def accept_message(
    store: Store,
    msg: TypedMessage,
    *,
    submitter_id: str | None = None,
    rules: TicketRules | None = None,
    now: datetime | None = None,
) -> tuple[Ticket, bool]:
    """Build, store (ticket + outbox `ticket.created` in one transaction) and return
    (ticket, created). A client_ref this submitter already used returns the ticket it
    made then, with created False: nothing accepted is lost or doubled.
    """
    # the repeats / 一类事 check belongs here, between building and storing, once
    # pipeline.tickets has it: it may set duplicate_of / cluster_id on the ticket
    if msg.client_ref is not None:
        existing = store.ticket_for_client_ref(msg.client_ref, submitter_id=submitter_id)
        if existing is not None:
            return existing, False
    ticket = ticket_from_message(msg, rules=rules, now=now)
    return store.save_message_ticket(ticket, submitter_id=submitter_id,
                                     content_sha256=msg.content_sha256(), now=now)


__all__ = [
    "MAX_TEXT_CHARS",
    "MAX_TITLE_CHARS",
    "TypedMessage",
    "accept_message",
    "message_ticket_id",
    "message_transcript",
    "ticket_from_message",
]
