"""Rule files (validated shapes) and their compiled form: `load_rules()`."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from asr.phonetic import Mergers
from pipeline.ticket_schema import (
    Kind,
)
from pipeline.tickets.common import _NAME_CHAR, DATA_DIR
from pipeline.tickets.gazetteer import Gazetteer
from pipeline.tickets.repeats import RepeatRules
from pipeline.tickets.sounds import SoundIndex


class _RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CategoryRule(_RuleFile):
    code: str = Field(pattern=r"^[a-z][a-z0-9_.]*$")
    path: tuple[str, str, str]  # level 1, 2 and 3 labels
    label: str = ""  # the leaf's label; empty: path[2]
    department: str = Field(min_length=1)
    time_limit_days: int = Field(ge=1, le=365)
    keywords: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _label(self) -> CategoryRule:
        if not all(p.strip() for p in self.path):
            raise ValueError(f"{self.code}: every level of the path needs a label")
        if not self.label:
            self.label = self.path[2]
        return self

    @property
    def level1(self) -> str:
        return self.path[0]

    @property
    def group(self) -> str:  # the review page's grouping: level 1
        return self.path[0]


class TaxonomyFile(_RuleFile):
    level1: list[str] = Field(min_length=1)
    min_score: float = 2
    fallback: str
    urgent_fallback: str | None = None
    # a chosen leaf below this combined probability is flagged `category_unsure`
    unsure_below: float = Field(0.35, ge=0, le=1)
    # below this, and with no keyword scoring min_score, the ticket is `fallback`
    uncategorised_below: float = Field(0.12, ge=0, le=1)
    # the keyword score's share of the combined probability (the rest: the model's)
    rule_weight: float = Field(0.5, ge=0, le=1)
    categories: list[CategoryRule]

    @model_validator(mode="after")
    def _consistent(self) -> TaxonomyFile:
        codes = [c.code for c in self.categories]
        if len(set(codes)) != len(codes):
            dup = sorted({c for c in codes if codes.count(c) > 1})
            raise ValueError(f"category codes must be unique: {', '.join(dup)}")
        if len(set(self.level1)) != len(self.level1):
            raise ValueError("level-1 names must be unique")
        for code in (self.fallback, self.urgent_fallback):
            if code is not None and code not in codes:
                raise ValueError(f"fallback category {code!r} is not defined")
        for cat in self.categories:
            if cat.code != self.fallback and cat.path[0] not in self.level1:
                raise ValueError(f"{cat.code}: level 1 {cat.path[0]!r} is not in level1")
        empty = [name for name in self.level1 if not any(c.path[0] == name for c in self.leaves)]
        if empty:
            raise ValueError(f"level-1 groups without a leaf: {', '.join(empty)}")
        return self

    @property
    def leaves(self) -> list[CategoryRule]:
        """The categories a classifier may choose (all but the fallback)."""
        return [c for c in self.categories if c.code != self.fallback]


class CountyCategory(_RuleFile):
    department: str | None = Field(None, min_length=1)
    time_limit_days: int | None = Field(None, ge=1, le=365)
    keywords: dict[str, float] = Field(default_factory=dict)  # added to (or reweighting) ours


class CountyFile(_RuleFile):
    """A county's own departments, time limits and keywords (MINYIN_COUNTY_FILE)."""

    name: str | None = None
    categories: dict[str, CountyCategory] = Field(default_factory=dict)


class CountyFileError(ValueError):
    """A county file that cannot be applied; the message names the file (and code)."""


def apply_county(taxonomy: TaxonomyFile, path: Path) -> TaxonomyFile:
    """The taxonomy with the county file's overrides; CountyFileError naming the file and
    the code for an unknown code or a bad field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise CountyFileError(f"{path}: cannot read the county file: {e}") from None
    except yaml.YAMLError as e:
        raise CountyFileError(f"{path}: not YAML: {e}") from None
    try:
        county = CountyFile.model_validate(data)
    except ValueError as e:
        raise CountyFileError(f"{path}: {e}") from None
    known = {c.code: c for c in taxonomy.categories}
    unknown = [code for code in county.categories if code not in known]
    if unknown:
        raise CountyFileError(f"{path}: unknown category code(s): {', '.join(unknown)} "
                              "(codes are those of pipeline/data/taxonomy.yaml)")
    categories = []
    for cat in taxonomy.categories:
        change = county.categories.get(cat.code)
        if change is not None:
            update: dict[str, Any] = {"keywords": {**cat.keywords, **change.keywords}}
            if change.department:
                update["department"] = change.department
            if change.time_limit_days:
                update["time_limit_days"] = change.time_limit_days
            cat = cat.model_copy(update=update)
        categories.append(cat)
    return taxonomy.model_copy(update={"categories": categories})


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
    # which level a shape-found name is, by its ending; other head suffixes are landmarks
    street_suffixes: list[str] = Field(default_factory=list)
    village_suffixes: list[str] = Field(default_factory=list)
    road_suffixes: list[str] = Field(default_factory=list)
    road_tail: str = "(?!)"  # after a road: 路口, 交叉口
    connectors: str = ""  # X路与Y路: one intersection


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
    max_chars: int = Field(80, ge=10, le=80)
    empty_text: str
    filler_clause: str
    filler_prefix: str
    trailing: str
    # 诉求概要's five elements (see ticket_rules.yaml, `summary`)
    prefix: dict[str, str] = Field(default_factory=dict)  # source -> 来电人反映：
    urgent_mark: str = ""
    fillers: list[str] = Field(default_factory=list)
    objects: list[str] = Field(default_factory=list)
    problems: dict[str, str] = Field(default_factory=dict)  # regex -> how it is written
    durations: list[str] = Field(default_factory=list)  # regexes, first match wins
    since: list[str] = Field(default_factory=list)
    impacts: dict[str, str] = Field(default_factory=dict)
    requests: dict[str, str] = Field(default_factory=dict)
    problem_requests: dict[str, str] = Field(default_factory=dict)  # problem -> request
    default_requests: dict[str, str] = Field(default_factory=dict)  # kind -> request
    third_person: dict[str, str] = Field(default_factory=dict)


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
    repeats: RepeatRules = Field(default_factory=RepeatRules)


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
    def from_dir(cls, path: Path, county_file: Path | None = None) -> TicketRules:
        def read(name: str) -> dict[str, Any]:
            with (path / name).open(encoding="utf-8") as fh:
                return yaml.safe_load(fh) or {}

        taxonomy = TaxonomyFile.model_validate(read("taxonomy.yaml"))
        if county_file is not None:
            taxonomy = apply_county(taxonomy, county_file)
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
def _load_rules_cached(path: str, county: str | None) -> TicketRules:
    return TicketRules.from_dir(Path(path), Path(county) if county else None)


def load_rules(path: str | Path | None = None, *,
               county_file: str | Path | Literal[False] | None = None) -> TicketRules:
    """Rules from a directory holding taxonomy.yaml, ticket_rules.yaml and places.yaml
    (default: the package's own `pipeline/data`), with a county's overrides applied:
    `county_file`, else the setting MINYIN_COUNTY_FILE (False: none). Cached per
    directory and county file."""
    if county_file is None:
        from pipeline.config import get_settings

        county_file = get_settings().county_file
    county = str(Path(county_file).resolve()) if county_file else None
    return _load_rules_cached(str(Path(path).resolve() if path else DATA_DIR), county)
