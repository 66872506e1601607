"""Local place names put back where Whisper wrote a similar-sounding wrong one.

Whisper base knows few county-level names: it writes 普阳街道 for 浦阳街道, 黄寨镇 for
黄宅镇, 天和区 for 天河区. A dialect profile lists the real local names (its `gazetteer`);
`PlaceCorrector` replaces a run of Chinese characters whose toneless pinyin matches a
listed name under the sound mergers of southern speakers and of Whisper's own
confusions (zh/z, ch/c, sh/s, n/l, f/h, r/l, -n/-ng), and only when

- the name has at least three characters (two-character words are too often ordinary
  words: 和平, 新光),
- the run shares at least one character with the name in the same place (a whole
  different word that happens to sound alike is left alone),
- the run is not itself a listed name (a different real place).

Longer names are tried first; replacements never overlap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from pypinyin import Style, lazy_pinyin

MIN_NAME_CHARS = 3
_HAN_RUN = re.compile(r"[\u4e00-\u9fff]+")
_INITIAL_MERGE = (("zh", "z"), ("ch", "c"), ("sh", "s"), ("n", "l"), ("r", "l"), ("f", "h"))
_INITIALS = ("zh", "ch", "sh", *"bpmfdtnlgkhjqxrzcsyw")


@lru_cache(maxsize=65536)
def sound_key(char: str) -> str:
    """A character's toneless syllable, folded by the mergers above."""
    syl = lazy_pinyin(char, style=Style.NORMAL, errors="ignore")
    if not syl:
        return char
    s = syl[0].replace("ü", "v")
    initial = next((i for i in _INITIALS if s.startswith(i)), "")
    final = s[len(initial):]
    for a, b in _INITIAL_MERGE:
        if initial == a:
            initial = b
    if final.endswith("ng") and final not in ("ong", "iong"):
        final = final[:-1]  # -ng -> -n: ang/an, eng/en, ing/in, iang/ian, uang/uan
    return initial + final


def _key(text: str) -> tuple[str, ...]:
    return tuple(sound_key(ch) for ch in text)


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
        usable = [n for n in names if _HAN_RUN.fullmatch(n) and len(n) >= MIN_NAME_CHARS]
        self._by_length: dict[int, dict[tuple[str, ...], list[str]]] = {}
        for name in sorted(usable, key=lambda n: (-len(n), n)):
            self._by_length.setdefault(len(name), {}).setdefault(_key(name), []).append(name)

    def __bool__(self) -> bool:
        return bool(self._by_length)

    def find(self, text: str) -> list[Correction]:
        found: list[Correction] = []
        taken = [False] * len(text)
        for length in sorted(self._by_length, reverse=True):
            table = self._by_length[length]
            for run in _HAN_RUN.finditer(text):
                for i in range(run.start(), run.end() - length + 1):
                    if any(taken[i:i + length]):
                        continue
                    heard = text[i:i + length]
                    if heard in self.names:
                        taken[i:i + length] = [True] * length
                        continue
                    name = _best(heard, table.get(_key(heard), ()))
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
