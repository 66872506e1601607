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
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from asr.types import Segment, Transcript
from pipeline.fields import AwareIsoDateTime, Number
from pipeline.ticket_schema import Ticket
from pipeline.tickets.build import TicketContext, build_ticket
from pipeline.tickets.repeats import caller_key
from pipeline.tickets.rules import TicketRules, load_rules

if TYPE_CHECKING:
    from pipeline.store import Store

MAX_TITLE_CHARS = 200
# a typed letter can be long: the longest of 4,326 real complaint messages had 7,000
MAX_TEXT_CHARS = 10_000
# what the transcript's model reference says for words nobody had to recognise
TYPED_MODEL = "typed"


class TypedMessage(BaseModel):
    """One typed complaint as a platform sends it. Empty text, a too long text, or a
    lone or out-of-range coordinate is a validation error naming the field."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={
        # lat and lon come together (the check below), said so in the schema as well
        "anyOf": [{"required": ["lat", "lon"],
                   "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                  "lon": {"type": "number", "minimum": -180,
                                          "maximum": 180}}},
                  {"properties": {"lat": {"type": "null"}, "lon": {"type": "null"}}}]})

    title: str = Field("", max_length=MAX_TITLE_CHARS, description="the message's subject")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS,
                      description="the citizen's words, as typed")
    phone: str | None = Field(None, max_length=32, repr=False,
                              description="call-back number (stored, masked when shown)")
    address: str | None = Field(None, max_length=500, description="the typed address")
    lat: Number | None = Field(None, ge=-90, le=90)
    # checked with lat (validate_default: a lone lat is an error located at lon)
    lon: Number | None = Field(None, ge=-180, le=180, validate_default=True)
    client_ref: str | None = Field(
        None, max_length=128,
        description="the platform's own id: sending it again returns the first ticket")
    submitted_at: AwareIsoDateTime | None = Field(None, description="when the citizen sent it")
    user: str | None = Field(None, max_length=200,
                             description="the platform's account id of the sender")

    @field_validator("phone", "address", "client_ref", "user")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v or None

    @field_validator("lon")
    @classmethod
    def _coordinates_pair(cls, v: float | None, info: ValidationInfo) -> float | None:
        if "lat" not in info.data:  # lat itself was invalid: that error suffices
            return v
        if (info.data["lat"] is None) != (v is None):
            raise ValueError("lat is given without lon" if v is None
                             else "lon is given without lat")
        return v

    def content_sha256(self) -> str:
        """Stands in for the audio hash where a store row needs one."""
        seed = "\x1f".join((self.title, self.text, self.address or "", self.client_ref or ""))
        return hashlib.sha256(seed.encode()).hexdigest()


@dataclass(frozen=True)
class MessageLine:
    """One line of a typed-message JSONL file: the message, or why it is not one."""

    path: str
    line: int
    id: str | None
    message: TypedMessage | None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _problem(e: ValidationError) -> str:
    out = []
    for err in e.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append(f"{field}: {msg}" if field else msg)
    return "; ".join(out)


# the fields a JSONL line may carry besides "id"; others (a platform's own columns,
# labels) are ignored. "time" is the contest files' and platforms' name for submitted_at.
LINE_FIELDS = frozenset(TypedMessage.model_fields) | {"time"}
CHINA_TIME = timezone(timedelta(hours=8))


def parse_message_line(data: Any) -> tuple[str | None, TypedMessage]:
    """(id, message) from one decoded JSONL object {"id", "title", "text", ...}.

    The id is the message's client_ref unless it brings its own; a time without a zone
    is China time (files from the platforms say none). ValueError naming the field."""
    if not isinstance(data, dict):
        raise ValueError("a line must be a JSON object")
    fields = {k: v for k, v in data.items() if k in LINE_FIELDS}
    raw_id = data.get("id")
    if raw_id is not None and not isinstance(raw_id, (str, int)):
        raise ValueError("id: must be a string or a number")
    msg_id = str(raw_id) if raw_id is not None else None
    if msg_id is not None and not fields.get("client_ref"):
        fields["client_ref"] = msg_id
    if "time" in fields:
        when = fields.pop("time")
        fields.setdefault("submitted_at", when)
    when = fields.get("submitted_at")
    if isinstance(when, str) and when.strip():
        try:
            parsed = datetime.fromisoformat(when.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"submitted_at: not an ISO 8601 date-time: {when!r}") from None
        fields["submitted_at"] = parsed if parsed.tzinfo else parsed.replace(tzinfo=CHINA_TIME)
    elif when in ("", None):
        fields.pop("submitted_at", None)
    for name in ("phone", "user"):  # numbers in a spreadsheet export
        if isinstance(fields.get(name), int):
            fields[name] = str(fields[name])
    try:
        return msg_id, TypedMessage.model_validate(fields)
    except ValidationError as e:
        raise ValueError(_problem(e)) from None


def read_message_lines(path: str | Path) -> Iterator[MessageLine]:
    """Every non-blank line of a typed-message JSONL file, in order; a bad line comes
    with its error (FILE:LINE and the field) instead of stopping the rest."""
    name = str(path)
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:  # a line that is not UTF-8 is that line's error, not the file's end
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield MessageLine(name, number, None, None,
                                  f"not UTF-8 text (byte {e.start} of the line)")
                continue
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except ValueError as e:
                yield MessageLine(name, number, None, None, f"not JSON: {e}")
                continue
            raw_id = data.get("id") if isinstance(data, dict) else None
            try:
                msg_id, msg = parse_message_line(data)
            except ValueError as e:
                yield MessageLine(name, number, None if raw_id is None else str(raw_id),
                                  None, str(e))
                continue
            yield MessageLine(name, number, msg_id, msg)


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
    category: str | None = None,
) -> Ticket:
    """The ticket for one typed message, through the same builder as voice notes.

    `category`: a leaf code the submitter chose (Open311's service_code) instead of the
    classifier's; KeyError if the taxonomy has no such leaf.
    """
    if category is not None:
        (rules or load_rules()).category(category)  # KeyError before anything is built
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
        category=category,
    )
    return build_ticket(message_transcript(msg), context, rules, now=now)


def accept_message(
    store: Store,
    msg: TypedMessage,
    *,
    submitter_id: str | None = None,
    rules: TicketRules | None = None,
    now: datetime | None = None,
    category: str | None = None,
) -> tuple[Ticket, bool]:
    """Build, store (ticket + outbox `ticket.created` in one transaction) and return
    (ticket, created). A client_ref this submitter already used returns the ticket it
    made then, with created False: nothing accepted is lost or doubled.
    """
    # the store runs the 重复件 / 一类事 check in the same transaction (duplicate_of,
    # cluster_id; ticket.repeated instead of ticket.created): the same caller is the
    # same phone, else the same platform user
    if msg.client_ref is not None:
        existing = store.ticket_for_client_ref(msg.client_ref, submitter_id=submitter_id)
        if existing is not None:
            return existing, False
    ticket = ticket_from_message(msg, rules=rules, now=now, category=category)
    return store.save_message_ticket(ticket, submitter_id=submitter_id,
                                     content_sha256=msg.content_sha256(), now=now,
                                     caller=caller_key(msg.phone, msg.user))


__all__ = [
    "MAX_TEXT_CHARS",
    "MAX_TITLE_CHARS",
    "MessageLine",
    "TypedMessage",
    "accept_message",
    "message_ticket_id",
    "message_transcript",
    "parse_message_line",
    "read_message_lines",
    "ticket_from_message",
]
