"""诉求概要: a third-person summary line of at most 80 characters.

Five elements are extracted from the caller's words and put into one template
(ticket_rules.yaml, `summary`):

    来电人反映：浦阳街道和平路口路灯损坏一周，夜间出行不便；诉求：尽快维修。

where (the parsed place, short), what object (路灯), what problem (损坏), since when
or how long (一周), what the caller asks for (尽快维修; by default from the problem,
then the kind). An impact (夜间出行不便) goes in when there is room. Without an object
or a problem the most informative clause of the text stands in for both. Nothing is
generated; everything is deterministic.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from pipeline.ticket_schema import Kind, Location
from pipeline.tickets.classify import _sounds_like
from pipeline.tickets.common import _CLAUSE_END
from pipeline.tickets.places import SpokenPlace
from pipeline.tickets.rules import CategoryRule, TicketRules
from pipeline.tickets.sounds import sound_hits

_UNITS = {"星期": "周", "礼拜": "周", "月": "个月"}


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


@dataclass(frozen=True)
class _Compiled:
    fillers: re.Pattern[str] | None
    objects: re.Pattern[str] | None
    problems: tuple[tuple[re.Pattern[str], str], ...]
    durations: tuple[re.Pattern[str], ...]
    since: tuple[re.Pattern[str], ...]
    impacts: tuple[tuple[re.Pattern[str], str], ...]
    requests: tuple[tuple[re.Pattern[str], str], ...]
    third_person: re.Pattern[str] | None


def _alt(words: Sequence[str]) -> re.Pattern[str] | None:
    words = sorted(set(words), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, words))) if words else None


@lru_cache(maxsize=8)
def _compiled(rules: TicketRules) -> _Compiled:
    spec = rules.rules.summary

    def pairs(d: dict[str, str]) -> tuple[tuple[re.Pattern[str], str], ...]:
        return tuple((re.compile(k), v) for k, v in d.items())

    return _Compiled(
        fillers=_alt(spec.fillers),
        objects=_alt(spec.objects),
        problems=pairs(spec.problems),
        durations=tuple(map(re.compile, spec.durations)),
        since=tuple(map(re.compile, spec.since)),
        impacts=pairs(spec.impacts),
        requests=pairs(spec.requests),
        third_person=_alt(list(spec.third_person)),
    )


def _strip_fillers(text: str, c: _Compiled) -> str:
    return c.fillers.sub("", text) if c.fillers else text


def place_short(location: Location | None, place: SpokenPlace | None = None) -> str:
    """Where, short: the town, village, road and landmark said (浦阳街道和平路口), or
    the county when nothing lower is known; "" when nothing is."""
    if location is None:
        return place.text or "" if place else ""
    parts = [p for p in (location.street, location.village, location.road) if p]
    if location.landmark and (not location.road or len(parts) < 2):
        parts.append(location.landmark)
    if not parts and location.district:
        parts.append(location.district)
    out: list[str] = []
    for part in parts:  # 黄宅镇 + 黄宅镇前店村 typed as one: say it once
        if any(part in o for o in out):
            continue
        out = [o for o in out if o not in part] + [part]
    return "".join(out) if out else (location.text or "").split("；")[-1][:20]


def _first(pairs: Sequence[tuple[re.Pattern[str], str]], text: str) -> tuple[str, int] | None:
    """The first pattern (in file order) that matches: (its wording, where)."""
    for pattern, wording in pairs:
        m = pattern.search(text)
        if m:
            return wording, m.start()
    return None


def _duration(text: str, c: _Compiled) -> str:
    for pattern in c.durations:
        m = pattern.search(text)
        if m:
            number, more, unit, more2 = m.groups()
            number = number.replace("好几", "数").replace("几", "数") or number
            return f"{number}{'多' if more or more2 else ''}{_UNITS.get(unit, unit)}"
    return ""


def _since(text: str, c: _Compiled) -> str:
    for i, pattern in enumerate(c.since):
        m = pattern.search(text)
        if m:
            # 从上个月开始 -> 自上个月起; 昨天晚上 stays as said
            return f"自{m.group(1)}起" if i == 0 else m.group(1)
    return ""


def _object(
    text: str, c: _Compiled, category: CategoryRule | None, before: int | None
) -> str:
    """The thing complained about: the object word nearest before the problem, else
    the first one, else the category's strongest keyword found in the text."""
    if c.objects:
        found = [(m.start(), m.group()) for m in c.objects.finditer(text)]
        if found:
            if before is not None:
                earlier = [f for f in found if f[0] < before]
                if earlier:
                    return earlier[-1][1]
            return found[0][1]
    if category:
        present = [(w, k) for k, w in category.keywords.items() if k in text and len(k) >= 2]
        if present:
            return max(present)[1]
    return ""


def _third_person(text: str, rules: TicketRules, c: _Compiled) -> str:
    if c.third_person is None:
        return text
    mapping = rules.rules.summary.third_person
    return c.third_person.sub(lambda m: mapping[m.group()], text)


def _best_clause(
    text: str,
    rules: TicketRules,
    category: CategoryRule | None,
    kind: Kind | None,
    key_spans: Sequence[tuple[int, int]],
    place_spans: Sequence[tuple[int, int]],
) -> tuple[int, int, str] | None:
    """The clause with most category, urgency, kind and place words (extractive)."""
    clauses = _content_clauses(text, rules)
    if not clauses:
        return None
    keywords = category.keywords if category else {}
    kind_terms = next(
        (terms for k, terms in rules.kind_terms if k == kind and k != rules.rules.kinds.default),
        (),
    )

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

    return clauses[max(range(len(clauses)), key=score)]


def summarise(
    text: str,
    rules: TicketRules,
    *,
    category: CategoryRule | None = None,
    kind: Kind | None = None,
    location: Location | None = None,
    place: SpokenPlace | None = None,
    urgent: bool = False,
    source: str = "voice_note",
    key_spans: Sequence[tuple[int, int]] = (),
    title: str | None = None,
) -> str:
    """诉求概要 of the caller's (already masked) words; see the module notes.

    `category` is the chosen category (None: uncategorised), `location` the parsed
    one, `place` the spoken place (its spans mark the place in `text`), `key_spans`
    where urgency terms were found, `title` a typed message's (masked) subject: the
    writer's own summary, it stands in for object and problem when they are not found."""
    spec = rules.rules.summary
    c = _compiled(rules)
    limit = spec.max_chars
    head = (spec.urgent_mark if urgent else "") + spec.prefix.get(source, "")
    text = _heard_objects(text, rules)
    clean = _strip_fillers(text, c)
    if not _content_clauses(text, rules) or not clean.strip():
        return spec.empty_text[:limit]

    where = place_short(location, place)
    problem = _first(c.problems, clean)
    obj = _object(clean, c, category, problem[1] if problem else None)
    when = _since(clean, c)
    duration = _duration(clean, c)
    impact = _first(c.impacts, clean)
    asked = _first(c.requests, clean)
    request = (
        asked[0]
        if asked
        else spec.problem_requests.get(problem[0], "")
        if problem
        else ""
    ) or spec.default_requests.get(kind or "", "") or spec.default_requests.get("投诉", "")
    tail = f"；诉求：{request}。" if request else "。"

    if obj and problem and obj not in problem[0]:
        core = f"{when}{obj}{problem[0]}{duration}"
    else:  # the title, or the clause that says most, stands in for object and problem
        spans = place.spans if place else []
        best = _best_clause(text, rules, category, kind, key_spans, spans)
        body = title.strip() if title and title.strip() else best[2] if best else clean
        body = _strip_fillers(body, c)
        body = rules.filler_prefix.sub("", body) or body
        body = rules.trailing.sub("", body) or body
        body = _third_person(body, rules, c)
        if where and any(part and part in body for part in _parts(location)):
            where = ""  # the clause says the place itself
        core = body
    core = rules.trailing.sub("", core) or core

    def line(where: str, core: str, impact: str) -> str:
        middle = f"{where}{core}" + (f"，{impact}" if impact else "")
        return f"{head}{middle}{tail}"

    text_out = line(where, core, impact[0] if impact and impact[0] not in core else "")
    if len(text_out) > limit:
        text_out = line(where, core, "")
    if len(text_out) > limit and len(where) > 12:
        where = where[-12:]
        text_out = line(where, core, "")
    if len(text_out) > limit:
        room = limit - len(line(where, "", "")) - 1
        text_out = line(where, core[: max(room, 0)] + "…", "")
    return text_out[:limit]


def _heard_objects(text: str, rules: TicketRules) -> str:
    """Objects Whisper wrote as sound-alikes, written right (紧盖 -> 井盖), so that
    the summary names the thing; the transcript itself keeps what was heard."""
    objects = set(rules.rules.summary.objects)
    chars = list(text)
    for word, hits in sound_hits(text, rules).items():
        if word not in objects:
            continue
        for h in hits:
            if not h.weak and h.end - h.start == len(word):
                chars[h.start : h.end] = list(word)
    return "".join(chars)


def _parts(location: Location | None) -> list[str]:
    if location is None:
        return []
    return [p for p in (location.street, location.village, location.road, location.landmark) if p]


def unreadable_summary(variety: str) -> str:
    """诉求概要 of speech the model cannot read: what it is, and that a person must listen
    (the machine text would be a summary of words nobody said)."""
    from asr.dialect import LABELS

    label = LABELS.get(variety, LABELS["unknown"])
    if variety in ("unknown", "other"):
        return "方言语音，待人工听写"
    return f"方言语音（{label}），待人工听写"
