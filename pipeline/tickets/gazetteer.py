"""Place names -> `Place`: the administrative gazetteer (places.yaml plus jionlp's
whole-country data) and a deployment region's towns and villages.

Two name lists, one lookup:

- `Gazetteer`: provinces, cities and counties. places.yaml gives the curated short
  names people say (浦江 for 浦江县; none that is also an ordinary word or a road name)
  and the towns of a few counties; jionlp's packaged china_location adds every
  province, city and county of the country by its full name (3 characters or more:
  城区, 和县 are ordinary words) and the provinces' short names.
- `RegionIndex`: the towns, villages and communities of `Settings.region`, from jionlp's
  data (`asr.gazetteer.region_names`), with what people call them (黄宅 for 黄宅镇) and
  a sound-alike corrector (普阳街道 heard for 浦阳街道).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Place:
    name: str
    level: int  # 0 province, 1 city, 2 district/county, 3 street/town
    path: tuple[str, ...]  # full names, province first, ending with this one


# a short name must start where a word can: not inside a longer name (阳江 in 浦阳江)
_WORD_BEFORE = "\x00，。！？；：、,.!?;: \n"


class Gazetteer:
    """Administrative names -> places; finds them in text and picks the best one."""

    def __init__(self, places: Iterable[tuple[Place, Sequence[str]]]) -> None:
        self.by_name: dict[str, list[Place]] = {}
        full: set[str] = set()
        for place, aliases in places:
            full.add(place.name)
            for name in (place.name, *aliases):
                bucket = self.by_name.setdefault(name, [])
                if place not in bucket:
                    bucket.append(place)
        # names that are nobody's full name: they need a word boundary before them
        self.short_names = frozenset(set(self.by_name) - full)
        self._lengths = sorted({len(n) for n in self.by_name}, reverse=True)
        self._corrector: Any = None

    def sound_alikes(self, text: str) -> list[Any]:
        """Towns (level 3, from places.yaml) heard with sound-alike characters, as
        `asr.gazetteer.Correction`s (普阳街道 -> 浦阳街道)."""
        if self._corrector is None:
            from asr.gazetteer import PlaceCorrector

            towns = [n for n, ps in self.by_name.items() if any(p.level == 3 for p in ps)]
            self._corrector = PlaceCorrector(n for n in towns if len(n) >= 3)
        return self._corrector.find(text) if self._corrector else []

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
                raise ValueError(f"places.yaml: unexpected entry {node!r} under {'/'.join(parent)}")
            for key, children in items:
                name, *aliases = [part.strip() for part in str(key).split("|")]
                if len(parent) > 3:
                    raise ValueError(f"places.yaml: {name} is deeper than street level")
                place = Place(name=name, level=len(parent), path=(*parent, name))
                found.append((place, aliases))
                walk(children, place.path)

        walk(data.get("provinces", {}), ())
        country = data.get("country", "jionlp")
        if country == "jionlp":
            found.extend(_country_places())
        elif country not in (None, "none"):
            raise ValueError(f"places.yaml: country: {country!r} (jionlp or none)")
        return cls(found)

    def find(self, text: str, blank: str | None = None) -> list[tuple[int, int, list[Place]]]:
        """(start, end, places) for each name, leftmost-longest, not overlapping.

        `blank`: the text with boundary words blanked ("\\x00"), same length; a short
        name then starts only after a blank, a separator, the start or another name."""
        out: list[tuple[int, int, list[Place]]] = []
        if not text or not self._lengths:
            return out
        scan = blank if blank is not None else text
        i, n = 0, len(text)
        while i < n:
            for length in self._lengths:
                if i + length > n:
                    continue
                name = text[i : i + length]
                places = self.by_name.get(name)
                if places is None:
                    continue
                if name in self.short_names and i > 0 and scan[i - 1] not in _WORD_BEFORE and not (
                    out and out[-1][1] == i
                ):
                    continue
                out.append((i, i + length, places))
                i += length - 1
                break
            i += 1
        return out

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


@lru_cache(maxsize=1)
def _country_places() -> tuple[tuple[Place, tuple[str, ...]], ...]:
    """jionlp's provinces, cities and counties: full names of 3+ characters, and the
    provinces' short names (浙江, 内蒙古); cities' short names come from places.yaml."""
    from asr.gazetteer import country_divisions

    out = []
    for path, aliases in country_divisions():
        level = len(path) - 1
        if level > 2 or (len(path[-1]) < 3 and level > 0):
            continue
        said = tuple(a for a in aliases if len(a) >= 2) if level == 0 else ()
        out.append((Place(name=path[-1], level=level, path=path), said))
    return tuple(out)


# --------------------------------------------------------------------------------------
# The deployment's region
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RegionIndex:
    """A region's towns and villages, and how to find them in what callers say."""

    path: tuple[str, ...]  # province, city[, county] of the region itself
    names: frozenset[str]  # the region's own full and short names (浦江县, 浦江)
    counties: dict[str, tuple[str, ...]]  # a city's county -> its path; {} for a county
    town_of_name: dict[str, str]  # what is said (黄宅镇, 黄宅) -> the full town name
    county_of_town: dict[str, str]  # town -> its county (a city region); {} for a county
    villages: dict[str, tuple[str, ...]]  # village/community -> the towns that have one
    short_towns: frozenset[str] = field(default_factory=frozenset)  # need a word boundary
    corrector: Any = None  # asr.gazetteer.PlaceCorrector over names of 3+ characters

    def town_path(self, town: str) -> tuple[str, ...]:
        county = self.county_of_town.get(town)
        return (*self.counties[county], town) if county else (*self.path, town)


@lru_cache(maxsize=8)
def region_index(region: str) -> RegionIndex:
    """The index of a region as `Settings.region` names it (a county or a city)."""
    from asr.gazetteer import PlaceCorrector, region_names

    places = region_names(region)
    path = tuple(p for p in (places.province, places.city, places.county) if p)
    path = tuple(dict.fromkeys(path))  # municipalities: 北京市 once at city level too
    if places.city == places.province:
        path = (places.province, places.province, *path[1:])
    counties = {c: (*path, c) for c in places.counties}
    town_of_name: dict[str, str] = {}
    short: set[str] = set()
    county_of_town: dict[str, str] = {}
    villages: dict[str, list[str]] = {}
    for county, town, its in places.tree:
        town_of_name.setdefault(town, town)
        said = _spoken_town(town)
        if said and said not in town_of_name:
            town_of_name[said] = town
            short.add(said)
        if counties:
            county_of_town[town] = county
        for village in its:
            villages.setdefault(village, []).append(town)
    # sound-alike targets: names of 3+ characters (two-character ones are often words)
    targets = [n for n in (*town_of_name, *villages) if len(n) >= 3]
    return RegionIndex(
        path=path,
        names=frozenset(n for n in (places.county, places.city, *places.aliases) if n),
        counties=counties,
        town_of_name=town_of_name,
        county_of_town=county_of_town,
        villages={v: tuple(dict.fromkeys(t)) for v, t in villages.items()},
        short_towns=frozenset(short),
        corrector=PlaceCorrector(targets),
    )


def _spoken_town(town: str) -> str | None:
    """黄宅镇 -> 黄宅, 浦阳街道 -> 浦阳, 塘岭畲族乡 -> 塘岭; None when nothing is left."""
    for suffix in ("街道办事处", "街道", "镇", "乡"):
        if town.endswith(suffix):
            head = town[: -len(suffix)]
            if head.endswith("族") and len(head) > 4:  # 畲族乡, 回族乡
                head = head[:-2]
            return head if len(head) >= 2 else None
    return None
