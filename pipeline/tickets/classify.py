"""Kind (投诉/咨询/...) and category keyword scoring."""

from __future__ import annotations

from pipeline.ticket_schema import (
    Kind,
)
from pipeline.tickets.rules import CategoryRule, TicketRules
from pipeline.tickets.sounds import SoundHit, sound_hits


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
