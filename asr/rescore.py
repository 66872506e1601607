"""N-best rescoring: Whisper's beam hypotheses re-ranked with the domain language model.

Whisper base's beam often holds the right text below a more probable wrong one (护兰
above 护栏): each hypothesis is scored ``acoustic + alpha * lm + beta * chars`` with the
acoustic score the beam's log-probability per token (its own ranking), ``lm`` the
character LM's natural-log probability per character, and ``beta`` a per-character
bonus that keeps the LM from preferring short texts. ``alpha`` and ``beta`` are fitted
on development data (``minyin lm fit``) and kept in the LM's card.

The n-best also says where the model is unsure: characters on which the hypotheses
disagree (`unsure_mask`) are where the phonetic corrector may look.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rapidfuzz.distance import Levenshtein

from asr.normalize import scoring_form
from asr.types import Hypothesis, Segment

if TYPE_CHECKING:
    from asr.correct import PhoneticCorrector


class LanguageModel(Protocol):
    def score(self, text: str) -> float:
        """Natural-log probability of the text."""


@dataclass(frozen=True)
class RescoreWeights:
    alpha: float = 0.3
    beta: float = 0.0

    @classmethod
    def from_card(cls, card: dict | None) -> RescoreWeights | None:
        fitted = (card or {}).get("rescoring") or {}
        if not isinstance(fitted, dict) or "alpha" not in fitted:
            return None
        return cls(float(fitted["alpha"]), float(fitted.get("beta", 0.0)))


def combined_score(hyp: Hypothesis, lm_score: float, chars: int,
                   weights: RescoreWeights) -> float:
    """Per token and per character, so that alpha = beta = 0 keeps the beam's own order
    (CTranslate2 ranks by log-probability over length): acoustic + alpha * LM + beta *
    characters."""
    acoustic = hyp.logprob / max(1, hyp.tokens)
    return acoustic + weights.alpha * lm_score / (chars + 1) + weights.beta * chars


def rescore(hypotheses: Sequence[Hypothesis], lm: LanguageModel,
            weights: RescoreWeights) -> tuple[int, list[float]]:
    """The index of the best hypothesis under the combined score, and every score."""
    scores = []
    for hyp in hypotheses:
        chars = len(scoring_form(hyp.text))
        lm_score = lm.score(hyp.text) if chars else 0.0  # simplified by the LM
        scores.append(combined_score(hyp, lm_score, chars, weights))
    # max() keeps the first of equal scores: the beam's own choice wins ties
    best = max(range(len(scores)), key=scores.__getitem__) if scores else 0
    return best, scores


def unsure_mask(chosen: str, others: Sequence[str]) -> list[bool]:
    """Per character of `chosen`: True where some other hypothesis writes it differently.

    Characters every hypothesis agrees on are what the beam is sure of; an edit script
    against each other hypothesis marks the rest (a substitution or deletion marks the
    character itself, an insertion the characters on both sides of it).
    """
    mask = [False] * len(chosen)
    for other in others:
        if other == chosen:
            continue
        for op in Levenshtein.editops(chosen, other):
            if op.tag in ("replace", "delete"):
                if op.src_pos < len(mask):
                    mask[op.src_pos] = True
            else:  # insert before src_pos
                for pos in (op.src_pos - 1, op.src_pos):
                    if 0 <= pos < len(mask):
                        mask[pos] = True
    return mask


@dataclass
class LanguageTools:
    """What the transcriber asks of a language model: rescoring and correction.

    Empty (no LM) by default: then both are no-ops and decoding is plain Whisper.
    `unsure_below`: a window whose average log-probability is below this is unsure
    throughout (the corrector may look anywhere in it); above it, only where the beam's
    hypotheses disagree.
    """

    name: str = ""
    version: str = ""
    rescorer: tuple[LanguageModel, RescoreWeights] | None = None
    corrector: PhoneticCorrector | None = None
    unsure_below: float = -0.5

    def rescore(self, seg: Segment) -> None:
        if self.rescorer is None or len(seg.hypotheses) < 2:
            return
        lm, weights = self.rescorer
        best, _scores = rescore(seg.hypotheses, lm, weights)
        if best:
            chosen = seg.hypotheses[best]
            seg.text = seg.raw_text = chosen.text
            seg.avg_logprob = chosen.logprob / (chosen.tokens + 1)
            seg.flags.append("lm_rescored")

    def correct(self, seg: Segment, normalize: Callable[[str], str]) -> None:
        if self.corrector is None:
            return
        unsure: list[bool] | None = None
        if seg.avg_logprob >= self.unsure_below:
            others = [normalize(h.text) for h in seg.hypotheses]
            unsure = unsure_mask(seg.text, others)
            if not any(unsure):
                return
        text, corrections = self.corrector.correct(seg.text, unsure)
        if corrections:
            seg.text = text
            seg.flags.append("phonetic_corrected")


def load_language_tools(lm_dir: Path) -> LanguageTools:
    """An LM directory (`minyin lm build`) as rescorer and corrector, with the weights
    its card was fitted to (`minyin lm fit`), or the defaults when it was not. Loaded
    once per directory and version of its files (the lexicon index takes seconds)."""
    lm_dir = Path(lm_dir).resolve()
    stamp = tuple((lm_dir / name).stat().st_mtime_ns if (lm_dir / name).exists() else 0
                  for name in ("card.json", "lm.arpa", "lexicon.tsv"))
    return _load_language_tools(lm_dir, stamp)


@lru_cache(maxsize=4)
def _load_language_tools(lm_dir: Path, _stamp: tuple[int, ...]) -> LanguageTools:
    from asr.correct import CorrectionOptions, PhoneticCorrector
    from asr.lm import load_lm, read_card, read_lexicon

    lm = load_lm(lm_dir)
    card = read_card(lm_dir)  # read anew: `minyin lm fit` rewrites it, not the model
    weights = RescoreWeights.from_card(card) or RescoreWeights()
    corrector = None
    if (lm_dir / "lexicon.tsv").is_file():
        words = [word for word, _weight, _source in read_lexicon(lm_dir)]
        corrector = PhoneticCorrector(lm, words, CorrectionOptions.from_card(card))
    fitted = card.get("correction") or {}
    return LanguageTools(name=str(card.get("name") or lm_dir.name),
                         version=str(card.get("version") or ""),
                         rescorer=(lm, weights), corrector=corrector,
                         unsure_below=float(fitted.get("unsure_below",
                                                       LanguageTools.unsure_below)))
