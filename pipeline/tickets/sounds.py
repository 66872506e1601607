"""Sound-alike matching: Whisper writes 没气 for 煤气, 紧盖 for 井盖, 以保 for 医保."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from asr.phonetic import fold, syllables

if TYPE_CHECKING:
    from pipeline.tickets.rules import HomophoneRules, TicketRules


_HAN_ONLY = re.compile(r"[\u4e00-\u9fff]+")
_CLAUSE_CHARS = re.compile(r"[，,。！？!?；;：:、\s]")


@dataclass(frozen=True)
class SoundHit:
    """A stretch of text that sounds like a keyword but is written differently."""

    start: int
    end: int
    heard: str  # what the text says there (没气)
    # it also reads as a negation (没 + 气味) and no presence cue comes before it:
    # good for a possible_urgent flag, not for a verdict
    weak: bool


class SoundIndex:
    """Keywords by the sound of their pinyin; finds their sound-alikes in a text.

    A keyword of at least `min_chars` Han characters (regular expressions and single
    characters stay exact) matches a same-length stretch of Han text when

    * their fuzzy pinyin is equal (zh/z, in/ing, ... as configured; toneless pinyin
      is the strictest case) and at least one character other than a particle (了)
      is the same in the same place (没气 for 煤气, 紧盖 for 井盖, 电频车 for 电瓶车), or
    * their toneless pinyin is equal and the keyword has `loose_from` characters or
      more (拉基统 for 垃圾桶) or is listed in `loose` (以保/衣宝 for 医保),

    unless the stretch shares a character with a keyword or an `ignore` word written
    out in full (烟了 in 冒烟了 is not 淹了, 然气管 in 天然气管道 not 燃气管, 不可 in
    不可以 not 补课).
    """

    def __init__(self, terms: Iterable[str], spec: HomophoneRules) -> None:
        self.spec = spec
        self.mergers = spec.mergers
        self._loose = frozenset(spec.loose)
        self._presence = re.compile(spec.presence_cue) if spec.presence_cue else None
        self._by_key: dict[tuple[str, ...], list[tuple[str, tuple[str, ...]]]] = {}
        skip = set(spec.exact_only)
        self.terms: tuple[str, ...] = ()
        self.lengths: tuple[int, ...] = ()
        self._written: tuple[str, ...] = ()
        if not spec.enabled:
            return
        found = []
        for term in dict.fromkeys(terms):
            if term in skip or len(term) < spec.min_chars or not _HAN_ONLY.fullmatch(term):
                continue
            syl = tuple(syllables(term))
            if all(syl):
                self._by_key.setdefault(self.key(syl), []).append((term, syl))
                found.append(term)
        self.terms = tuple(found)
        self.lengths = tuple(sorted({len(t) for t in found}))
        self._written = (*found, *(w for w in spec.ignore if w not in found))

    def fuzzy(self, syl: str) -> str:
        return fold(syl, self.mergers)

    def key(self, syllables: Sequence[str]) -> tuple[str, ...]:
        return tuple(self.fuzzy(s) for s in syllables)

    def find(self, text: str) -> dict[str, list[SoundHit]]:
        """Keyword -> its sound-alikes in `text` (exact occurrences are not in here)."""
        hits: dict[str, list[SoundHit]] = {}
        if not self._by_key or not text:
            return hits
        syl = syllables(text)
        keys = [self.fuzzy(s) if s else "" for s in syl]
        # 1 where a keyword or an `ignore` word is written out in full
        written = bytearray(len(text))
        for term in self._written:
            at = text.find(term)
            while at >= 0:
                written[at : at + len(term)] = b"\x01" * len(term)
                at = text.find(term, at + 1)
        negation = self.spec.negation_chars
        particles = self.spec.particles
        for length in self.lengths:
            for i in range(len(text) - length + 1):
                candidates = self._by_key.get(tuple(keys[i : i + length]))
                if not candidates:
                    continue
                if any(written[i : i + length]):
                    continue  # a character of a written word belongs to that word
                heard = text[i : i + length]
                for term, term_syl in candidates:
                    if heard == term:
                        continue
                    shared = any(
                        a == b and a not in particles for a, b in zip(heard, term, strict=True)
                    )
                    if not shared and (
                        tuple(syl[i : i + length]) != term_syl
                        or (length < self.spec.loose_from and term not in self._loose)
                    ):
                        continue
                    weak = False
                    if heard[0] in negation and term[0] != heard[0]:
                        before = text[max(0, i - self.spec.presence_lookback) : i]
                        before = _CLAUSE_CHARS.split(before)[-1]
                        weak = not (self._presence and self._presence.search(before))
                    hits.setdefault(term, []).append(SoundHit(i, i + length, heard, weak))
        return hits


@lru_cache(maxsize=16)
def sound_hits(text: str, rules: TicketRules) -> dict[str, list[SoundHit]]:
    """Sound-alikes of every keyword in `text`; worked out once per text and rules
    (kind, category, urgency and summary all ask for the same caller's words)."""
    return rules.sounds.find(text)
