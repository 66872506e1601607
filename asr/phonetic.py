"""How Chinese text sounds: toneless pinyin, folded by the distinctions a speaker or
Whisper loses, and an index of terms by that sound.

Whisper writes what it heard in whatever characters sound right: 普阳 for 浦阳, 没气
for 煤气, 直班 for 值班. Southern speakers (and Whisper on their speech) also merge
sounds Mandarin keeps apart: zh/z, ch/c, sh/s, n/l, r/l, f/h and -ng/-n. Everything
that compares sounds - the gazetteer's place corrector, the ticket keyword matcher,
the phonetic corrector - does it here, with one definition of a syllable and of a
merger:

    syllables("没气")            -> ["mei", "qi"]      (read in context)
    readings("窨")               -> ("xun", "yin")     (every reading, most common first)
    fold("zhang")                -> "zan"              (SOUTHERN: zh -> z, ang -> an)
    PhoneticIndex(["值班"]).lookup("直班") -> ["值班"]

Mergers are pairs (from, to): an initial is replaced whole (zh -> z), a final by its
ending, longest ending first (ang -> an also makes iang -> ian and uang -> uan).
Syllables with no initial (a, er, ou) keep everything as their final.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from pypinyin import Style, lazy_pinyin, pinyin

__all__ = [
    "EXACT",
    "SOUTHERN",
    "Mergers",
    "PhoneticIndex",
    "fold",
    "key_of",
    "reading_keys",
    "readings",
    "sound_key",
    "syllables",
    "text_key",
]

HAN = re.compile(r"[\u4e00-\u9fff]")
_HAN_ONLY = re.compile(r"[\u4e00-\u9fff]+")
# zh/ch/sh before z/c/s
_INITIALS = ("zh", "ch", "sh", *"bpmfdtnlgkhjqxrzcsyw")


@dataclass(frozen=True)
class Mergers:
    """Which sound distinctions to ignore: (from, to) pairs of initials and of finals."""

    initials: tuple[tuple[str, str], ...] = ()
    finals: tuple[tuple[str, str], ...] = ()
    # filled as they are asked for: syllable -> folded syllable (a few thousand at
    # most), character -> its distinct folded readings (some 20k)
    _cache: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _options: dict[str, tuple[str, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def of(cls, initials: dict[str, str] | Iterable[tuple[str, str]] = (),
           finals: dict[str, str] | Iterable[tuple[str, str]] = ()) -> Mergers:
        """Mergers from mappings such as a rule file's ``{zh: z}`` / ``{ing: in}``."""
        def pairs(x: dict[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
            return tuple((str(a), str(b)) for a, b in (x.items() if isinstance(x, dict) else x))

        return cls(pairs(initials), pairs(finals))


EXACT = Mergers()  # toneless pinyin only
SOUTHERN = Mergers(
    initials=(("zh", "z"), ("ch", "c"), ("sh", "s"), ("n", "l"), ("r", "l"), ("f", "h")),
    finals=(("iang", "ian"), ("uang", "uan"), ("ang", "an"), ("eng", "en"), ("ing", "in")),
)


# -- syllables ---------------------------------------------------------------------

_TONELESS: dict[str, str] = {}


def _toneless(syl: str) -> str:
    """'lǜ' -> 'lv', 'zháo' -> 'zhao'; '' for anything that is not a pinyin syllable."""
    out = _TONELESS.get(syl)
    if out is None:
        plain = unicodedata.normalize("NFD", syl).replace("u\u0308", "v")
        plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
        out = _TONELESS[syl] = plain if plain.isascii() and plain.isalpha() else ""
    return out


def _blank(run: str) -> list[str]:
    return [""] * len(run)


def syllables(text: str) -> list[str]:
    """Toneless pinyin of each character of `text` ('' where it is not Han), ü as v.

    pypinyin reads phrases in context (着火 zhao huo, 没气 mei qi), so a heteronym gets
    the reading its neighbours give it. The output is Style.NORMAL's; tone marks are
    stripped here because that is about 20% faster than pypinyin's toneless style.
    """
    if not text:
        return []
    out = lazy_pinyin(text, style=Style.TONE, errors=_blank)
    if len(out) != len(text):  # never seen; keep positions right whatever happens
        out = [next(iter(lazy_pinyin(ch, style=Style.TONE, errors=_blank)), "") for ch in text]
    return [_toneless(syl) for syl in out]


@lru_cache(maxsize=65536)
def readings(char: str) -> tuple[str, ...]:
    """Every toneless reading of a character, the most common first; () if not Han."""
    if not HAN.fullmatch(char):
        return ()
    found = pinyin(char, style=Style.TONE, heteronym=True, errors=_blank)
    out = (_toneless(s) for s in (found[0] if found else ()))
    return tuple(dict.fromkeys(s for s in out if s))


# -- folding -----------------------------------------------------------------------

def fold(syllable: str, mergers: Mergers = SOUTHERN) -> str:
    """The syllable with the mergers' distinctions ignored: 'zhang' -> 'zan' (SOUTHERN)."""
    cache = mergers._cache
    out = cache.get(syllable)
    if out is None:
        initial = next((i for i in _INITIALS if syllable.startswith(i) and syllable != i), "")
        final = syllable[len(initial):]
        initial = next((b for a, b in mergers.initials if a == initial), initial)
        for end, to in sorted(mergers.finals, key=lambda p: len(p[0]), reverse=True):
            if final.endswith(end):
                final = final[: len(final) - len(end)] + to
                break
        out = cache[syllable] = initial + final
    return out


def key_of(syls: Sequence[str], mergers: Mergers = SOUTHERN) -> tuple[str, ...]:
    """Folded syllables ('' stays '')."""
    return tuple(fold(s, mergers) if s else "" for s in syls)


@lru_cache(maxsize=65536)
def _sound_key(char: str, mergers: Mergers) -> str:
    found = readings(char)
    return fold(found[0], mergers) if found else char


def sound_key(char: str, mergers: Mergers = SOUTHERN) -> str:
    """A character's most common reading, folded; a non-Han character is its own key."""
    return _sound_key(char, mergers)


def text_key(text: str, mergers: Mergers = SOUTHERN) -> tuple[str, ...]:
    """The text's syllables as read in context, folded; non-Han characters as themselves."""
    return tuple(fold(s, mergers) if s else ch for s, ch in zip(syllables(text), text, strict=True))


def _folded_readings(char: str, mergers: Mergers) -> tuple[str, ...]:
    """Distinct folded readings of a character, most common first; itself if not Han."""
    out = mergers._options.get(char)
    if out is None:
        found = readings(char)
        out = tuple(dict.fromkeys(fold(s, mergers) for s in found)) if found else (char,)
        mergers._options[char] = out
    return out


def _keys(options: Sequence[tuple[str, ...]], limit: int) -> Iterator[str]:
    return map(" ".join, itertools.islice(itertools.product(*options), limit))


def reading_keys(text: str, mergers: Mergers = SOUTHERN, limit: int = 8) -> Iterator[str]:
    """The folded keys of `text` under every combination of its characters' readings,
    as space-joined strings, most common readings first, at most `limit` of them
    (a text of heteronyms would otherwise have hundreds: 差 alone has five)."""
    return _keys([_folded_readings(ch, mergers) for ch in text], limit)


# -- the index ---------------------------------------------------------------------

_HEAD_FILTER_MAX_KEYS = 100_000


class PhoneticIndex:
    """Terms by the folded key of their syllables; heteronyms indexed under each reading
    combination (bounded by `max_readings`).

    Measured over jieba 0.42's dictionary (349,046 words, 335,553 of 2-6 Han
    characters; 60% hold a heteronym; 618k keys, 60 MB) on the dev machine (2 cores
    shared with other work): built in 2.9-3.2 s of CPU time, reading cache warm or
    cold (3-5 s wall at load 2-4); `lookup` of a 2-4 character word about 14 µs.
    """

    def __init__(self, terms: Iterable[str], mergers: Mergers = SOUTHERN, min_chars: int = 2,
                 max_chars: int = 6, max_readings: int = 8) -> None:
        self.mergers = mergers
        self.max_readings = max_readings
        # key -> a term, or a list of terms when several share it (most keys have one)
        self._by_key: dict[str, str | list[str]] = {}
        by_key = self._by_key
        self._heads: set[tuple[str, ...]] | None = None  # see `_head_filter`
        options = mergers._options
        product, islice = itertools.product, itertools.islice
        count = 0
        lengths: set[int] = set()
        for term in dict.fromkeys(terms):
            if not (min_chars <= len(term) <= max_chars) or not _HAN_ONLY.fullmatch(term):
                continue
            count += 1
            lengths.add(len(term))
            try:
                opts = [options[ch] for ch in term]
            except KeyError:  # a character not seen yet
                opts = [_folded_readings(ch, mergers) for ch in term]
            for key in map(" ".join, islice(product(*opts), max_readings)):
                have = by_key.get(key)
                if have is None:
                    by_key[key] = term
                elif isinstance(have, str):
                    if have != term:
                        by_key[key] = [have, term]
                elif term not in have:
                    have.append(term)
        self._count = count
        self.lengths: tuple[int, ...] = tuple(sorted(lengths, reverse=True))

    def __len__(self) -> int:
        return self._count

    def _head_filter(self) -> set[tuple[str, ...]] | None:
        """The first two folded syllables of every key, for a small index: most windows
        of a text fail there before their keys are built (a place corrector's few
        hundred names: 8 ms -> 1 ms for a 50-character text). A large index has too
        many heads for the check to pay; it builds no filter (None)."""
        if self._heads is None and len(self._by_key) <= _HEAD_FILTER_MAX_KEYS:
            self._heads = {tuple(key.split(" ", 2)[:2]) for key in self._by_key}
        return self._heads

    def __bool__(self) -> bool:
        return self._count > 0

    def lookup(self, heard: str) -> list[str]:
        """Terms of the same length whose key equals heard's key under any reading of
        either, heard itself excluded; first found first."""
        if len(heard) not in self.lengths:
            return []
        opts = [_folded_readings(ch, self.mergers) for ch in heard]
        heads = self._head_filter()
        if heads is not None and not any(h in heads for h in itertools.product(*opts[:2])):
            return []
        out: list[str] = []
        for key in _keys(opts, self.max_readings):
            have = self._by_key.get(key)
            if have is None:
                continue
            for term in (have,) if isinstance(have, str) else have:
                if term != heard and term not in out:
                    out.append(term)
        return out
