"""Places in what the caller says and the typed address -> `Location`.

Spoken text has no punctuation, fillers (喂, 那个, 就是) and sound-alike characters. A
place phrase is found as pieces that touch: administrative names (the gazetteer; the
region's towns and villages, also when heard with sound-alike characters) and name
shapes (two to six name characters before 路/街道/村/小区/医院..., numbers and corners
after them). Each piece then fills one level: province..town from the names, village,
road (和平路口, 和平路与人民路交叉口, 通济桥) and landmark (翠湖小区, 浦江中学).

Inside the deployment's region (`Settings.region`) its towns and villages win over
same-named places elsewhere and the levels above them come from the region; a place
named outside it (上海普陀区) stays outside. Without a region only what was said is
filled: a county that several provinces have gives no province.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from pipeline.ticket_schema import Location
from pipeline.tickets.common import _BLANK, _CLAUSE_END, _NAME_CHAR
from pipeline.tickets.gazetteer import Gazetteer, Place, RegionIndex, region_index
from pipeline.tickets.pii import mask_pii
from pipeline.tickets.rules import TicketRules

if TYPE_CHECKING:
    from pipeline.tickets.build import TicketContext

_LEVELS = ("province", "city", "district", "street")


@dataclass
class SpokenPlace:
    """The place phrase found in a text and the levels it fills."""

    text: str | None  # the phrase, fillers left out, sound-alikes put right
    path: tuple[str, ...] | None  # administrative: province .. town, full names
    spans: list[tuple[int, int]]  # where the phrase's pieces are in the text
    village: str | None = None
    road: str | None = None
    landmark: str | None = None
    # a town named by its shape (城关镇) that no gazetteer holds: not in `path`
    street: str | None = None
    heard: list[str] = field(default_factory=list)  # "普阳街道≈浦阳街道"
    in_region: bool = False  # the upper levels came from the deployment's region

    @property
    def parts(self) -> dict[str, str | None]:
        fields = _path_fields(self.path)
        if fields["street"] is None:
            fields["street"] = self.street
        return {**fields, "village": self.village, "road": self.road, "landmark": self.landmark}

    @property
    def found(self) -> bool:
        return bool(self.text or self.path or self.village or self.road or self.landmark)


@dataclass
class _Piece:
    start: int
    end: int
    kind: str  # admin, town, village, road, landmark, tail
    name: str  # the full name (admin/town/village: as the gazetteer spells it)
    places: list[Place] = field(default_factory=list)


@dataclass(frozen=True)
class _Patterns:
    name_suffix: re.Pattern[str]  # a place-name ending right after a short name
    intersection: re.Pattern[str]  # X路与Y路(交叉口)
    road_tail: re.Pattern[str]  # 口, 路口, 交叉口 after a road


@lru_cache(maxsize=8)
def _patterns(rules: TicketRules) -> _Patterns:
    loc = rules.rules.location

    def alt(words: list[str]) -> str:
        return "|".join(map(re.escape, sorted(words, key=len, reverse=True))) or "(?!)"

    name = rf"{_NAME_CHAR}{{{loc.name_min},{loc.name_max}}}?(?:{alt(loc.road_suffixes)})"
    return _Patterns(
        name_suffix=re.compile(f"(?:{alt(loc.head_suffixes)})"),
        intersection=re.compile(rf"{name}(?P<joint>.){name}(?:{loc.road_tail})?"),
        road_tail=re.compile(loc.road_tail),
    )


def _blanked(text: str, rules: TicketRules, keep: bytearray) -> str:
    """The text with boundary words and characters blanked, except where `keep` is set."""
    loc = rules.rules.location
    chars = list(text)
    if rules.boundary_words is not None:
        for m in rules.boundary_words.finditer(text):
            if not any(keep[m.start() : m.end()]):
                chars[m.start() : m.end()] = _BLANK * (m.end() - m.start())
    boundary = set(loc.boundary_chars)
    for i, ch in enumerate(chars):
        if ch in boundary and not keep[i]:
            chars[i] = _BLANK
    return "".join(chars)


def _region_pieces(
    text: str, rough: str, region: RegionIndex, suffix: re.Pattern[str]
) -> tuple[list[_Piece], list[str]]:
    """The region's towns and villages, as written or heard (普阳街道 for 浦阳街道)."""
    pieces: list[_Piece] = []
    heard: list[str] = []
    taken = bytearray(len(text))

    def add(s: int, e: int, name: str) -> None:
        kind = "town" if name in region.town_of_name else "village"
        full = region.town_of_name.get(name, name)
        pieces.append(_Piece(s, e, kind, full))
        taken[s:e] = b"\x01" * (e - s)

    names = {**{n: n for n in region.town_of_name}, **{v: v for v in region.villages}}
    # sound-alikes first, so that a short name right after one (黄寨镇何村) is seen
    if region.corrector:
        for c in region.corrector.find(text):
            if c.name in names:
                add(c.start, c.end, c.name)
                heard.append(f"{c.heard}≈{c.name}")
    lengths = sorted({len(n) for n in names}, reverse=True)
    i = 0
    while i < len(text):
        for length in lengths:
            name = text[i : i + length]
            if len(name) < length or name not in names or any(taken[i : i + length]):
                continue
            short = name in region.short_towns
            before = sorted((p for p in pieces if p.end <= i), key=lambda p: p.end)
            if (short or length < 3) and not _starts_word(rough, i, before):
                continue
            if short and suffix.match(text, i + length):
                continue  # 浦阳江, 黄宅中学: a river or a school named after the town
            if length < 3 and name in region.villages and not (
                before and before[-1].end == i and before[-1].kind == "town"
                and before[-1].name in region.villages[name]
            ):
                continue  # 中村, 四村: only right after the town that has one
            add(i, i + length, name)
            i += length - 1
            break
        i += 1
    pieces.sort(key=lambda p: p.start)
    return pieces, heard


def _starts_word(rough: str, i: int, before: list[_Piece]) -> bool:
    return i == 0 or rough[i - 1] in "\x00，。！？；：、,.!?;: \n" or bool(
        before and before[-1].end == i
    )


def find_places(text: str, rules: TicketRules, region: RegionIndex | None = None) -> SpokenPlace:
    """The place phrase in free text and the levels it names."""
    if not text:
        return SpokenPlace(None, None, [])
    loc = rules.rules.location
    rough = _blanked(text, rules, bytearray(len(text)))

    suffix = _patterns(rules).name_suffix
    region_found, heard = _region_pieces(text, rough, region, suffix) if region else ([], [])
    in_region_name = bytearray(len(text))
    for p in region_found:
        in_region_name[p.start : p.end] = b"\x01" * (p.end - p.start)
    admin: list[_Piece] = []
    for c in rules.gazetteer.sound_alikes(text):  # 普阳街道 heard for places.yaml's 浦阳街道
        if not any(in_region_name[c.start : c.end]):
            admin.append(_Piece(c.start, c.end, "admin", c.name, rules.gazetteer.by_name[c.name]))
            in_region_name[c.start : c.end] = b"\x01" * (c.end - c.start)
            heard.append(f"{c.heard}≈{c.name}")
    for s, e, places in rules.gazetteer.find(text, rough):
        if any(in_region_name[s:e]):
            continue  # the region's own 浦阳街道 wins over a same-named one elsewhere
        if text[s:e] in rules.gazetteer.short_names and suffix.match(text, e):
            continue  # 北京路, 浦江中学: a road or a school named after the place
        admin.append(_Piece(s, e, "admin", text[s:e], places))
    names = sorted([*region_found, *admin], key=lambda p: p.start)

    keep = bytearray(len(text))
    for p in names:
        keep[p.start : p.end] = b"\x01" * (p.end - p.start)
    scan = _blanked(text, rules, keep)
    # shapes are looked for between names, never across one
    shapes_scan = "".join(_BLANK if keep[i] else ch for i, ch in enumerate(scan))

    pieces: list[_Piece] = list(names)
    generic = set(loc.generic)
    taken = bytearray(len(text))
    for m in _patterns(rules).intersection.finditer(shapes_scan):
        joint = m.start("joint")
        if text[joint] not in loc.connectors:
            continue
        # one spelling for every way of saying it: 和平路跟人民路口 -> 和平路与人民路口
        road = f"{text[m.start():joint]}与{text[joint + 1:m.end()]}"
        pieces.append(_Piece(m.start(), m.end(), "road", road))
        taken[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
    for m in rules.head_piece.finditer(shapes_scan):
        end = m.end()
        while more := suffix.match(shapes_scan, end):  # 江滨花园 + 小区: one estate
            end = more.end()
        start = _name_start(text, m.start(), m.end(), rules)
        word = text[start:end]
        if word in generic or any(taken[start:end]):
            continue
        pieces.append(_Piece(start, end, _shape_kind(word, rules), word))
    for m in rules.tail_piece.finditer(scan):
        if any(taken[m.start() : m.end()]):
            continue
        kind = "standalone" if rules.standalone_tail.search(m.group()) else "tail"
        pieces.append(_Piece(m.start(), m.end(), kind, m.group()))
    pieces.sort(key=lambda p: (p.start, -p.end))

    # touching pieces make one phrase (浦阳街道 + 和平路 + 12号); a phrase of numbers
    # alone (十二号) is a date or an amount, not a place
    chains: list[list[_Piece]] = []
    for p in pieces:
        if chains and p.start <= chains[-1][-1].end:
            chains[-1].append(p)
        else:
            chains.append([p])
    kept = [c for c in chains if any(p.kind != "tail" for p in c)][: loc.max_pieces]
    spans = [(c[0].start, max(p.end for p in c)) for c in kept]
    found = [p for c in kept for p in c]

    place = SpokenPlace(None, None, spans, heard=heard)
    if spans:
        parts: list[str] = []
        prev_end = None
        for c, (s, e) in zip(kept, spans, strict=True):
            if prev_end is not None:
                parts.append("，" if _CLAUSE_END.search(text[prev_end:s]) else "")
            parts.append(_phrase(text, c, s, e))
            prev_end = e
        place.text = "".join(parts)[: loc.max_chars] or None

    # administrative levels from the names (also those outside the phrase: 浙江 ... 的)
    admin_hits = [(p.start, p.end, p.places) for p in names if p.kind == "admin"]
    prefer = list(region.path) if region else loc.prefer
    path = Gazetteer.resolve(admin_hits, prefer)
    towns = [p.name for p in names if p.kind == "town"]
    villages = [p.name for p in names if p.kind == "village"]
    if region is not None and _within(path, region):
        place.in_region = bool(towns or villages or found or path)
        town = towns[0] if towns else None
        if town is None and villages:
            holders = region.villages[villages[0]]
            town = holders[0] if len(holders) == 1 else None
        if town is not None:
            path = region.town_path(town)
        elif place.in_region and (path is None or len(path) < len(region.path)):
            path = region.path
    place.path = path
    place.village = villages[0] if villages and place.in_region else None
    for p in found:
        name = _clean(text, p.start, p.end, scan) if p.kind != "road" else p.name
        if p.kind == "road" and place.road is None:
            place.road = _with_corner(text, p.end, name, rules)
        elif p.kind == "landmark" and place.landmark is None:
            place.landmark = name
        elif p.kind == "shape_village" and place.village is None:
            place.village = name
        elif p.kind == "shape_town" and place.street is None and not (path and len(path) > 3):
            place.street = name
    return place


# parts of speech a name does not start with (jieba's tags): verbs, adverbs,
# conjunctions, prepositions, particles, pronouns, time words, measure words
_NOT_NAME_START = frozenset({"v", "vd", "d", "c", "p", "u", "ud", "uj", "ul", "uz", "uv", "ug",
                             "r", "t", "q", "y", "e", "o"})


def _name_start(text: str, start: int, end: int, rules: TicketRules) -> int:
    """Where a shape's name really starts: 导致万家丽路 -> 万家丽路. The boundary words
    cut most sentences; what they miss is cut by jieba's tags, never below the
    shortest name (解放路 stays whole)."""
    loc = rules.rules.location
    head = text[start:end]
    ending = max((s for s in loc.head_suffixes if head.endswith(s)), key=len, default="")
    name = head[: len(head) - len(ending)]
    if len(name) <= loc.name_min:
        return start
    return start + _lead_to_drop(name, loc.name_min)


@lru_cache(maxsize=4096)
def _lead_to_drop(name: str, keep: int) -> int:
    import jieba
    import jieba.posseg

    jieba.setLogLevel(60)  # no "Building prefix dict" chatter on stderr
    drop = 0
    for pair in jieba.posseg.cut(name):
        if pair.flag not in _NOT_NAME_START or len(name) - drop - len(pair.word) < keep:
            break
        drop += len(pair.word)
    return drop


def _shape_kind(word: str, rules: TicketRules) -> str:
    loc = rules.rules.location
    if any(word.endswith(s) for s in loc.road_suffixes):
        return "road"
    if any(word.endswith(s) for s in loc.street_suffixes):
        return "shape_town"
    if any(word.endswith(s) for s in loc.village_suffixes):
        return "shape_village"
    return "landmark"


def _with_corner(text: str, end: int, road: str, rules: TicketRules) -> str:
    """和平路 + 口 -> 和平路口: the corner said right after a road belongs to it."""
    m = _patterns(rules).road_tail.match(text, end)
    return road + m.group() if m and not road.endswith(m.group()) else road


def _clean(text: str, s: int, e: int, scan: str) -> str:
    """text[s:e] without what was blanked as a filler inside it."""
    return "".join(ch for ch, b in zip(text[s:e], scan[s:e], strict=True) if b != _BLANK)


def _phrase(text: str, chain: list[_Piece], s: int, e: int) -> str:
    """A chain as said, with the region's names as they are spelt (普阳 -> 浦阳)."""
    out, at = [], s
    for p in sorted(chain, key=lambda p: p.start):
        if p.start < at:
            continue
        out.append(text[at : p.start])
        said = text[p.start : p.end]
        fixed = said
        if p.kind in ("town", "village", "admin") and len(p.name) == len(said):
            fixed = p.name
        out.append(fixed)
        at = p.end
    out.append(text[at:e])
    return "".join(out)


def _within(path: tuple[str, ...] | None, region: RegionIndex) -> bool:
    """No administrative name said, or the ones said agree with the region."""
    if not path:
        return True
    n = min(len(path), len(region.path))
    if path[:n] == region.path[:n]:
        return True
    # a city region: a county of it
    return any(path[: len(p)] == p or p[: len(path)] == path for p in region.counties.values())


def _path_fields(path: tuple[str, ...] | None) -> dict[str, str | None]:
    path = path or ()
    return {key: (path[i] if i < len(path) else None) for i, key in enumerate(_LEVELS)}


def _region(region: str | None) -> RegionIndex | None:
    if region is None:
        from pipeline.config import get_settings

        region = get_settings().region
    return region_index(region) if region else None


def parse_location(
    spoken_text: str,
    context: TicketContext,
    rules: TicketRules,
    *,
    region: str | None = None,
) -> tuple[Location, list[str], SpokenPlace]:
    """Location from the caller's words and the form; (location, review flags, spoken).

    `region` defaults to `Settings.region` (MINYIN_REGION); "" means none."""
    flags: list[str] = []
    index = _region(region)
    spoken = find_places(spoken_text, rules, index)
    form_text = mask_pii(context.address.strip(), rules) if context.address else ""
    form = find_places(form_text, rules, index) if form_text else SpokenPlace(None, None, [])
    # a typed address that names no place we know is still the submitter's address
    form_path = form.path if form.found else None

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
    conflict = "location_conflict" in flags

    def pick(key: str) -> str | None:
        typed = form.parts[key]
        said = None if conflict else spoken.parts[key]
        return typed or said

    if form_text and spoken.text and spoken.text not in form_text:
        text: str | None = f"{form_text}；{spoken.text}"
    else:
        text = form_text or spoken.text

    from_form = bool(form_text) or context.lat is not None
    from_speech = spoken.found
    parsed_from = (
        "both"
        if from_form and from_speech
        else "form"
        if from_form
        else "transcript"
        if from_speech
        else None
    )
    fields = _path_fields(path)
    if fields["street"] is None:
        fields["street"] = pick("street")
    location = Location(
        text=text or None,
        lat=context.lat,
        lon=context.lon,
        parsed_from=parsed_from,
        village=pick("village"),
        road=pick("road"),
        landmark=pick("landmark"),
        submitted_address=form_text or None,
        **fields,
    )
    return location, flags, spoken
