"""Local place names put back where Whisper wrote a similar-sounding wrong one.

Whisper base knows few county-level names: it writes 普阳街道 for 浦阳街道, 黄寨镇 for
黄宅镇, 天和区 for 天河区. A dialect profile lists the real local names (its `gazetteer`),
a deployment's region adds its towns and villages (`region_names`, from jionlp's
packaged data); `PlaceCorrector` replaces a run of Chinese characters whose toneless
pinyin matches a listed name under the sound mergers of southern speakers and of
Whisper's own confusions (`asr.phonetic.SOUTHERN`: zh/z, ch/c, sh/s, n/l, f/h, r/l,
-n/-ng; any reading of a heteronym), and only when

- the name has at least three characters (two-character words are too often ordinary
  words: 和平, 新光),
- the run shares at least one character with the name in the same place (a whole
  different word that happens to sound alike is left alone),
- the run is not itself a listed name (a different real place).

Longer names are tried first; replacements never overlap.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from asr.phonetic import SOUTHERN, PhoneticIndex, sound_key, text_key

__all__ = [
    "Correction",
    "GazetteerError",
    "PlaceCorrector",
    "RegionPlaces",
    "country_divisions",
    "region_names",
    "sound_key",
    "text_key",
]

MIN_NAME_CHARS = 3
MAX_NAME_CHARS = 16
_HAN_RUN = re.compile(r"[\u4e00-\u9fff]+")


@dataclass(frozen=True)
class Correction:
    start: int
    end: int
    heard: str
    name: str


class PlaceCorrector:
    def __init__(self, names: Iterable[str]) -> None:
        names = {n.strip() for n in names if n and n.strip()}
        self.names = frozenset(names)
        self._index = PhoneticIndex(sorted(names), SOUTHERN, min_chars=MIN_NAME_CHARS,
                                    max_chars=MAX_NAME_CHARS)

    def __bool__(self) -> bool:
        return bool(self._index)

    def find(self, text: str) -> list[Correction]:
        found: list[Correction] = []
        taken = [False] * len(text)
        for length in self._index.lengths:
            for run in _HAN_RUN.finditer(text):
                for i in range(run.start(), run.end() - length + 1):
                    if any(taken[i:i + length]):
                        continue
                    heard = text[i:i + length]
                    if heard in self.names:
                        taken[i:i + length] = [True] * length
                        continue
                    name = _best(heard, self._index.lookup(heard))
                    if name is not None:
                        found.append(Correction(i, i + length, heard, name))
                        taken[i:i + length] = [True] * length
        return sorted(found, key=lambda c: c.start)

    def correct(self, text: str) -> str:
        if not self:
            return text
        out, last = [], 0
        for c in self.find(text):
            out.append(text[last:c.start])
            out.append(c.name)
            last = c.end
        out.append(text[last:])
        return "".join(out)


def _best(heard: str, candidates: Sequence[str]) -> str | None:
    """The candidate sharing most characters in place with what was heard (at least one)."""
    best, best_shared = None, 0
    for name in candidates:
        shared = sum(a == b for a, b in zip(heard, name, strict=True))
        if shared > best_shared:
            best, best_shared = name, shared
    return best


# --------------------------------------------------------------------------------------
# A region's towns and villages, from jionlp's packaged data
# --------------------------------------------------------------------------------------
#
# jionlp ships china_location.txt (also as .zip; jionlp unzips it on first import):
# one line per division, indented by level - province, city, county with
# "name<TAB>code<TAB>alias", then towns (乡镇街道, 43,104 in all) and villages
# (村/社区, 657,807) as bare names. The file is read without importing jionlp (an
# import of several seconds): one pass over its county lines finds each county's
# stretch of the file, and only the asked-for region's stretch is parsed.
#
# Measured on the dev machine (2 cores shared with other work): the first region of a
# process takes about 0.3 s (reading the 12 MB file and finding its 3,427 provinces,
# cities and counties), any county after that about 10 ms; each region is cached.
#
# How coarse a region may be: a county (县/区/县级市, or a city without counties such
# as 东莞市) gives its towns and villages; a city gives its counties and the towns of
# all of them (no villages: a city's thousands of village names repeat from county to
# county, and as correction targets they would turn ordinary words into villages); a
# province is refused: its thousand-odd towns are too many names that sound like
# each other and like ordinary words.


class GazetteerError(ValueError):
    pass


@dataclass(frozen=True)
class RegionPlaces:
    """A region's administrative names: where it is and what lies in it."""

    province: str
    city: str | None
    county: str | None
    code: str  # the division's 6-digit administrative code
    counties: tuple[str, ...]  # a city's counties; () for a county
    towns: tuple[str, ...]  # 乡镇街道, full names (浦阳街道, 黄宅镇)
    villages: tuple[str, ...]  # 村 and 社区, full names; () for a city
    # what people call them (浦阳 for 浦阳街道, 黄宅 for 黄宅镇), where that differs;
    # those under MIN_NAME_CHARS characters never become correction targets
    spoken: tuple[str, ...]
    aliases: tuple[str, ...] = ()  # jionlp's short names of the region itself (浦江)
    # (county, town, its villages) for every town, in the data's order: which town a
    # village lies in (names repeat across towns: 曙光村); villages () for a city
    tree: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @property
    def name(self) -> str:
        """The region as one string, province first (浙江省金华市浦江县)."""
        parts = [self.province]
        if self.city and self.city != self.province:
            parts.append(self.city)
        if self.county and self.county not in _PSEUDO_COUNTIES:
            parts.append(self.county)
        return "".join(parts)

    def all_names(self) -> tuple[str, ...]:
        """Every name, full and spoken, without repeats: the region's own, its
        counties', towns' and villages'."""
        own = (self.province, self.city, self.county, *self.aliases)
        names = (*own, *self.counties, *self.towns, *self.villages, *self.spoken)
        return tuple(dict.fromkeys(n for n in names if n and n not in _PSEUDO_COUNTIES))


@dataclass(frozen=True)
class _Division:
    level: int  # 0 province, 1 city, 2 county
    name: str
    code: str
    alias: tuple[str, ...]
    parent: int | None  # index of the enclosing division
    start: int  # byte offsets of its own towns and villages (counties only)
    end: int


# a county of the data that stands for "the city itself" (东莞市, 中山市)
_PSEUDO_COUNTIES = frozenset({"市直辖行政区划"})
# the code field of a province, city or county line: the one cheap thing to look for
# (0.07 s over the file; a whole-line pattern takes 0.2-0.3 s)
_DIVISION_CODE = re.compile(rb"\t\d{6}\t")
_DATA_NAME = "china_location"
# a town's or village's spoken name: the shortest head of two characters or more
# before one of these endings (浦阳|街道, 郑家坞|镇, 塘岭|畲族乡, 幸福新|村)
_TOWN_SUFFIX = re.compile(r"(.{2,}?)(?:(?:[\u4e00-\u9fff]{1,3}族)*乡|街道办事处|街道|镇|苏木)")
_VILLAGE_SUFFIX = re.compile(r"(.{2,}?)(?:村民委员会|居民委员会|村委会|居委会|社区|村)")


def _jionlp_dictionary() -> Path:
    spec = importlib.util.find_spec("jionlp")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise GazetteerError("region names need jionlp (pip install jionlp)")
    return Path(next(iter(spec.submodule_search_locations))) / "dictionary"


@lru_cache(maxsize=1)
def _location_bytes() -> bytes:
    folder = _jionlp_dictionary()
    text = folder / f"{_DATA_NAME}.txt"
    if text.is_file():
        return text.read_bytes()
    packed = folder / f"{_DATA_NAME}.zip"
    if packed.is_file():
        with zipfile.ZipFile(packed) as zf:
            return zf.read(next(n for n in zf.namelist() if n.endswith(".txt")))
    raise GazetteerError(f"jionlp's {_DATA_NAME} data is missing from {folder}")


@lru_cache(maxsize=1)
def _divisions() -> tuple[_Division, ...]:
    data = _location_bytes()
    out: list[_Division] = []
    current: list[int | None] = [None, None, None]
    for m in _DIVISION_CODE.finditer(data):
        line_start = data.rfind(b"\n", 0, m.start()) + 1
        line_end = data.find(b"\n", m.end())
        line_end = len(data) if line_end < 0 else line_end
        indent, name, code, alias_field = _split_division(data[line_start:line_end])
        level = len(indent)
        if level > 2:
            continue
        if out and out[-1].level == 2 and out[-1].end < 0:
            last = out[-1]
            out[-1] = _Division(last.level, last.name, last.code, last.alias, last.parent,
                                last.start, line_start)
        parent = current[level - 1] if level else None
        alias = tuple(a for a in alias_field.split("/") if a)
        start, end = (line_end, -1) if level == 2 else (0, 0)
        out.append(_Division(level, name, code, alias, parent, start, end))
        current[level] = len(out) - 1
        current[level + 1:] = [None] * (2 - level)
    if out and out[-1].end < 0:
        last = out[-1]
        out[-1] = _Division(last.level, last.name, last.code, last.alias, last.parent,
                            last.start, len(data))
    return tuple(out)


def _split_division(line: bytes) -> tuple[str, str, str, str]:
    """b"\\t\\t浦江县\\t330726\\t浦江\\r" -> ("\\t\\t", "浦江县", "330726", "浦江")."""
    text = line.decode("utf-8").rstrip("\r")
    body = text.lstrip("\t")
    name, code, alias = [*body.split("\t"), "", ""][:3]
    return text[: len(text) - len(body)], name, code, alias


def _path(divs: Sequence[_Division], i: int) -> list[_Division]:
    path = []
    at: int | None = i
    while at is not None:
        path.append(divs[at])
        at = divs[at].parent
    return path[::-1]


def _consumes(region: str, path: Sequence[_Division]) -> int | None:
    """How many of the path's levels `region` names, in order, if it names exactly the
    path's last one (levels above may be left out; short names count: 浙江金华浦江)."""
    pos = used = 0
    for n, div in enumerate(path):
        names = sorted({div.name, *div.alias}, key=len, reverse=True)
        hit = next((name for name in names if region.startswith(name, pos)), None)
        if hit is None:
            if n == len(path) - 1:
                return None
            continue
        pos += len(hit)
        used += 1
    return used if pos == len(region) else None


def _full_name(divs: Sequence[_Division], i: int) -> str:
    names: list[str] = []
    for div in _path(divs, i):
        if div.name not in names and div.name not in _PSEUDO_COUNTIES:
            names.append(div.name)
    return "".join(names)


def _find(region: str) -> int:
    divs = _divisions()
    best: list[tuple[int, int]] = []
    for i, div in enumerate(divs):
        if not (region.endswith(div.name) or any(region.endswith(a) for a in div.alias)):
            continue
        used = _consumes(region, _path(divs, i))
        if used is not None:
            best.append((used, i))
    if not best:
        names = {_full_name(divs, i): i for i in range(len(divs))}
        close = difflib.get_close_matches(region, list(names), n=5, cutoff=0.6)
        if not close:  # perhaps only the last level is misspelt or named alone
            last = {d.name: _full_name(divs, i) for i, d in enumerate(divs)}
            tail = region[-max(3, len(region) // 3):]
            close = [last[n] for n in difflib.get_close_matches(tail, list(last), n=5)]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GazetteerError(f"unknown region {region!r} (not in jionlp's location data){hint}")
    top = max(used for used, _ in best)
    chosen = [i for used, i in best if used == top]
    # a city whose only "county" is the city itself: the name fits both; take the city
    chosen = [i for i in chosen if divs[i].name not in _PSEUDO_COUNTIES] or chosen
    if len(chosen) > 1:
        raise GazetteerError(
            f"region {region!r} is ambiguous: {', '.join(_full_name(divs, i) for i in chosen)}"
        )
    return chosen[0]


def _town_tree(div: _Division) -> list[tuple[str, list[str]]]:
    """(town, its villages) for each town of a county."""
    tree: list[tuple[str, list[str]]] = []
    for line in _location_bytes()[div.start:div.end].decode("utf-8").splitlines():
        name = line.strip()
        if not name:
            continue
        if line.startswith("\t\t\t\t"):
            if tree:
                tree[-1][1].append(name)
        elif line.startswith("\t\t\t"):
            tree.append((name, []))
    return tree


def _spoken(names: Iterable[str], suffix: re.Pattern[str]) -> list[str]:
    return [m.group(1) for m in map(suffix.fullmatch, names) if m]


@lru_cache(maxsize=1)
def country_divisions() -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """Every province, city and county of jionlp's data as (path of full names, province
    first; its short names): (("浙江省", "金华市", "浦江县"), ("浦江",)). The data's
    stand-ins for "the city itself" (市直辖行政区划) are left out of paths."""
    divs = _divisions()
    out = []
    for i, div in enumerate(divs):
        if "直辖行政区划" in div.name:
            continue
        path = tuple(d.name for d in _path(divs, i) if "直辖行政区划" not in d.name)
        out.append((path, div.alias))
    return tuple(out)


@lru_cache(maxsize=16)
def region_names(region: str) -> RegionPlaces:
    """The towns and villages of a county (浙江省金华市浦江县), or the counties and towns
    of a city (广东省广州市); levels above may be left out or shortened (浦江县,
    浙江金华浦江) where that leaves no doubt. A province, or a name not in jionlp's
    data, is a `GazetteerError` (with close matches for a misspelt one)."""
    key = re.sub(r"[\s/,，、·]+", "", region or "")
    if not key:
        raise GazetteerError("no region given")
    divs = _divisions()
    i = _find(key)
    div = divs[i]
    path = _path(divs, i)
    if div.level == 0:
        raise GazetteerError(
            f"region {region!r} is a province: name a city or a county of it "
            "(a province's towns are too many names to correct towards)"
        )
    counties = [j for j, d in enumerate(divs) if d.parent == i] if div.level == 1 else [i]
    city_as_county = div.level == 1 and all(divs[j].name in _PSEUDO_COUNTIES for j in counties)
    towns: list[str] = []
    villages: list[str] = []
    tree: list[tuple[str, str, tuple[str, ...]]] = []
    for j in counties:
        for town, its in _town_tree(divs[j]):
            towns.append(town)
            villages += its
            tree.append((divs[j].name, town, tuple(its)))
    if div.level == 1 and not city_as_county:
        villages = []
        tree = [(county, town, ()) for county, town, _ in tree]
    towns = list(dict.fromkeys(towns))
    villages = list(dict.fromkeys(villages))
    return RegionPlaces(
        province=path[0].name,
        city=path[1].name if len(path) > 1 else None,
        county=div.name if div.level == 2 else None,
        code=div.code,
        counties=tuple(divs[j].name for j in counties if divs[j].name not in _PSEUDO_COUNTIES)
        if div.level == 1 else (),
        towns=tuple(towns),
        villages=tuple(villages),
        spoken=tuple(dict.fromkeys(
            [*_spoken(towns, _TOWN_SUFFIX), *_spoken(villages, _VILLAGE_SUFFIX)]
        )),
        aliases=div.alias,
        tree=tuple(tree),
    )
