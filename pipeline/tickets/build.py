"""Ticket building: a transcript plus what intake knows -> a validated `Ticket`."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from asr.types import Segment, Transcript
from pipeline.ticket_schema import (
    TICKET_ID_PATTERN,
    AudioRef,
    Category,
    ModelRef,
    Review,
    Source,
    Submitter,
    Ticket,
    TicketSegment,
    TicketTranscript,
    Urgency,
)
from pipeline.tickets.classifier import choose_category, load_classifier
from pipeline.tickets.classify import classify_kind
from pipeline.tickets.common import _CLAUSE_END, _MEANINGFUL
from pipeline.tickets.pii import mask_pii, mask_pii_segments
from pipeline.tickets.places import parse_location
from pipeline.tickets.rules import TicketRules, load_rules
from pipeline.tickets.summary import _content_clauses, summarise, unreadable_summary
from pipeline.tickets.urgency import assess_urgency

# --------------------------------------------------------------------------------------
# What intake knows
# --------------------------------------------------------------------------------------


class TicketContext(BaseModel):
    """Everything about a submission that is not in the audio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None only for typed messages (source "message"), which have no audio
    audio_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    source: Source = "voice_note"
    title: str | None = Field(None, max_length=200, description="a typed message's title")
    # the leaf the submitter chose (an Open311 service_code); the safety rules still win
    category: str | None = Field(None, pattern=r"^[a-z][a-z0-9_.]*$")
    phone: str | None = Field(None, repr=False)
    client_ref: str | None = None
    address: str | None = Field(None, description="typed address from the app form")
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    duration_s: float | None = Field(None, ge=0, description="None: the transcript's")
    audio_format: str = "wav"
    codec: str | None = None
    channels: int = Field(1, ge=1, le=8)
    sample_rate: int | None = Field(None, gt=0)
    media_url: str | None = None
    submitted_at: AwareDatetime | None = None
    # stereo hotline recordings: the caller's channel; the other is the call taker
    caller_channel: int | None = Field(None, ge=0)
    # intake's own id, so that a retried job rebuilds the same ticket id
    ticket_id: str | None = Field(None, pattern=TICKET_ID_PATTERN)

    @model_validator(mode="after")
    def _coordinates_pair(self) -> TicketContext:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon come together or not at all")
        return self

    @model_validator(mode="after")
    def _audio_unless_typed(self) -> TicketContext:
        if self.audio_sha256 is None and self.source != "message":
            raise ValueError(f"a {self.source} submission needs audio_sha256")
        return self


# --------------------------------------------------------------------------------------
# The ticket
# --------------------------------------------------------------------------------------


def _unit(value: float | None) -> float | None:
    return None if value is None else round(min(1.0, max(0.0, float(value))), 4)


def _ticket_id(context: TicketContext, now: datetime) -> str:
    if context.ticket_id:
        return context.ticket_id
    when = (context.submitted_at or now).astimezone(timezone.utc)
    if context.submitted_at is not None:
        # the same submission always gets the same id, so a retried job cannot
        # put a second ticket on the queue
        seed = f"{context.audio_sha256 or ''}|{context.client_ref or ''}|{when.isoformat()}"
        tail = hashlib.sha256(seed.encode()).hexdigest()[:8]
    else:
        tail = secrets.token_hex(4)
    return f"T{when:%Y%m%d}-{when:%H%M%S}-{tail}"


def _join(texts: Iterable[str]) -> str:
    out = ""
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if out and not _CLAUSE_END.search(out[-1]):
            out += "，"
        out += text
    return out


def _asr_flags(flags: Iterable[str], rules: TicketRules) -> list[str]:
    spec = rules.rules.review
    out = []
    for flag in flags:
        code = re.sub(r"[^a-z0-9_]+", "_", flag.strip().lower()).strip("_")
        if not code:
            continue
        if code not in spec.passthrough_asr_flags and not code.startswith(spec.asr_flag_prefix):
            code = spec.asr_flag_prefix + code
        if not code[0].isalpha():
            code = "asr_" + code
        out.append(code)
    return out


def build_ticket(
    transcript: Transcript,
    context: TicketContext,
    rules: TicketRules | None = None,
    *,
    review_confidence_below: float | None = None,
    now: datetime | None = None,
    classifier: str | Literal[False] | None = None,
) -> Ticket:
    """The ticket for one transcribed submission.

    `review_confidence_below` defaults to the setting of the same name;
    `now` (aware) fixes created_at, for tests and replays; `classifier` names the
    category classifier (default: the registry's current one, else MINYIN_CLASSIFIER;
    False: keywords only).
    """
    rules = rules or load_rules()
    if review_confidence_below is None:
        from pipeline.config import get_settings

        review_confidence_below = get_settings().review_confidence_below
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    flags: list[str] = []

    # -- masked transcript -----------------------------------------------------------
    segments: list[Segment] = list(transcript.segments)
    seg_texts = mask_pii_segments([s.text for s in segments], rules)
    full_text = mask_pii(transcript.text or "", rules).strip() or _join(seg_texts)

    caller = context.caller_channel
    if caller is not None:
        mine = [i for i, s in enumerate(segments) if s.channel == caller]
        if not mine and segments:
            flags.append("caller_channel_missing")
            mine = list(range(len(segments)))
        caller_text = _join(seg_texts[i] for i in mine)
        theirs = set(range(len(segments))) - set(mine)
        other_text = _join(seg_texts[i] for i in sorted(theirs))
        if caller_text and not full_text:
            full_text = _join(seg_texts)
    else:
        mine = list(range(len(segments)))
        caller_text, other_text = full_text, ""
    title = mask_pii(context.title, rules).strip() if context.title else ""
    if title and title not in caller_text:
        # a typed message's title is the caller's words too (often the matter itself)
        caller_text = _join([title, caller_text])

    ticket_segments = [
        TicketSegment(
            start=s.start,
            end=max(s.end, s.start),
            text=seg_texts[i],
            channel=s.channel,
            speaker=s.speaker
            or (None if caller is None else ("caller" if s.channel == caller else "agent")),
            confidence=min(1.0, max(0.0, s.confidence)),
            avg_logprob=min(0.0, s.avg_logprob),
            no_speech_prob=min(1.0, max(0.0, s.no_speech_prob)),
            flags=_asr_flags(s.flags, rules),
            variety=getattr(s, "variety", "mandarin"),
            variety_confidence=_unit(getattr(s, "variety_confidence", None)),
            readable=getattr(s, "readable", True),
            dialect_text=getattr(s, "dialect_text", None) or None,
        )
        for i, s in enumerate(segments)
    ]
    readable = bool(getattr(transcript, "readable", True))
    variety = getattr(transcript, "variety", "mandarin") or "mandarin"

    # -- what, how urgent, where -----------------------------------------------------------
    # nothing but "喂，你好，嗯" is as empty as silence
    empty = len(_MEANINGFUL.findall(caller_text)) < rules.rules.review.min_text_chars or not (
        _content_clauses(caller_text, rules)
    )
    urgency_found = assess_urgency(caller_text, rules)
    # a sound-alike that decides urgency, kind or category is for a person to confirm
    by_sound = bool(urgency_found.by_sound)
    if other_text:
        # the call taker's words never make a ticket urgent, but a hazard they named
        # ("是不是闻到煤气味?" - "对") must reach a person
        heard = assess_urgency(other_text, rules)
        for reason in heard.reasons + heard.possible:
            if reason not in urgency_found.reasons and reason not in urgency_found.possible:
                urgency_found.possible.append(reason)
        by_sound |= bool(heard.by_sound)

    kind, kind_score = classify_kind(caller_text, rules)
    by_sound |= kind != classify_kind(caller_text, rules, homophones=False)[0]
    if kind_score == 0 and urgency_found.kind:
        kind = urgency_found.kind
    # the trained classifier and the keyword score together (classifier.choose_category)
    model = load_classifier(classifier) if classifier is not False else None
    model_probs = model.predict(caller_text) if model is not None and caller_text else None
    choice = choose_category(caller_text, rules, model, model_probs=model_probs)
    category, categorised, confidence = choice.category, choice.categorised, choice.confidence
    unsure = choice.unsure
    if context.category:  # the submitter chose the leaf (an Open311 service code)
        category, categorised, confidence, unsure = (
            rules.category(context.category), True, 1.0, False)
    if urgency_found.category and urgency_found.category != category.code:
        # a gas leak reported as "物业不管" goes to whoever handles gas leaks: the
        # safety rules override the classifier
        category, categorised, confidence, unsure = (
            rules.category(urgency_found.category), True, 1.0, False)
    elif urgency_found.rules and not categorised and rules.taxonomy.urgent_fallback:
        category, categorised, confidence, unsure = (
            rules.category(rules.taxonomy.urgent_fallback), True, 1.0, False)
    elif not urgency_found.category and not context.category:
        written = choose_category(caller_text, rules, model, homophones=False,
                                  model_probs=model_probs)
        by_sound |= (category.code, categorised) != (written.category.code, written.categorised)
        # the keywords alone: a sound-alike that backs the chosen leaf is for a person
        # to confirm even where the model would have chosen it anyway
        heard = choose_category(caller_text, rules, None)
        read = choose_category(caller_text, rules, None, homophones=False)
        if heard.category.code == category.code and heard.category.code != read.category.code:
            by_sound = True
    elif urgency_found.category == category.code:
        unsure = False  # a safety rule agrees
    location, location_flags, spoken = parse_location(caller_text, context, rules)

    urgent = bool(urgency_found.rules)
    urgency = Urgency(
        level="urgent" if urgent else "normal",
        reasons=urgency_found.reasons,
        rules=urgency_found.rules,
        possible=urgency_found.possible,
    )

    summary = unreadable_summary(variety) if not readable else summarise(
        "" if empty else caller_text,
        rules,
        category=category if categorised else None,
        kind=kind,
        location=location,
        place=spoken,
        urgent=urgent,
        source=context.source,
        key_spans=urgency_found.spans,
        title=title or None,
    )

    # -- review flags ------------------------------------------------------------------------
    if not readable:
        # first: the machine text is not what was said; someone who speaks it must listen
        flags.append(f"dialect:{variety}")
    if urgent:
        flags.append("urgent")
    if urgency_found.possible:
        flags.append("possible_urgent")
    if by_sound:
        flags.append("homophone_match")
    doubtful = [i for i in mine if segments[i].confidence < review_confidence_below]
    if doubtful:
        flags.append("low_confidence")
    informational = set(rules.rules.review.segment_only_asr_flags)
    for i in mine:
        flags.extend(_asr_flags([f for f in segments[i].flags if f not in informational], rules))
    flags.extend(_asr_flags(transcript.flags, rules))
    language = (transcript.language or "").strip() or "und"
    if language.split("-")[0] not in rules.rules.review.expected_languages:
        flags.append("wrong_language")
    if empty:
        flags.append("empty_transcript")
    if location.is_empty:
        flags.append("no_location")
    flags.extend(location_flags)
    if not categorised:
        flags.append("uncategorised")
    elif unsure:
        flags.append("category_unsure")
    if model is None and classifier is not False:
        flags.append("classifier_missing")
    try:
        submitter = Submitter(phone=context.phone, client_ref=context.client_ref)
    except ValidationError:
        # a garbled caller id must not lose the complaint; a person fixes the contact
        submitter = Submitter(client_ref=context.client_ref)
        flags.append("invalid_phone")
    flags = list(dict.fromkeys(flags))

    return Ticket(
        id=_ticket_id(context, now),
        created_at=now,
        submitted_at=context.submitted_at,
        source=context.source,
        submitter=submitter,
        title=title or None,
        audio=None
        if context.audio_sha256 is None
        else AudioRef(
            sha256=context.audio_sha256,
            duration_s=context.duration_s
            if context.duration_s is not None
            else max(0.0, transcript.duration),
            format=context.audio_format,
            codec=context.codec,
            channels=context.channels,
            sample_rate=context.sample_rate,
            media_url=context.media_url,
        ),
        transcript=TicketTranscript(
            text=full_text, segments=ticket_segments, variety=variety,
            variety_confidence=_unit(getattr(transcript, "variety_confidence", None)),
            readable=readable,
            variety_confirmed_by=getattr(transcript, "variety_confirmed_by", None),
            detector=ModelRef(name=transcript.detector, version=transcript.detector_version)
            if getattr(transcript, "detector", "") else None),
        language=language,
        dialect=transcript.dialect or "mandarin",
        kind=kind,
        category=Category(code=category.code, label=category.label, path=list(category.path),
                          department=category.department,
                          time_limit_days=category.time_limit_days,
                          confidence=round(confidence, 4)),
        classifier=ModelRef(name=model.name, version=model.version) if model else None,
        location=location,
        urgency=urgency,
        summary=summary,
        review=Review(needed=bool(flags), flags=flags),
        model=ModelRef(name=transcript.model or "unknown", version=transcript.model_version or ""),
        language_model=ModelRef(name=transcript.lm, version=transcript.lm_version)
        if transcript.lm
        else None,
    )
