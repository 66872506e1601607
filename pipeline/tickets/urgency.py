"""Urgency: negation-aware safety rules (gas, fire exits, embankments, wires)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.ticket_schema import (
    Kind,
)
from pipeline.tickets.common import _CLAUSE_END, _SENTENCE_END
from pipeline.tickets.rules import TicketRules, _CompiledUrgencyRule
from pipeline.tickets.sounds import sound_hits


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
