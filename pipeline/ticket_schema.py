"""The ticket: the one JSON document minyin puts on the complaint queue.

Every sink (store, JSONL, Redis stream, webhook) carries the same document, validated
by `Ticket` and described by the JSON Schema committed at `pipeline/data/ticket.schema.json`
(`write_json_schema()` regenerates it; a test keeps the two equal).

Personal data: the submitter's phone number is *stored* but never *shown*.
- `model_dump()` / `model_dump_json()` (also named `storage_dict()` / `storage_json()`)
  are the full form: the store, and sinks whose consumer may call the citizen back.
  `Ticket.model_validate_json(t.model_dump_json()) == t`.
- `public_dict()` / `public_json()` are the shown form, for logs, HTTP responses, the
  staff page and exports: `submitter.phone` is null there and `submitter.phone_masked`
  ("139****5678") stands in. Same as dumping with `context=PUBLIC_CONTEXT`.
- `repr(ticket)` / `str(ticket)` never contain the phone, so logging a ticket object
  by accident does not leak it.
Phone numbers and ID-card numbers inside free text (transcript, segments, summary,
location) are masked when the ticket is built (`pipeline.tickets.mask_pii`), so every
text field is already safe to show.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "ticket.schema.json"

# Serialisation context for every shown form: drops the stored phone (see module doc).
PUBLIC_CONTEXT: dict[str, bool] = {"hide_pii": True}

Source = Literal["voice_note", "hotline", "message"]  # message: typed, no audio
Kind = Literal["投诉", "咨询", "求助", "建议", "举报", "表扬"]
UrgencyLevel = Literal["normal", "urgent"]
ParsedFrom = Literal["transcript", "form", "both"]

KINDS: tuple[str, ...] = ("投诉", "咨询", "求助", "建议", "举报", "表扬")
# T + UTC date-time of submission (sortable as a string) + 8 hex digits
TICKET_ID_PATTERN = r"^T\d{8}-\d{6}-[0-9a-f]{8}$"
# lower_snake_case codes, with an optional value: "dialect:wu"
FLAG_PATTERN = r"^[a-z][a-z0-9_]*(:[a-z][a-z0-9_]*)?$"
_FlagList = list[str]


def mask_number(digits: str, keep_head: int = 3, keep_tail: int = 4) -> str:
    """'13912345678' -> '139****5678'; short numbers keep less so most is hidden."""
    digits = "".join(ch for ch in digits if ch.isalnum())
    n = len(digits)
    # at least four digits stay hidden, whatever the pattern asked for
    while keep_head + keep_tail > max(0, n - 4):
        if keep_head >= keep_tail and keep_head:
            keep_head -= 1
        else:
            keep_tail -= 1
    return digits[:keep_head] + "*" * (n - keep_head - keep_tail) + digits[n - keep_tail :]


def normalise_phone(phone: str) -> str:
    """Digits only, without the +86 / 0086 country prefix of a mainland number."""
    digits = "".join(ch for ch in phone if ch.isdigit())
    for prefix in ("0086", "86"):
        if (
            digits.startswith(prefix)
            and len(digits) == len(prefix) + 11
            and digits[len(prefix)] == "1"
        ):
            return digits[len(prefix) :]
    return digits


def mask_phone(phone: str) -> str:
    digits = normalise_phone(phone)
    if len(digits) == 11 and digits.startswith("1"):
        return mask_number(digits, 3, 4)
    return mask_number(digits, 4, 2)


class _Model(BaseModel):
    # A typo'd field from a sink or a reviewer's edit is an error, not silently dropped.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Submitter(_Model):
    phone: str | None = Field(
        None,
        repr=False,
        description="Full number, for the store only; null in every shown form",
    )
    phone_masked: str | None = Field(None, description="e.g. 139****5678; safe to show")
    client_ref: str | None = Field(None, description="The app's or hotline's own reference")

    @field_validator("phone")
    @classmethod
    def _normalise_phone(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        digits = normalise_phone(v)
        if not 5 <= len(digits) <= 15:
            raise ValueError("phone must have 5 to 15 digits")
        return digits

    @model_validator(mode="after")
    def _fill_masked(self) -> Submitter:
        if self.phone is not None:
            masked = mask_phone(self.phone)
            if self.phone_masked != masked:
                # bypass validate_assignment recursion: object.__setattr__ is safe here
                object.__setattr__(self, "phone_masked", masked)
        return self

    @field_serializer("phone")
    def _hide_phone(self, v: str | None, info: FieldSerializationInfo) -> str | None:
        if isinstance(info.context, dict) and info.context.get("hide_pii"):
            return None
        return v

    def masked(self) -> Submitter:
        """A copy without the full number."""
        return Submitter(phone=None, phone_masked=self.phone_masked, client_ref=self.client_ref)


class AudioRef(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    duration_s: float = Field(ge=0)
    format: str = Field(description="container as received, e.g. amr, m4a, mp3, silk, wav")
    codec: str | None = None
    channels: int = Field(1, ge=1, le=8)
    sample_rate: int | None = Field(None, gt=0, description="of the original audio, Hz")
    media_url: str | None = Field(None, description="where staff can fetch the original")


class ModelRef(_Model):
    name: str
    version: str = ""


Variety = Literal["mandarin", "cantonese", "wu", "min", "hakka", "southwestern", "other",
                  "unknown"]


class TicketSegment(_Model):
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text: str
    channel: int = Field(0, ge=0)
    speaker: str | None = None
    confidence: float = Field(ge=0, le=1)
    avg_logprob: float = Field(le=0)
    no_speech_prob: float = Field(ge=0, le=1)
    flags: _FlagList = Field(default_factory=list)
    variety: Variety = Field("mandarin", description="the variety heard in this segment")
    variety_confidence: float | None = Field(None, ge=0, le=1)
    readable: bool = Field(True, description="false: the text is not a transcript of what "
                           "was said (a dialect the model cannot read); a person must listen")
    dialect_text: str | None = Field(
        None, description="what was said, in the dialect's own characters, as a reviewer "
        "wrote it (`text` then holds its meaning in standard written Mandarin)")

    @model_validator(mode="after")
    def _ordered(self) -> TicketSegment:
        if self.end < self.start:
            raise ValueError("segment end is before its start")
        return self


class TicketTranscript(_Model):
    text: str
    segments: list[TicketSegment] = Field(default_factory=list)
    variety: Variety = Field("mandarin", description="the variety of the caller's speech")
    variety_confidence: float | None = Field(None, ge=0, le=1)
    readable: bool = Field(True, description="true only when the machine text can be "
                           "relied on as a transcript of what was said")
    variety_confirmed_by: str | None = Field(
        None, description="the reviewer who confirmed the variety (null: as detected)")
    detector: ModelRef | None = Field(None, description="the dialect detector that judged it")


class Category(_Model):
    code: str = Field(pattern=r"^[a-z][a-z0-9_.]*$", description="the leaf's stable code")
    label: str = Field(min_length=1, description="the leaf's label (level 3)")
    path: list[str] = Field(
        default_factory=list, max_length=3,
        description="level 1, 2 and 3 labels; level 1 as the common government appeal "
        "taxonomy names it (城乡建设, 环境保护, 交通运输, ...)")
    department: str = Field(min_length=1, description="承办单位: the office that handles it")
    time_limit_days: int | None = Field(
        None, ge=1, le=365, description="办理时限 in working days (the county's file may override)")
    confidence: float | None = Field(
        None, ge=0, le=1, description="the classifier's probability of this leaf")


class Location(_Model):
    text: str | None = Field(None, description="the place as said or typed (masked)")
    province: str | None = None
    city: str | None = None
    district: str | None = None
    street: str | None = Field(None, description="town, township or subdistrict (街道/镇/乡)")
    village: str | None = Field(None, description="village or residents' community (村/社区)")
    road: str | None = Field(None, description="road, street or intersection (和平路口)")
    landmark: str | None = Field(None, description="estate, building, school, market, ...")
    submitted_address: str | None = Field(
        None, description="the address the submitter typed, as given (masked)")
    lat: float | None = Field(None, ge=-90, le=90, description="only from the intake form")
    lon: float | None = Field(None, ge=-180, le=180, description="only from the intake form")
    parsed_from: ParsedFrom | None = None

    @model_validator(mode="after")
    def _coordinates_pair(self) -> Location:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon come together or not at all")
        return self

    @property
    def is_empty(self) -> bool:
        return not (
            self.text or self.street or self.district or self.city or self.village
            or self.road or self.landmark or self.lat is not None
        )

    def full_address(self) -> str | None:
        """The parsed parts in order (province .. village, road, landmark), each once,
        then the house number said after the last of them (12号, 3栋2单元); only the
        free text when nothing was parsed. Open311's `address_string`."""
        parts: list[str] = []
        for part in (self.province, self.city, self.district, self.street, self.village,
                     self.road, self.landmark):
            # 北京市 is province and city; 和平路口 already holds 和平路
            if part and not any(part in p for p in parts):
                parts = [p for p in parts if p not in part] + [part]
        if not parts:
            return self.text or self.submitted_address or None
        address = "".join(parts)
        text = self.text or ""
        last = parts[-1]
        at = text.rfind(last)
        if at >= 0:  # a detail said after the last part: 和平路 + 十二号
            detail = re.split(r"[；;，,。\s]", text[at + len(last):], maxsplit=1)[0]
            address += detail
        return address


class Urgency(_Model):
    level: UrgencyLevel = "normal"
    reasons: list[str] = Field(default_factory=list, description="why urgent, for people")
    rules: list[str] = Field(default_factory=list, description="names of the rules that fired")
    possible: list[str] = Field(
        default_factory=list,
        description="hazards mentioned but not confirmed (negated or without a qualifier)",
    )

    @model_validator(mode="after")
    def _urgent_has_reason(self) -> Urgency:
        if self.level == "urgent" and not self.reasons:
            raise ValueError("an urgent ticket must say why")
        return self


class Review(_Model):
    needed: bool = False
    flags: list[str] = Field(default_factory=list, description="machine codes, e.g. no_location")
    reviewed_by: str | None = Field(None, description="the staff member who approved it")
    reviewed_at: AwareDatetime | None = Field(None, description="when it was approved")

    @field_validator("flags")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if not re.match(FLAG_PATTERN, f)]
        if bad:
            raise ValueError(f"review flags are lower_snake_case codes: {bad}")
        return list(dict.fromkeys(v))


class Ticket(_Model):
    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        title="Ticket",
        json_schema_extra={"$id": "urn:minyin:ticket:1"},
    )

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(pattern=TICKET_ID_PATTERN)
    created_at: AwareDatetime
    submitted_at: AwareDatetime | None = Field(None, description="when the citizen submitted")
    source: Source
    submitter: Submitter = Field(default_factory=Submitter)
    title: str | None = Field(None, max_length=200, description="typed messages' own title")
    audio: AudioRef | None = Field(None, description="null only for typed messages")
    transcript: TicketTranscript
    language: str
    dialect: str = Field(description="dialect profile the transcript was made with")
    kind: Kind
    category: Category
    location: Location = Field(default_factory=Location)
    urgency: Urgency = Field(default_factory=Urgency)
    summary: str = Field(max_length=80)
    review: Review = Field(default_factory=Review)
    model: ModelRef
    classifier: ModelRef | None = Field(
        None, description="the category classifier (null: keyword rules only)")
    duplicate_of: str | None = Field(
        None, pattern=TICKET_ID_PATTERN,
        description="重复件: the first ticket of the same caller on the same matter")
    repeat_count: int = Field(
        0, ge=0, description="on a first ticket: how many repeats it has had; on a "
        "duplicate: which repeat this is (1 = the first repeat)")
    cluster_id: str | None = Field(
        None, description="一类事: the cluster of callers with the same matter, if any")
    language_model: ModelRef | None = Field(
        None, description="the character LM that rescored and corrected the transcript "
        "(null: Whisper's text as decoded)")

    @model_validator(mode="after")
    def _audio_unless_typed(self) -> Ticket:
        if self.audio is None and self.source != "message":
            raise ValueError(f"a {self.source} ticket needs its audio reference")
        return self

    @field_validator("created_at", "submitted_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.astimezone(timezone.utc) if v is not None else None

    # --- shown and stored forms -------------------------------------------------

    def public_dict(self) -> dict[str, Any]:
        """JSON-ready dict without the full phone: for anything shown or logged."""
        return self.model_dump(mode="json", context=PUBLIC_CONTEXT)

    def public_json(self) -> str:
        return self.model_dump_json(context=PUBLIC_CONTEXT)

    def storage_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the full phone: for the store and entitled sinks."""
        return self.model_dump(mode="json")

    def storage_json(self) -> str:
        return self.model_dump_json()

    # --- Open311 -----------------------------------------------------------------

    def to_open311(self) -> dict[str, Any]:
        """The fields a GeoReport v2 client POSTs for this ticket (no personal field);
        the full Open311 mapping is `pipeline.tickets.exports`."""
        from pipeline.tickets.exports import open311_submission  # the schema stays a leaf

        return open311_submission(self)


def ticket_json_schema() -> dict[str, Any]:
    return Ticket.model_json_schema()


def write_json_schema(path: str | Path | None = None) -> Path:
    """Write the exported JSON Schema (committed; a test checks it is current)."""
    target = Path(path) if path is not None else SCHEMA_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(ticket_json_schema(), ensure_ascii=False, indent=2) + "\n"
    target.write_text(text, encoding="utf-8")
    return target


if __name__ == "__main__":  # python -m pipeline.ticket_schema
    print(write_json_schema())
