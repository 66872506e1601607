"""Ticket extraction: a transcript plus what intake knows -> a validated `Ticket`.

    ticket = build_ticket(transcript, TicketContext(audio_sha256=..., phone=...))

All judgement lives in data files under `pipeline/data/` (taxonomy.yaml,
ticket_rules.yaml, places.yaml), loaded once by `load_rules()`. The extraction is
deterministic keyword/regex work: it is meant to route and to flag, and a person
reviews whatever it is unsure of. Order of work:

1. mask phone and ID-card numbers in every text (spoken digits included),
2. pick the caller's words (stereo hotline calls: `caller_channel`),
3. kind, category, urgency (negation-aware), location, summary on those words;
   keywords also match their sound-alikes (没气 for 煤气: Whisper writes homophones),
   worked out once per text with `asr.phonetic` (`SoundIndex`, `sound_hits`),
4. review flags: low confidence, ASR doubts, urgent, homophone_match, no location,
   uncategorised, ...
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from asr.phonetic import Mergers, fold, syllables
from asr.types import Segment, Transcript
from pipeline.ticket_schema import (
    TICKET_ID_PATTERN,
    AudioRef,
    Category,
    Kind,
    Location,
    ModelRef,
    Review,
    Source,
    Submitter,
    Ticket,
    TicketSegment,
    TicketTranscript,
    Urgency,
    mask_number,
)

DATA_DIR = Path(__file__).resolve().parent / "data"

# Spoken and full-width digits as they reach us from ASR: 幺 is how 1 is read out in
# phone numbers, 洞 is radio-style 0, 叉 is the X of an ID card.
_SPOKEN_DIGITS = {
    **{c: str(i) for i, c in enumerate("0123456789")},
    **{c: str(i) for i, c in enumerate("０１２３４５６７８９")},
    **{c: str(i) for i, c in enumerate("零一二三四五六七八九")},
    "〇": "0",
    "洞": "0",
    "幺": "1",
    "两": "2",
}
_DIGITS = "".join(_SPOKEN_DIGITS)
_TO_ARABIC = str.maketrans({**_SPOKEN_DIGITS, "叉": "X", "x": "X"})
_D = "[" + _DIGITS + "]"
_SEP = r"[ \-－—.·,，、]"
_NUMBER_RUN = re.compile(rf"\+?{_D}(?:{_SEP}{{0,2}}{_D})*(?:{_SEP}{{0,2}}[Xx叉])?")
_SENTENCE_END = re.compile(r"[。！？!?；;\n]+")
_CLAUSE_END = re.compile(r"[，,。！？!?；;：:\n]+|\s{2,}")
_MEANINGFUL = re.compile(r"[\u4e00-\u9fff0-9A-Za-z]")
_NAME_CHAR = r"[\u4e00-\u9fff0-9A-Za-z０-９]"
_BLANK = "\x00"


# --------------------------------------------------------------------------------------
# What intake knows
# --------------------------------------------------------------------------------------


class TicketContext(BaseModel):
    """Everything about a submission that is not in the audio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    audio_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: Source = "voice_note"
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


# --------------------------------------------------------------------------------------
# Rule files (validated shapes) and their compiled form
# --------------------------------------------------------------------------------------


class _RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CategoryRule(_RuleFile):
    code: str = Field(pattern=r"^[a-z][a-z0-9_.]*$")
    group: str
    label: str
    department: str
    keywords: dict[str, float] = Field(default_factory=dict)


class TaxonomyFile(_RuleFile):
    min_score: float = 2
    fallback: str
    urgent_fallback: str | None = None
    categories: list[CategoryRule]

    @model_validator(mode="after")
    def _consistent(self) -> TaxonomyFile:
        codes = [c.code for c in self.categories]
        if len(set(codes)) != len(codes):
            raise ValueError("category codes must be unique")
        for code in (self.fallback, self.urgent_fallback):
            if code is not None and code not in codes:
                raise ValueError(f"fallback category {code!r} is not defined")
        return self


class KindRule(_RuleFile):
    kind: Kind
    terms: dict[str, float]


class KindRules(_RuleFile):
    default: Kind = "投诉"
    min_score: float = 2
    rules: list[KindRule]


class NegationRule(_RuleFile):
    cue: str
    question_forms: list[str] = Field(default_factory=list)
    lookback: int = Field(6, ge=1)


class UrgencyRule(_RuleFile):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    reason: str
    kind: Kind | None = None
    category: str | None = None
    any_of: list[str] = Field(default_factory=list, alias="any")
    all_of: list[list[str]] = Field(default_factory=list, alias="all")
    exclude: list[str] = Field(default_factory=list)
    possible: list[str] = Field(default_factory=list)
    # what a match that needs a sound-alike (没气 heard for 煤气) does: "urgent" for
    # hazards that must never be missed (a person checks the `homophone_match` flag),
    # "possible" (a possible_urgent flag only) or "off"
    homophones: Literal["urgent", "possible", "off"] = "possible"


class UrgencyRules(_RuleFile):
    window: int = Field(16, ge=1)
    negation: NegationRule
    rules: list[UrgencyRule]


class LocationRules(_RuleFile):
    prefer: list[str] = Field(default_factory=list)
    max_pieces: int = 3
    max_chars: int = 40
    name_min: int = 2
    name_max: int = 6
    head_suffixes: list[str]
    tail: str
    standalone_tail: str
    boundary_words: list[str] = Field(default_factory=list)
    boundary_chars: str = ""
    generic: list[str] = Field(default_factory=list)


class PiiPattern(_RuleFile):
    name: str
    regex: str
    keep: tuple[int, int]
    last_resort: bool = False  # tried only after the separator-split groups


class PiiRules(_RuleFile):
    min_digits: int = 7
    patterns: list[PiiPattern]
    contact_context: str
    contact_keep: tuple[int, int] = (0, 2)


class ReviewRules(_RuleFile):
    passthrough_asr_flags: list[str] = Field(default_factory=list)
    # ASR flags that describe a segment but are no reason to review the ticket
    segment_only_asr_flags: list[str] = Field(default_factory=list)
    asr_flag_prefix: str = "asr_"
    expected_languages: list[str] = Field(default_factory=lambda: ["zh"])
    min_text_chars: int = 2


class SummaryRules(_RuleFile):
    max_chars: int = Field(60, ge=10, le=80)
    empty_text: str
    filler_clause: str
    filler_prefix: str
    trailing: str


class HomophoneRules(_RuleFile):
    """Sound-alike matching of keywords (see ticket_rules.yaml, `homophones`).

    Off unless a rule file turns it on: its `ignore` list belongs to its keywords."""

    enabled: bool = False
    min_chars: int = Field(2, ge=2)
    # fuzzy pinyin: initials replaced whole (zh -> z), finals by their ending (ing -> in);
    # see `mergers`
    initials: dict[str, str] = Field(default_factory=dict)
    finals: dict[str, str] = Field(default_factory=dict)
    kind_weight: float = Field(0.75, ge=0, le=1)
    category_weight: float = Field(0.75, ge=0, le=1)
    # a sound-alike that starts with one of these where the term does not (没气 for
    # 煤气) also reads as a negation; it counts only after a presence cue
    negation_chars: str = "没不无未别"
    presence_cue: str = "有|股|闻到"
    presence_lookback: int = Field(8, ge=1)
    # an urgency match made of sound-alikes only makes a rule urgent when one of them
    # has this many characters; shorter ones need a written word beside them
    alone_from: int = Field(3, ge=2)
    # a shared particle is no shared character: 烟了 does not sound like 淹了 for that
    particles: str = ""
    # a sound-alike without a character of the keyword needs equal toneless pinyin and
    # a keyword of `loose_from` characters or more, or one listed in `loose`
    loose_from: int = Field(3, ge=2)
    loose: list[str] = Field(default_factory=list)
    # real words: their characters are never read as part of a sound-alike
    ignore: list[str] = Field(default_factory=list)
    exact_only: list[str] = Field(default_factory=list)  # terms matched as written only

    @property
    def mergers(self) -> Mergers:
        """The fuzzy settings as `asr.phonetic` mergers."""
        return Mergers.of(self.initials, self.finals)


class RulesFile(_RuleFile):
    kinds: KindRules
    urgency: UrgencyRules
    location: LocationRules
    pii: PiiRules
    review: ReviewRules
    summary: SummaryRules
    homophones: HomophoneRules = Field(default_factory=HomophoneRules)


@dataclass(frozen=True)
class Place:
    name: str
    level: int  # 0 province, 1 city, 2 district/county, 3 street/town
    path: tuple[str, ...]  # full names, province first, ending with this one


class Gazetteer:
    """Administrative names -> places; finds them in text and picks the best one."""

    def __init__(self, places: Iterable[tuple[Place, Sequence[str]]]) -> None:
        self.by_name: dict[str, list[Place]] = {}
        for place, aliases in places:
            for name in (place.name, *aliases):
                bucket = self.by_name.setdefault(name, [])
                if place not in bucket:
                    bucket.append(place)
        names = sorted(self.by_name, key=len, reverse=True)  # longest name wins
        self._pattern = re.compile("|".join(map(re.escape, names))) if names else None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Gazetteer:
        found: list[tuple[Place, list[str]]] = []

        def walk(node: Any, parent: tuple[str, ...]) -> None:
            if node is None:
                return
            items: list[tuple[str, Any]]
            if isinstance(node, dict):
                items = list(node.items())
            elif isinstance(node, list):
                items = []
                for item in node:
                    if isinstance(item, dict):
                        items.extend(item.items())
                    else:
                        items.append((item, None))
            else:
                raise ValueError(f"places: unexpected entry {node!r}")
            for key, children in items:
                name, *aliases = [part.strip() for part in str(key).split("|")]
                if len(parent) > 3:
                    raise ValueError(f"places: {name} is deeper than street level")
                place = Place(name=name, level=len(parent), path=(*parent, name))
                found.append((place, aliases))
                walk(children, place.path)

        walk(data.get("provinces", {}), ())
        return cls(found)

    def find(self, text: str) -> list[tuple[int, int, list[Place]]]:
        if not text or self._pattern is None:
            return []
        return [(m.start(), m.end(), self.by_name[m.group()]) for m in self._pattern.finditer(text)]

    @staticmethod
    def resolve(
        hits: Sequence[tuple[int, int, list[Place]]], prefer: Sequence[str] = ()
    ) -> tuple[str, ...] | None:
        """The most specific place the hits agree on, as a path of full names.

        A candidate is supported by every hit naming it or one of its ancestors
        (金华 + 浦江 + 浦阳街道 all support 浦阳街道). Most support wins, then depth,
        then the deployment's preferred region. Candidates still tied (江北区 alone:
        宁波 or 重庆) give only what they share.
        """
        if not hits:
            return None
        scored: list[tuple[tuple[int, int, int], tuple[str, ...]]] = []
        for _, _, places in hits:
            for place in places:
                support = sum(
                    1
                    for _, _, others in hits
                    if any(place.path[: len(o.path)] == o.path for o in others)
                )
                preferred = int(any(p in place.path for p in prefer))
                scored.append(((support, place.level, preferred), place.path))
        best = max(score for score, _ in scored)
        tied = list(dict.fromkeys(path for score, path in scored if score == best))
        common: list[str] = []
        for level_names in zip(*tied, strict=False):
            if len(set(level_names)) != 1:
                break
            common.append(level_names[0])
        return tuple(common) or None


# --------------------------------------------------------------------------------------
# Sound-alike matching: Whisper writes 没气 for 煤气, 紧盖 for 井盖, 以保 for 医保
# --------------------------------------------------------------------------------------

_HAN_ONLY = re.compile(r"[\u4e00-\u9fff]+")
_CLAUSE_CHARS = re.compile(r"[，,。！？!?；;：:、\s]")


@dataclass(frozen=True)
class SoundHit:
    """A stretch of text that sounds like a keyword but is written differently."""

    start: int
    end: int
    heard: str  # what the text says there (没气)
    # it also reads as a negation (没 + 气味) and no presence cue comes before it:
    # good for a possible_urgent flag, not for a verdict
    weak: bool


class SoundIndex:
    """Keywords by the sound of their pinyin; finds their sound-alikes in a text.

    A keyword of at least `min_chars` Han characters (regular expressions and single
    characters stay exact) matches a same-length stretch of Han text when

    * their fuzzy pinyin is equal (zh/z, in/ing, ... as configured; toneless pinyin
      is the strictest case) and at least one character other than a particle (了)
      is the same in the same place (没气 for 煤气, 紧盖 for 井盖, 电频车 for 电瓶车), or
    * their toneless pinyin is equal and the keyword has `loose_from` characters or
      more (拉基统 for 垃圾桶) or is listed in `loose` (以保/衣宝 for 医保),

    unless the stretch shares a character with a keyword or an `ignore` word written
    out in full (烟了 in 冒烟了 is not 淹了, 然气管 in 天然气管道 not 燃气管, 不可 in
    不可以 not 补课).
    """

    def __init__(self, terms: Iterable[str], spec: HomophoneRules) -> None:
        self.spec = spec
        self.mergers = spec.mergers
        self._loose = frozenset(spec.loose)
        self._presence = re.compile(spec.presence_cue) if spec.presence_cue else None
        self._by_key: dict[tuple[str, ...], list[tuple[str, tuple[str, ...]]]] = {}
        skip = set(spec.exact_only)
        self.terms: tuple[str, ...] = ()
        self.lengths: tuple[int, ...] = ()
        self._written: tuple[str, ...] = ()
        if not spec.enabled:
            return
        found = []
        for term in dict.fromkeys(terms):
            if term in skip or len(term) < spec.min_chars or not _HAN_ONLY.fullmatch(term):
                continue
            syl = tuple(syllables(term))
            if all(syl):
                self._by_key.setdefault(self.key(syl), []).append((term, syl))
                found.append(term)
        self.terms = tuple(found)
        self.lengths = tuple(sorted({len(t) for t in found}))
        self._written = (*found, *(w for w in spec.ignore if w not in found))

    def fuzzy(self, syl: str) -> str:
        return fold(syl, self.mergers)

    def key(self, syllables: Sequence[str]) -> tuple[str, ...]:
        return tuple(self.fuzzy(s) for s in syllables)

    def find(self, text: str) -> dict[str, list[SoundHit]]:
        """Keyword -> its sound-alikes in `text` (exact occurrences are not in here)."""
        hits: dict[str, list[SoundHit]] = {}
        if not self._by_key or not text:
            return hits
        syl = syllables(text)
        keys = [self.fuzzy(s) if s else "" for s in syl]
        # 1 where a keyword or an `ignore` word is written out in full
        written = bytearray(len(text))
        for term in self._written:
            at = text.find(term)
            while at >= 0:
                written[at : at + len(term)] = b"\x01" * len(term)
                at = text.find(term, at + 1)
        negation = self.spec.negation_chars
        particles = self.spec.particles
        for length in self.lengths:
            for i in range(len(text) - length + 1):
                candidates = self._by_key.get(tuple(keys[i : i + length]))
                if not candidates:
                    continue
                if any(written[i : i + length]):
                    continue  # a character of a written word belongs to that word
                heard = text[i : i + length]
                for term, term_syl in candidates:
                    if heard == term:
                        continue
                    shared = any(
                        a == b and a not in particles for a, b in zip(heard, term, strict=True)
                    )
                    if not shared and (
                        tuple(syl[i : i + length]) != term_syl
                        or (length < self.spec.loose_from and term not in self._loose)
                    ):
                        continue
                    weak = False
                    if heard[0] in negation and term[0] != heard[0]:
                        before = text[max(0, i - self.spec.presence_lookback) : i]
                        before = _CLAUSE_CHARS.split(before)[-1]
                        weak = not (self._presence and self._presence.search(before))
                    hits.setdefault(term, []).append(SoundHit(i, i + length, heard, weak))
        return hits


@dataclass(frozen=True)
class _CompiledUrgencyRule:
    spec: UrgencyRule
    any_of: tuple[re.Pattern[str], ...]
    all_of: tuple[tuple[re.Pattern[str], ...], ...]
    exclude: tuple[re.Pattern[str], ...]
    possible: tuple[re.Pattern[str], ...]


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class TicketRules:
    """Validated, compiled rules. Build with `load_rules()`."""

    taxonomy: TaxonomyFile
    rules: RulesFile
    gazetteer: Gazetteer
    kind_terms: tuple[tuple[Kind, tuple[tuple[re.Pattern[str], float], ...]], ...]
    urgency_rules: tuple[_CompiledUrgencyRule, ...]
    negation_cue: re.Pattern[str]
    pii_patterns: tuple[tuple[PiiPattern, re.Pattern[str]], ...]
    contact_context: re.Pattern[str]
    head_piece: re.Pattern[str]
    tail_piece: re.Pattern[str]
    standalone_tail: re.Pattern[str]
    boundary_words: re.Pattern[str] | None
    filler_clause: re.Pattern[str]
    filler_prefix: re.Pattern[str]
    trailing: re.Pattern[str]
    sounds: SoundIndex

    @property
    def categories(self) -> list[CategoryRule]:
        return self.taxonomy.categories

    def category(self, code: str) -> CategoryRule:
        for cat in self.taxonomy.categories:
            if cat.code == code:
                return cat
        raise KeyError(code)

    @classmethod
    def from_dir(cls, path: Path) -> TicketRules:
        def read(name: str) -> dict[str, Any]:
            with (path / name).open(encoding="utf-8") as fh:
                return yaml.safe_load(fh) or {}

        taxonomy = TaxonomyFile.model_validate(read("taxonomy.yaml"))
        rules = RulesFile.model_validate(read("ticket_rules.yaml"))
        gazetteer = Gazetteer.from_mapping(read("places.yaml"))
        return cls.compile(taxonomy, rules, gazetteer)

    @classmethod
    def compile(cls, taxonomy: TaxonomyFile, rules: RulesFile, gazetteer: Gazetteer) -> TicketRules:
        def rx(terms: Iterable[str]) -> tuple[re.Pattern[str], ...]:
            return tuple(re.compile(t) for t in terms)

        loc = rules.location
        suffixes = "|".join(map(re.escape, sorted(loc.head_suffixes, key=len, reverse=True)))
        words = sorted(loc.boundary_words, key=len, reverse=True)
        return cls(
            taxonomy=taxonomy,
            rules=rules,
            gazetteer=gazetteer,
            kind_terms=tuple(
                (k.kind, tuple((re.compile(t), w) for t, w in k.terms.items()))
                for k in rules.kinds.rules
            ),
            urgency_rules=tuple(
                _CompiledUrgencyRule(
                    spec=r,
                    any_of=rx(r.any_of),
                    all_of=tuple(rx(group) for group in r.all_of),
                    exclude=rx(r.exclude),
                    possible=rx(r.possible),
                )
                for r in rules.urgency.rules
            ),
            negation_cue=re.compile(rules.urgency.negation.cue),
            pii_patterns=tuple((p, re.compile(p.regex)) for p in rules.pii.patterns),
            contact_context=re.compile(rules.pii.contact_context),
            head_piece=re.compile(rf"{_NAME_CHAR}{{{loc.name_min},{loc.name_max}}}?(?:{suffixes})"),
            tail_piece=re.compile(loc.tail),
            standalone_tail=re.compile(loc.standalone_tail),
            boundary_words=re.compile("|".join(map(re.escape, words))) if words else None,
            filler_clause=re.compile(rules.summary.filler_clause),
            filler_prefix=re.compile(rules.summary.filler_prefix),
            trailing=re.compile(rules.summary.trailing),
            sounds=SoundIndex(
                itertools.chain(
                    (t for k in rules.kinds.rules for t in k.terms),
                    (w for c in taxonomy.categories for w in c.keywords),
                    *(
                        itertools.chain(r.any_of, *r.all_of)
                        for r in rules.urgency.rules
                        if r.homophones != "off"
                    ),
                ),
                rules.homophones,
            ),
        )


@lru_cache(maxsize=8)
def _load_rules_cached(path: str) -> TicketRules:
    return TicketRules.from_dir(Path(path))


def load_rules(path: str | Path | None = None) -> TicketRules:
    """Rules from a directory holding taxonomy.yaml, ticket_rules.yaml and places.yaml
    (default: the package's own `pipeline/data`). Cached per directory."""
    return _load_rules_cached(str(Path(path).resolve() if path else DATA_DIR))


@lru_cache(maxsize=16)
def sound_hits(text: str, rules: TicketRules) -> dict[str, list[SoundHit]]:
    """Sound-alikes of every keyword in `text`; worked out once per text and rules
    (kind, category, urgency and summary all ask for the same caller's words)."""
    return rules.sounds.find(text)


# --------------------------------------------------------------------------------------
# Personal data
# --------------------------------------------------------------------------------------


def _classify_number(
    digits: str, rules: TicketRules, *, last_resort: bool = False
) -> tuple[str, tuple[int, int]] | None:
    if len(digits) < rules.rules.pii.min_digits:
        return None
    for spec, pattern in rules.pii_patterns:
        if spec.last_resort != last_resort:
            continue
        m = pattern.match(digits)
        if m:
            return m.group(1) if m.groups() else m.group(), spec.keep
    return None


def _pii_spans(text: str, rules: TicketRules) -> list[tuple[int, int, str]]:
    """(start, end, replacement) for every phone/ID number in `text`."""
    spans: list[tuple[int, int, str]] = []
    for run in _NUMBER_RUN.finditer(text):
        raw = run.group()
        digits = re.sub(r"[^0-9X]", "", raw.translate(_TO_ARABIC))
        if len(digits) < 5:
            continue
        hit = _classify_number(digits, rules)
        if hit:
            spans.append((run.start(), run.end(), mask_number(hit[0], *hit[1])))
            continue
        # a run may join a number to its neighbours ("13912345678，3栋"): try windows
        # of separator-split groups, longest first
        groups = [
            (run.start() + g.start(), run.start() + g.end())
            for g in re.finditer(rf"{_D}+|[Xx叉]", raw)
        ]
        found: list[tuple[int, int, str]] = []
        i = 0
        while i < len(groups):
            for j in range(len(groups) - 1, i - 1, -1):
                if i == 0 and j == len(groups) - 1:
                    continue  # the whole run, already tried
                sub = "".join(text[a:b] for a, b in groups[i : j + 1]).translate(_TO_ARABIC)
                hit = _classify_number(sub, rules)
                if hit:
                    found.append((groups[i][0], groups[j][1], mask_number(hit[0], *hit[1])))
                    i = j
                    break
            i += 1
        if found:
            spans.extend(found)
            continue
        hit = _classify_number(digits, rules, last_resort=True)
        if hit:
            spans.append((run.start(), run.end(), mask_number(hit[0], *hit[1])))
        elif rules.contact_context.search(text[max(0, run.start() - 12) : run.start()]):
            # a local number without area code, said right after 电话/手机/号码
            keep = rules.rules.pii.contact_keep
            spans.append((run.start(), run.end(), mask_number(digits, *keep)))
    return spans


def _apply_spans(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    for start, end, rep in sorted(spans, reverse=True):
        text = text[:start] + rep + text[end:]
    return text


def mask_pii(text: str, rules: TicketRules | None = None) -> str:
    """Mask mobile/landline/ID-card/bank numbers, also when spoken as Chinese digits.

    '我电话一三九一二三四五六七八' -> '我电话139****5678'; an ID card keeps its region
    code and last four: '330726********1234'. Numbers that are not personal (dates,
    house numbers, amounts) are left alone.
    """
    if not text:
        return text
    return _apply_spans(text, _pii_spans(text, rules or load_rules()))


def mask_pii_segments(texts: Sequence[str], rules: TicketRules | None = None) -> list[str]:
    """Mask a list of consecutive segment texts, also numbers split across segments."""
    rules = rules or load_rules()
    joined = "".join(texts)
    spans = _pii_spans(joined, rules)
    out: list[str] = []
    offset = 0
    for text in texts:
        a, b = offset, offset + len(text)
        local: list[tuple[int, int, str]] = []
        for start, end, rep in spans:
            if start >= a and end <= b:
                local.append((start - a, end - a, rep))
            elif start < b and end > a:  # crosses a segment edge: hide every digit here
                s, e = max(start, a) - a, min(end, b) - a
                part = re.sub(rf"{_D}|[Xx叉]", "*", text[s:e])
                local.append((s, e, part))
        out.append(_apply_spans(text, local))
        offset = b
    return out


# --------------------------------------------------------------------------------------
# Kind and category
# --------------------------------------------------------------------------------------


def _sounds_like(
    term: str, hits: dict[str, list[SoundHit]], within: tuple[int, int] | None = None
) -> bool:
    """Whether a sound-alike of `term` that is good for a verdict lies in the text."""
    return any(
        not h.weak and (within is None or (within[0] <= h.start and h.end <= within[1]))
        for h in hits.get(term, ())
    )


def _kind_of(text: str, rules: TicketRules, hits: dict[str, list[SoundHit]]) -> tuple[Kind, float]:
    factor = rules.rules.homophones.kind_weight
    best: tuple[Kind, float] | None = None
    for kind, terms in rules.kind_terms:
        score = 0.0
        for pattern, weight in terms:
            if pattern.search(text):
                score += weight
            elif hits and _sounds_like(pattern.pattern, hits):
                score += factor * weight
        if score >= rules.rules.kinds.min_score and (best is None or score > best[1]):
            best = (kind, score)
    return best if best else (rules.rules.kinds.default, 0.0)


def classify_kind(text: str, rules: TicketRules, *, homophones: bool = True) -> tuple[Kind, float]:
    """(kind, score); the default kind with 0 when no kind scores enough. Sound-alikes
    of the kind words (资讯一下 for 咨询一下) count `kind_weight` of their weight."""
    return _kind_of(text, rules, sound_hits(text, rules) if homophones else {})


def _category_scores(
    text: str, rules: TicketRules, hits: dict[str, list[SoundHit]]
) -> list[tuple[float, CategoryRule]]:
    factor = rules.rules.homophones.category_weight
    scored = []
    for cat in rules.categories:
        score = 0.0
        for word, weight in cat.keywords.items():
            if word in text:
                score += weight
            elif hits and _sounds_like(word, hits):
                score += factor * weight
        if score:
            scored.append((score, cat))
    scored.sort(key=lambda pair: -pair[0])  # stable: ties keep file order
    return scored


def category_scores(
    text: str, rules: TicketRules, *, homophones: bool = True
) -> list[tuple[float, CategoryRule]]:
    """(score, category) best first, for every category with a keyword in `text`."""
    return _category_scores(text, rules, sound_hits(text, rules) if homophones else {})


def classify_category(
    text: str, rules: TicketRules, *, homophones: bool = True
) -> tuple[CategoryRule, bool]:
    """(category, categorised?) - the fallback category when nothing scores enough."""
    scored = category_scores(text, rules, homophones=homophones)
    if scored and scored[0][0] >= rules.taxonomy.min_score:
        return scored[0][1], True
    return rules.category(rules.taxonomy.fallback), False


# --------------------------------------------------------------------------------------
# Urgency
# --------------------------------------------------------------------------------------


@dataclass
class UrgencyFinding:
    rules: list[str]
    reasons: list[str]
    possible: list[str]
    kind: Kind | None
    category: str | None
    spans: list[tuple[int, int]]  # where the firing terms are, for the summary
    # rules that fired, or became possible, only thanks to a sound-alike
    by_sound: list[str] = field(default_factory=list)


def _sentences(text: str) -> list[tuple[int, str]]:
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append((start, text[start : m.start()]))
        start = m.end()
    out.append((start, text[start:]))
    return [(s, t) for s, t in out if t.strip()]


def _is_negated(sentence: str, start: int, rules: TicketRules) -> bool:
    neg = rules.rules.urgency.negation
    before = sentence[max(0, start - neg.lookback) : start]
    if any(before.endswith(q) for q in neg.question_forms):
        return False  # "有没有漏气" is a suspicion, which is what we must not miss
    return bool(rules.negation_cue.search(before))


def _occurrences(
    patterns: Sequence[re.Pattern[str]], sentence: str, excluded: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    found = []
    for pattern in patterns:
        for m in pattern.finditer(sentence):
            if m.end() > m.start() and not any(m.start() < e and m.end() > s for s, e in excluded):
                found.append((m.start(), m.end()))
    return found


Span = tuple[int, int]


def _match_rule(
    rule: _CompiledUrgencyRule,
    sentence: str,
    excluded: Sequence[Span],
    rules: TicketRules,
    extra: Sequence[list[Span]] | None = None,
) -> tuple[bool, bool, list[Span]]:
    """(fired, maybe, firing spans) of one rule in one sentence.

    `extra`: more occurrences (sound-alikes) for the `any` group and each `all` group.

    Negation: an occurrence right after a cue ("没有闻到煤气味") covers the rest of its
    clause, and 味 with it; "天然气管道没有泄漏" negates 泄漏 and the 漏 inside it.
    The next clause is not covered.
    """
    occ = [_occurrences(p, sentence, excluded) for p in (rule.any_of, *rule.all_of)]
    if extra:
        occ = [found + more for found, more in zip(occ, extra, strict=True)]
    scopes = []
    for start, _ in itertools.chain.from_iterable(occ):
        if _is_negated(sentence, start, rules):
            m = _CLAUSE_END.search(sentence, start)
            scopes.append((start, m.start() if m else len(sentence)))

    def live(found: list[Span]) -> list[Span]:
        return [o for o in found if not any(s <= o[0] < e for s, e in scopes)]

    fired = maybe = False
    spans: list[Span] = []
    if live(occ[0]):
        fired = True
        spans.extend(live(occ[0]))
    elif occ[0]:
        maybe = True
    groups = occ[1:]
    if groups and all(groups):
        combo = _within([live(g) for g in groups], rules.rules.urgency.window)
        if combo:
            fired = True
            spans.extend(combo)
        elif _within(groups, rules.rules.urgency.window):
            maybe = True
    return fired, maybe, spans


def assess_urgency(text: str, rules: TicketRules, *, homophones: bool = True) -> UrgencyFinding:
    """Which urgency rules fire on `text` (see ticket_rules.yaml, `urgency`).

    A rule that fires only when sound-alikes count (没气泄露 for 煤气泄露) is urgent when
    its `homophones` is "urgent" and possible otherwise; it is named in `by_sound` and
    its reason says what was heard for what. It is possible at most when the match is
    nothing but sound-alikes shorter than `alone_from` characters (找火 alone for
    着火), or when a sound-alike also reads as a negation and no presence cue comes
    before it (但是没气味).
    """
    finding = UrgencyFinding(rules=[], reasons=[], possible=[], kind=None, category=None, spans=[])
    hits = sound_hits(text, rules) if homophones else {}
    alone_from = rules.rules.homophones.alone_from
    for rule in rules.urgency_rules:
        fired = maybe = sound_fired = sound_maybe = False
        sound_spans: list[Span] = []
        heard: dict[str, str] = {}  # heard -> keyword
        mode = rule.spec.homophones
        rule_hits = [
            [(h, p.pattern) for p in group for h in hits.get(p.pattern, ())]
            for group in (rule.any_of, *rule.all_of)
        ]
        has_hits = mode != "off" and any(rule_hits)
        for offset, sentence in _sentences(text):
            excluded = [m.span() for p in rule.exclude for m in p.finditer(sentence)]
            ok, written_maybe, spans = _match_rule(rule, sentence, excluded, rules)
            if ok:
                fired = True
                finding.spans.extend((offset + s, offset + e) for s, e in spans)
            elif written_maybe or _occurrences(rule.possible, sentence, excluded):
                maybe = True
            if ok or fired or not has_hits:
                continue
            end = offset + len(sentence)
            strong: list[list[Span]] = []
            weak: list[list[Span]] = []
            said: dict[Span, tuple[str, str]] = {}
            for group in rule_hits:
                strong.append([])
                weak.append([])
                for h, term in group:
                    span = (h.start - offset, h.end - offset)
                    if (
                        h.start < offset
                        or h.end > end
                        or any(span[0] < e and span[1] > s for s, e in excluded)
                    ):
                        continue
                    (weak if h.weak else strong)[-1].append(span)
                    said[span] = (h.heard, term)
            if not any(strong) and not any(weak):
                continue
            ok, mb, spans = _match_rule(rule, sentence, excluded, rules, strong)
            if ok:
                heard.update(said[s] for s in spans if s in said)
                # a short sound-alike alone (大人 for 打人, 电视 for 电死) is a lead for a
                # person; with a written word beside it (没气 + 泄露) it is a finding
                if any(s not in said or s[1] - s[0] >= alone_from for s in spans):
                    sound_fired = True
                    sound_spans.extend((offset + s, offset + e) for s, e in spans)
                else:
                    sound_maybe = True
                continue
            if any(weak):  # 没气 that may be 没 + 气(味): never more than possible
                both = [a + b for a, b in zip(strong, weak, strict=True)]
                ok, weak_maybe, spans = _match_rule(rule, sentence, excluded, rules, both)
                mb = mb or ok or weak_maybe
            # negated, or too far apart, or weak: as with written words, a person looks
            if mb and not written_maybe:
                sound_maybe = True
                # a negated sound-alike has no firing span: name all heard here
                heard.update([said[s] for s in spans if s in said] or said.values())
        note = "、".join(f"{h}≈{t}" for h, t in heard.items())
        reason = f"{rule.spec.reason}［读音近似：{note}］" if note else rule.spec.reason
        if fired or (sound_fired and mode == "urgent"):
            finding.rules.append(rule.spec.name)
            if fired:
                finding.reasons.append(rule.spec.reason)
            else:
                finding.reasons.append(reason)
                finding.by_sound.append(rule.spec.name)
                finding.spans.extend(sound_spans)
            if rule.spec.kind and finding.kind is None:
                finding.kind = rule.spec.kind
            if rule.spec.category and finding.category is None:
                finding.category = rule.spec.category
        elif sound_fired or (sound_maybe and not maybe):
            finding.possible.append(reason)
            finding.by_sound.append(rule.spec.name)
        elif maybe:
            finding.possible.append(rule.spec.reason)
    return finding


def _within(groups: list[list[tuple[int, int]]], window: int) -> list[tuple[int, int]] | None:
    """The tightest choice of one occurrence per group, if inside `window` characters.

    A sweep over the occurrences in text order (smallest range covering every group),
    so a long unpunctuated call with hundreds of 水 stays linear-ish.
    """
    if not all(groups):
        return None
    tagged = sorted((s, e, g) for g, occ in enumerate(groups) for s, e in occ)
    need = len(groups)
    count = [0] * need
    covered = right = 0
    best: tuple[int, int, int] | None = None  # (extent, left, right)
    for left in range(len(tagged)):
        while right < len(tagged) and covered < need:
            g = tagged[right][2]
            count[g] += 1
            covered += count[g] == 1
            right += 1
        if covered < need:
            break
        extent = max(e for _, e, _ in tagged[left:right]) - tagged[left][0]
        if best is None or extent < best[0]:
            best = (extent, left, right)
        g = tagged[left][2]
        count[g] -= 1
        covered -= count[g] == 0
    if best is None or best[0] > window:
        return None
    chosen: dict[int, tuple[int, int]] = {}
    for s, e, g in tagged[best[1] : best[2]]:
        chosen.setdefault(g, (s, e))
    return [chosen[g] for g in range(need)]


# --------------------------------------------------------------------------------------
# Location
# --------------------------------------------------------------------------------------


@dataclass
class SpokenPlace:
    text: str | None
    path: tuple[str, ...] | None
    spans: list[tuple[int, int]]


def find_places(text: str, rules: TicketRules) -> SpokenPlace:
    """Place phrases in free text: gazetteer names plus road/estate/number shapes."""
    if not text:
        return SpokenPlace(None, None, [])
    loc = rules.rules.location
    gaz_hits = rules.gazetteer.find(text)
    protected = [(s, e) for s, e, _ in gaz_hits]
    in_name = bytearray(len(text))  # 1 where a gazetteer name sits: never cut there
    for s, e in protected:
        in_name[s:e] = b"\x01" * (e - s)

    def is_protected(s: int, e: int) -> bool:
        return any(in_name[s:e])

    chars = list(text)
    if rules.boundary_words is not None:
        for m in rules.boundary_words.finditer(text):
            if not is_protected(*m.span()):
                chars[m.start() : m.end()] = _BLANK * (m.end() - m.start())
    boundary = set(loc.boundary_chars)
    for i, ch in enumerate(chars):
        if ch in boundary and not is_protected(i, i + 1):
            chars[i] = _BLANK
    scan = "".join(chars)

    # (start, end, can it stand alone?)
    pieces: list[tuple[int, int, bool]] = [(s, e, True) for s, e in protected]
    generic = set(loc.generic)
    for m in rules.head_piece.finditer(scan):
        if m.group() not in generic:
            pieces.append((m.start(), m.end(), True))
    for m in rules.tail_piece.finditer(scan):
        alone = bool(rules.standalone_tail.search(m.group()))
        pieces.append((m.start(), m.end(), alone))
    pieces.sort()

    # touching pieces make one phrase (浦阳街道 + 和平路 + 12号); a phrase of numbers
    # alone (十二号) is a date or an amount, not a place
    chains: list[tuple[int, int, bool]] = []
    for s, e, alone in pieces:
        if chains and s <= chains[-1][1]:
            cs, ce, calone = chains[-1]
            chains[-1] = (cs, max(ce, e), calone or alone)
        else:
            chains.append((s, e, alone))
    kept = [(s, e) for s, e, head in chains if head and text[s:e] not in generic]
    kept = kept[: loc.max_pieces]
    if not kept:
        return SpokenPlace(None, Gazetteer.resolve(gaz_hits, loc.prefer), [])

    parts: list[str] = []
    prev_end = None
    for s, e in kept:
        piece = text[s:e]
        if prev_end is not None:
            between = text[prev_end:s]
            parts.append("，" if _CLAUSE_END.search(between) else "")
        parts.append(piece)
        prev_end = e
    place_text = "".join(parts)[: loc.max_chars]
    return SpokenPlace(place_text, Gazetteer.resolve(gaz_hits, loc.prefer), kept)


def _path_fields(path: tuple[str, ...] | None) -> dict[str, str | None]:
    path = path or ()
    keys = ("province", "city", "district", "street")
    return {key: (path[i] if i < len(path) else None) for i, key in enumerate(keys)}


def parse_location(
    spoken_text: str,
    context: TicketContext,
    rules: TicketRules,
) -> tuple[Location, list[str], SpokenPlace]:
    """Location from the caller's words and the form; (location, review flags, spoken)."""
    flags: list[str] = []
    spoken = find_places(spoken_text, rules)
    form_text = mask_pii(context.address.strip(), rules) if context.address else ""
    form_path = Gazetteer.resolve(rules.gazetteer.find(form_text), rules.rules.location.prefer)

    path: tuple[str, ...] | None
    if form_path and spoken.path:
        shorter, longer = sorted((form_path, spoken.path), key=len)
        if longer[: len(shorter)] == shorter:
            path = longer
        else:  # the citizen typed one place and said another: trust the form, ask a person
            path = form_path
            flags.append("location_conflict")
    else:
        path = form_path or spoken.path

    if form_text and spoken.text and spoken.text not in form_text:
        text: str | None = f"{form_text}；{spoken.text}"
    else:
        text = form_text or spoken.text

    from_form = bool(form_text) or context.lat is not None
    from_speech = bool(spoken.text or spoken.path)
    parsed_from = (
        "both"
        if from_form and from_speech
        else "form"
        if from_form
        else "transcript"
        if from_speech
        else None
    )
    location = Location(
        text=text or None,
        lat=context.lat,
        lon=context.lon,
        parsed_from=parsed_from,
        **_path_fields(path),
    )
    return location, flags, spoken


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------


def _content_clauses(text: str, rules: TicketRules) -> list[tuple[int, int, str]]:
    """(start, end, clause) for every clause that is more than a greeting or preamble."""
    clauses: list[tuple[int, int, str]] = []
    start = 0
    for m in itertools.chain(_CLAUSE_END.finditer(text), [None]):
        end = m.start() if m else len(text)
        raw = text[start:end]
        lead = len(raw) - len(raw.lstrip())
        body = raw.strip()
        if body and not rules.filler_clause.match(body):
            clauses.append((start + lead, start + lead + len(body), body))
        if m:
            start = m.end()
    return clauses


def summarise(
    text: str,
    label: str,
    rules: TicketRules,
    *,
    urgent: bool = False,
    place: SpokenPlace | None = None,
    key_spans: Sequence[tuple[int, int]] = (),
    category: CategoryRule | None = None,
    kind: Kind | None = None,
) -> str:
    """One line: 【label】 + the most informative clause (extractive, deterministic).

    A clause scores by the chosen category's keywords, urgent terms, the kind's own
    words and a place; greetings and "我想反映一下" preambles never count. If the
    clause does not name the place, the first place phrase goes in front.
    """
    spec = rules.rules.summary
    head = f"【紧急·{label}】" if urgent else f"【{label}】"
    clauses = _content_clauses(text, rules)
    if not clauses:
        return (head + spec.empty_text)[: spec.max_chars]

    keywords = category.keywords if category else {}
    kind_terms = next(
        (terms for k, terms in rules.kind_terms if k == kind and k != rules.rules.kinds.default),
        (),
    )
    place_spans = place.spans if place else []

    def overlaps(spans: Sequence[tuple[int, int]], s: int, e: int) -> int:
        return sum(1 for a, b in spans if a < e and b > s)

    hits = sound_hits(text, rules) if keywords else {}
    factor = rules.rules.homophones.category_weight

    def score(idx: int) -> tuple[float, int]:
        s, e, body = clauses[idx]
        value = sum(
            w if word in body else factor * w if _sounds_like(word, hits, (s, e)) else 0
            for word, w in keywords.items()
        )
        # for 表扬/建议/咨询/举报 the clause that says so is the point; "我要投诉" is not
        value += 1.5 * sum(w for pattern, w in kind_terms if pattern.search(body))
        value += 3 * overlaps(key_spans, s, e)
        value += 1 if overlaps(place_spans, s, e) else 0
        value += min(len(body), 20) / 40  # prefer a full clause to a fragment
        return value, -idx

    def trim(clause: str) -> str:
        clause = rules.filler_prefix.sub("", clause) or clause
        return rules.trailing.sub("", clause) or clause

    best = max(range(len(clauses)), key=score)
    s, e, body = clauses[best]
    body = trim(body)
    if len(body) < 10 and best + 1 < len(clauses):
        body = f"{body}，{trim(clauses[best + 1][2])}"
    if place and place.spans and not overlaps(place_spans, s, e):
        first = text[place.spans[0][0] : place.spans[0][1]]
        if first not in body:
            body = f"{first}，{body}"
    line = head + body
    if len(line) > spec.max_chars:
        line = line[: spec.max_chars - 1] + "…"
    return line


# --------------------------------------------------------------------------------------
# The ticket
# --------------------------------------------------------------------------------------


def _ticket_id(context: TicketContext, now: datetime) -> str:
    if context.ticket_id:
        return context.ticket_id
    when = (context.submitted_at or now).astimezone(timezone.utc)
    if context.submitted_at is not None:
        # the same submission always gets the same id, so a retried job cannot
        # put a second ticket on the queue
        seed = f"{context.audio_sha256}|{context.client_ref or ''}|{when.isoformat()}"
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
) -> Ticket:
    """The ticket for one transcribed submission.

    `review_confidence_below` defaults to the setting of the same name;
    `now` (aware) fixes created_at, for tests and replays.
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
        )
        for i, s in enumerate(segments)
    ]

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
    category, categorised = classify_category(caller_text, rules)
    if urgency_found.category and urgency_found.category != category.code:
        # a gas leak reported as "物业不管" goes to whoever handles gas leaks
        category, categorised = rules.category(urgency_found.category), True
    elif urgency_found.rules and not categorised and rules.taxonomy.urgent_fallback:
        category, categorised = rules.category(rules.taxonomy.urgent_fallback), True
    elif not urgency_found.category:
        written, written_ok = classify_category(caller_text, rules, homophones=False)
        by_sound |= (category.code, categorised) != (written.code, written_ok)
    location, location_flags, spoken = parse_location(caller_text, context, rules)

    urgent = bool(urgency_found.rules)
    urgency = Urgency(
        level="urgent" if urgent else "normal",
        reasons=urgency_found.reasons,
        rules=urgency_found.rules,
        possible=urgency_found.possible,
    )

    summary = (
        f"【{category.label}】{rules.rules.summary.empty_text}"
        if empty
        else summarise(
            caller_text,
            category.label,
            rules,
            urgent=urgent,
            place=spoken,
            key_spans=urgency_found.spans,
            category=category if categorised else None,
            kind=kind,
        )
    )

    # -- review flags ------------------------------------------------------------------------
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
        flags.extend(_asr_flags([f for f in segments[i].flags if f not in informational],
                                rules))
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
        audio=AudioRef(
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
        transcript=TicketTranscript(text=full_text, segments=ticket_segments),
        language=language,
        dialect=transcript.dialect or "mandarin",
        kind=kind,
        category=Category(code=category.code, label=category.label, department=category.department),
        location=location,
        urgency=urgency,
        summary=summary,
        review=Review(needed=bool(flags), flags=flags),
        model=ModelRef(name=transcript.model or "unknown", version=transcript.model_version or ""),
        language_model=ModelRef(name=transcript.lm, version=transcript.lm_version)
        if transcript.lm else None,
    )
