"""诉求概要: the summary line of a ticket."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from pipeline.ticket_schema import (
    Kind,
)
from pipeline.tickets.classify import _sounds_like
from pipeline.tickets.common import _CLAUSE_END
from pipeline.tickets.places import SpokenPlace
from pipeline.tickets.rules import CategoryRule, TicketRules
from pipeline.tickets.sounds import sound_hits


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
