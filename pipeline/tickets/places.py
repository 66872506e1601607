"""Places in what the caller says and the typed address -> `Location`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.ticket_schema import (
    Location,
)
from pipeline.tickets.common import _BLANK, _CLAUSE_END
from pipeline.tickets.gazetteer import Gazetteer
from pipeline.tickets.pii import mask_pii
from pipeline.tickets.rules import TicketRules

if TYPE_CHECKING:
    from pipeline.tickets.build import TicketContext


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
