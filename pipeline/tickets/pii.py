"""Personal data: phone and ID-card numbers masked in every text, spoken digits too."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pipeline.ticket_schema import (
    mask_number,
)
from pipeline.tickets.common import _D, _NUMBER_RUN, _TO_ARABIC
from pipeline.tickets.rules import TicketRules, load_rules


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
