"""Phonetic correction beyond the beam: sound-alike words put right by the language model.

Whisper base writes what it heard as the most common characters of that sound: 护兰 for
护栏, 直班 for 值班, 苍营文字 for 苍蝇蚊子. Often no hypothesis of the beam has the right
word, but it is one substitution away: a lexicon word (general, complaint term, place
name) with the same syllables under the southern mergers (`asr.phonetic.SOUTHERN`).

For each stretch of Han text the corrector looks up the lexicon words that sound the
same, scores each substitution by the change in the character LM's log-probability of
the sentence (exactly, from the n-grams that overlap the stretch), and applies the best
ones whose gain clears `threshold` nats plus `per_char` for each character changed,
never overlapping, and only where the stretch is unsure: the beam's hypotheses disagree
there, or the window's acoustic confidence is low. Text the beam is sure of stays as it
was, so a correct transcript is very rarely touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from asr.phonetic import SOUTHERN, Mergers, PhoneticIndex

_HAN_RUN = re.compile(r"[\u4e00-\u9fff]+")


class SentenceModel(Protocol):
    order: int

    def score_sentence(self, tokens: list[str], bos: bool = True, eos: bool = True) -> float:
        """Natural-log probability of the tokens."""


@dataclass(frozen=True)
class CorrectionOptions:
    # minimum LM gain (natural log) of a substitution, and what each changed character
    # adds to it; fitted by `minyin lm fit` and kept in the LM's card
    # (unfitted: 4 + 4 per character, which changed 0.05% of correct 12345 text)
    threshold: float = 4.0
    per_char: float = 4.0
    max_word: int = 4  # longest lexicon word tried (place names may be longer)

    @classmethod
    def from_card(cls, card: dict | None) -> CorrectionOptions | None:
        fitted = (card or {}).get("correction") or {}
        if not isinstance(fitted, dict) or "threshold" not in fitted:
            return None
        return cls(float(fitted["threshold"]), float(fitted.get("per_char", 4.0)),
                   int(fitted.get("max_word", 4)))


@dataclass(frozen=True)
class Correction:
    start: int
    end: int
    heard: str
    word: str
    gain: float  # LM log-probability gained, natural log
    changed: int = 0  # characters that differ


class PhoneticCorrector:
    def __init__(self, lm: SentenceModel, words: Iterable[str],
                 options: CorrectionOptions | None = None,
                 mergers: Mergers = SOUTHERN) -> None:
        self.lm = lm
        self.options = options or CorrectionOptions()
        # one reading per character (pypinyin's first): with every heteronym reading
        # (还 hai/huan/fu) correct text matched far too much (还对 -> 不对): on 1,000
        # correct 12345 sentences, all unsure, 2.8% of characters changed at threshold
        # 2 + 3 per character, 0.29% with one reading
        self.index = PhoneticIndex(words, mergers=mergers, min_chars=2,
                                   max_chars=max(2, self.options.max_word), max_readings=1)
        self._lengths = tuple(n for n in self.index.lengths if n <= self.options.max_word)

    def candidates(self, text: str, unsure: Sequence[bool] | None = None
                   ) -> list[Correction]:
        """Every sound-alike substitution that raises the LM score, unfiltered;
        `unsure[i]` says character i may change (None: every character may)."""
        found: list[Correction] = []
        k = max(1, self.lm.order - 1)
        for run in _HAN_RUN.finditer(text):
            a, b = run.span()
            for length in self._lengths:
                for i in range(a, b - length + 1):
                    if unsure is not None and not any(unsure[i:i + length]):
                        continue
                    heard = text[i:i + length]
                    words = self.index.lookup(heard)
                    if not words:
                        continue
                    # only the n-grams overlapping the stretch change: score k
                    # characters either side (the sentence's ends where they are near)
                    left = text[max(a, i - k):i]
                    right = text[i + length:min(b, i + length + k)]
                    bos, eos = i - k <= a, i + length + k >= b
                    base = self.lm.score_sentence(list(left + heard + right), bos, eos)
                    for word in words:
                        gain = self.lm.score_sentence(list(left + word + right), bos, eos) - base
                        if gain > 0:
                            changed = sum(x != y for x, y in zip(word, heard, strict=True))
                            found.append(Correction(i, i + length, heard, word,
                                                    round(gain, 3), changed))
        return found

    def select(self, candidates: Sequence[Correction],
               options: CorrectionOptions | None = None) -> list[Correction]:
        """The candidates whose gain clears the threshold, best first, none overlapping."""
        opts = options or self.options
        passing = [c for c in candidates
                   if c.gain > opts.threshold + opts.per_char * c.changed]
        return _non_overlapping(passing)

    def find(self, text: str, unsure: Sequence[bool] | None = None) -> list[Correction]:
        return self.select(self.candidates(text, unsure))

    def correct(self, text: str, unsure: Sequence[bool] | None = None
                ) -> tuple[str, list[Correction]]:
        return apply(text, self.find(text, unsure))


def apply(text: str, corrections: Sequence[Correction]) -> tuple[str, list[Correction]]:
    """`text` with the (non-overlapping, ordered) corrections made."""
    out, last = [], 0
    for c in corrections:
        out.append(text[last:c.start])
        out.append(c.word)
        last = c.end
    out.append(text[last:])
    return "".join(out), list(corrections)


def _non_overlapping(found: Sequence[Correction]) -> list[Correction]:
    """The largest gains first; a substitution overlapping a taken one is left out."""
    taken: list[Correction] = []
    for c in sorted(found, key=lambda c: -c.gain):
        if all(c.end <= t.start or c.start >= t.end for t in taken):
            taken.append(c)
    return sorted(taken, key=lambda c: c.start)
