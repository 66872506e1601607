"""Staff corrections to a ticket: what a reviewer may change, and what changed.

`apply_edit` is pure: it takes the stored ticket and a `TicketEdit` (the body of the
API's save and approve calls) and returns the revised ticket plus one `Change` per
segment text or field that differs. `Store.revise_ticket` stores both in one
transaction. Every change is kept: segment corrections are the training data for the
next dialect model.

Rules a reviewer's text follows, the same as the machine's:
- text is NFC-normalised, control characters go, and phone or ID-card numbers are
  masked (`mask_pii`), so every text field of a ticket stays safe to show;
- the transcript's text is the segments' texts joined, as the pipeline makes it;
- a category is a code of the taxonomy; its label and department come from there;
- marking a ticket urgent records the reviewer as the reason; marking it normal moves
  the machine's reasons to `urgency.possible`, where a later reader still sees them;
- dialect speech the model could not read: a dialect reviewer writes, per segment, what
  was said in the dialect's own characters (`dialect_text`) and its meaning in standard
  written Mandarin (`text`), and may confirm or correct the variety. A segment a person
  wrote is readable; once every segment of the caller's speech is, the ticket's category,
  kind, urgency, place and summary are built again from the Mandarin (fields the same
  edit sets stay as the reviewer set them).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.fields import DB_INT_MAX
from pipeline.store import Change
from pipeline.ticket_schema import Category, Kind, Ticket, Urgency, UrgencyLevel, Variety
from pipeline.tickets import TicketRules, load_rules, mask_pii

MAX_SEGMENT_CHARS = 1000
MAX_SUMMARY_CHARS = 80
MAX_LOCATION_CHARS = 500
CORRECTED_FLAG = "corrected"
DISCARDED_FLAG = "discarded"
STAFF_URGENT_RULE = "staff"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff]")


class ReviewError(ValueError):
    """An edit the ticket cannot take; `code` is the API's error code."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


class _Edit(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SegmentEdit(_Edit):
    index: int = Field(ge=0, le=DB_INT_MAX,
                       description="the segment's position in transcript.segments")
    text: str | None = Field(None, description="the corrected text (not empty)")
    discard: bool = Field(False, description="true: not speech (noise, a hallucination); "
                                             "its text becomes empty")
    dialect_text: str | None = Field(
        None, description="what was said in the dialect's own characters (then `text` is "
        "its meaning in standard written Mandarin); empty removes it")


class LocationEdit(_Edit):
    text: str | None = Field(None, description="the place as said, corrected")
    province: str | None = None
    city: str | None = None
    district: str | None = None
    street: str | None = Field(None, description="town, township or subdistrict")


class FieldEdits(_Edit):
    kind: Kind | None = None
    category: str | None = Field(None, description="a category code of GET /v1/taxonomy")
    urgency: UrgencyLevel | None = None
    location: LocationEdit | None = None
    summary: str | None = Field(None, description=f"at most {MAX_SUMMARY_CHARS} characters")
    variety: Variety | None = Field(None, description="the variety the reviewer heard "
                                    "(confirms or corrects the detector's)")


class TicketEdit(_Edit):
    revision: int = Field(ge=1, le=DB_INT_MAX,
                          description="the revision the reviewer started from; another "
                                      "revision answers 409")
    segments: list[SegmentEdit] = Field(default_factory=list, max_length=2000)
    fields: FieldEdits = Field(default_factory=FieldEdits)
    comment: str | None = Field(None, max_length=500, description="a note for the history")


def clean_text(text: str) -> str:
    """NFC, no control or zero-width characters, single spaces, trimmed."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def _text(value: str, field: str, limit: int, rules: TicketRules,
          *, allow_empty: bool = False) -> str:
    cleaned = clean_text(value)
    if not cleaned and not allow_empty:
        raise ReviewError("empty_text", f"{field} is empty; give the corrected text"
                          + (" or discard the segment" if field.startswith("segment") else ""),
                          field)
    if len(cleaned) > limit:
        raise ReviewError("text_too_long",
                          f"{field} has {len(cleaned)} characters; at most {limit}", field)
    return mask_pii(cleaned, rules) if cleaned else cleaned


def apply_edit(ticket: Ticket, edit: TicketEdit, *, author: str, approve: bool = False,
               now: datetime, rules: TicketRules | None = None
               ) -> tuple[Ticket, list[Change]]:
    """(revised ticket, changes). Raises `ReviewError` for an edit it cannot take."""
    rules = rules or load_rules()
    doc = ticket.storage_dict()
    changes: list[Change] = []
    segments: list[dict[str, Any]] = doc["transcript"]["segments"]

    seen: set[int] = set()
    for seg_edit in edit.segments:
        i = seg_edit.index
        if i >= len(segments):
            raise ReviewError("unknown_segment", f"the ticket has {len(segments)} segments; "
                              f"there is no segment {i}", f"segments.{i}")
        if i in seen:
            raise ReviewError("invalid_request", f"segment {i} is edited twice",
                              f"segments.{i}")
        seen.add(i)
        seg = segments[i]
        if seg_edit.dialect_text is not None and not seg_edit.discard:
            said = _text(seg_edit.dialect_text, f"segment {i} dialect text",
                         MAX_SEGMENT_CHARS, rules, allow_empty=True) or None
            if said != seg.get("dialect_text"):
                changes.append(Change("field", f"segments.{i}.dialect_text",
                                      seg.get("dialect_text"), said))
                seg["dialect_text"] = said
                seg["readable"] = True  # a person wrote what was said
        if seg_edit.discard:
            new_text = ""
        elif seg_edit.text is None:
            if seg_edit.dialect_text is not None:
                continue  # the dialect text alone; the Mandarin stays
            raise ReviewError("empty_text", f"segment {i}: give text or discard",
                              f"segments.{i}")
        else:
            new_text = _text(seg_edit.text, f"segment {i}", MAX_SEGMENT_CHARS, rules)
        if new_text == seg["text"]:
            continue
        seg["readable"] = True  # a person's text (or none: discarded) is relied on
        changes.append(Change("segment", str(i), seg["text"], new_text))
        seg["text"] = new_text
        flags = [f for f in seg["flags"] if f not in (CORRECTED_FLAG, DISCARDED_FLAG)]
        seg["flags"] = [*flags, DISCARDED_FLAG if seg_edit.discard else CORRECTED_FLAG]
    if any(c.target_kind == "segment" for c in changes):
        doc["transcript"]["text"] = "".join(s["text"] for s in segments)
    transcript = doc["transcript"]
    if edit.fields.variety is not None:
        if edit.fields.variety != transcript.get("variety", "mandarin"):
            changes.append(Change("field", "transcript.variety",
                                  transcript.get("variety", "mandarin"), edit.fields.variety))
        if edit.fields.variety != transcript.get("variety") or not transcript.get(
                "variety_confirmed_by"):
            transcript["variety"], transcript["variety_confirmed_by"] = (
                edit.fields.variety, author)
    was_readable = transcript.get("readable", True)
    caller = [s for s in segments if s.get("speaker") in (None, "caller")] or segments
    transcript["readable"] = all(s.get("readable", True) for s in caller)
    if not was_readable and transcript["readable"]:
        _rebuild_from_mandarin(doc, edit.fields, rules)

    fields = edit.fields

    def set_field(path: str, container: dict[str, Any], key: str, value: Any) -> None:
        if container.get(key) != value:
            changes.append(Change("field", path, container.get(key), value))
            container[key] = value

    if fields.kind is not None:
        set_field("kind", doc, "kind", fields.kind)
    if fields.category is not None:
        code = fields.category.strip()
        try:
            cat = rules.category(code)
        except KeyError:
            raise ReviewError("unknown_category", f"no category {code!r} in the taxonomy "
                              "(GET /v1/taxonomy lists them)", "fields.category") from None
        if doc["category"]["code"] != cat.code:
            changes.append(Change("field", "category", doc["category"]["code"], cat.code))
            # a person chose it: no classifier confidence
            doc["category"] = Category(code=cat.code, label=cat.label, path=list(cat.path),
                                       department=cat.department,
                                       time_limit_days=cat.time_limit_days,
                                       ).model_dump(mode="json")
    if fields.urgency is not None and fields.urgency != doc["urgency"]["level"]:
        old = Urgency.model_validate(doc["urgency"])
        if fields.urgency == "urgent":
            new = Urgency(level="urgent", reasons=[*old.reasons, f"复核人员判定紧急（{author}）"],
                          rules=[*old.rules, STAFF_URGENT_RULE], possible=old.possible)
        else:
            new = Urgency(level="normal", reasons=[], rules=[],
                          possible=list(dict.fromkeys([*old.reasons, *old.possible])))
        changes.append(Change("field", "urgency", old.level, new.level))
        doc["urgency"] = new.model_dump(mode="json")
    if fields.location is not None:
        given = fields.location.model_dump(exclude_unset=True)
        for key, value in given.items():
            cleaned = (_text(value, f"location.{key}", MAX_LOCATION_CHARS, rules,
                             allow_empty=True) if value is not None else "")
            set_field(f"location.{key}", doc["location"], key, cleaned or None)
    if fields.summary is not None:
        set_field("summary", doc, "summary",
                  _text(fields.summary, "summary", MAX_SUMMARY_CHARS, rules))

    review = doc["review"]
    if approve:
        review["needed"] = False
        review["reviewed_by"], review["reviewed_at"] = author, now.isoformat()
    else:
        review["reviewed_by"] = review["reviewed_at"] = None
    return Ticket.model_validate(doc), changes


def _rebuild_from_mandarin(doc: dict[str, Any], fields: FieldEdits, rules: TicketRules) -> None:
    """The ticket built again from the reviewer's Mandarin: what the builder derives from
    the text replaces what it derived from the unreadable machine text."""
    from asr.types import Segment as AsrSegment
    from asr.types import Transcript
    from pipeline.tickets import TicketContext, build_ticket

    segs = [AsrSegment(start=s["start"], end=s["end"], text=s["text"],
                       channel=s.get("channel", 0), speaker=s.get("speaker"),
                       variety=s.get("variety", "mandarin"), readable=True)
            for s in doc["transcript"]["segments"]]
    transcript = Transcript(text="".join(s.text for s in segs), segments=segs,
                            language=doc.get("language", "zh"), language_probability=1.0,
                            duration=float((doc.get("audio") or {}).get("duration_s") or 0),
                            dialect=doc.get("dialect", "mandarin"))
    audio = doc.get("audio") or {}
    caller = next((s.get("channel", 0) for s in doc["transcript"]["segments"]
                   if s.get("speaker") == "caller"), None)
    old = doc.get("location") or {}
    context = TicketContext(audio_sha256=audio.get("sha256"), source=doc["source"],
                            address=old.get("submitted_address"), lat=old.get("lat"),
                            lon=old.get("lon"), caller_channel=caller)
    built = build_ticket(transcript, context, rules=rules).storage_dict()
    for key in ("kind", "category", "urgency", "summary", "classifier"):
        if getattr(fields, key, None) is None:
            doc[key] = built[key]
    if fields.location is None:
        doc["location"] = built["location"]
    review = doc["review"]
    review["flags"] = [f for f in review["flags"] if not f.startswith("dialect:")]
    review["flags"] += [f for f in built["review"]["flags"]
                        if f not in review["flags"] and f in (
                            "urgent", "possible_urgent", "no_location", "category_unsure",
                            "uncategorised")]


def char_diff(before: Any, after: Any) -> list[tuple[str, str]]:
    """Character-level differences as (op, text) runs, op in equal/delete/insert:
    what the history view highlights. Texts that share little (a rewritten summary)
    are one delete and one insert: scattered common characters only confuse a reader."""
    a = "" if before is None else str(before)
    b = "" if after is None else str(after)
    runs: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if a and b and matcher.ratio() < 0.5:
        return [("delete", a), ("insert", b)]
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            runs.append(("equal", a[i1:i2]))
            continue
        if op in ("delete", "replace"):
            runs.append(("delete", a[i1:i2]))
        if op in ("insert", "replace"):
            runs.append(("insert", b[j1:j2]))
    return runs
