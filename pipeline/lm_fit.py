"""Fitting an LM's rescoring weights and correction threshold on development audio.

``minyin lm fit LM MANIFEST...`` transcribes the clips once, keeping every window's
n-best, then searches offline:

1. rescoring ``alpha`` (LM weight) and ``beta`` (per-character bonus): the pair with the
   fewest character errors (numbers in one form) over the set;
2. the phonetic corrector's ``threshold``, ``per_char`` and ``unsure_below`` on the text
   that rescoring chose, subject to a false-correction limit on clean text: on
   sentences known to be right (``clean_texts``, e.g. a county's past work orders), at
   most ``max_false_rate`` of their characters may be changed.

The result goes into the LM's card (``rescoring``, ``correction``), with the dev CER
before (no LM) and after, the oracle CER (best of the beam) and the set's size.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from asr.correct import Correction, CorrectionOptions, PhoneticCorrector, apply
from asr.lm import update_card
from asr.normalize import normalize_text, scoring_form
from asr.rescore import (
    LanguageTools,
    RescoreWeights,
    combined_score,
    load_language_tools,
    unsure_mask,
)
from asr.types import Hypothesis
from pipeline.evaluate import ManifestEntry, best_of_beam, char_errors
from pipeline.process import VoicePipeline

log = logging.getLogger(__name__)

ALPHAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
BETAS = (0.0, 0.005, 0.01, 0.02, 0.04)
THRESHOLDS = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
PER_CHAR = (0.0, 2.0, 3.0, 4.0, 6.0)
# Without clean text to measure false corrections on, the least a one-character change
# must gain (threshold + per_char, nats) and the least each further changed character
# adds. Measured on 1,000 correct 12345 sentences with every character unsure
# (tests/test_false_correction.py): 4 + 3 per character changed 0.19% of their
# characters, 6 + 2 0.14%, 4 + 4 0.05%, 2 + 4 0.29%, 8 + 0 0.40% (区住建 -> 驱逐舰);
# 8 and 2 leave room for text unlike these.
MIN_ONE_CHAR_GAIN = 8.0
MIN_PER_CHAR = 2.0
UNSURE_BELOW = (-0.3, -0.5, -0.8, -1.2, -99.0)
MAX_FALSE_RATE = 0.002  # the limit: 0.2 % of correct characters changed


_SENTENCE_END = re.compile(r"[。！？!?；;\n]+")
_HAN = re.compile(r"[\u4e00-\u9fff]")


def sentences_of(text: str, min_han: int = 4) -> list[str]:
    """The sentences of a clean text with at least `min_han` Han characters: what the
    false-correction limit is measured on."""
    return [part.strip() for part in _SENTENCE_END.split(text)
            if len(_HAN.findall(part)) >= min_han]


@dataclass
class WindowNBest:
    hypotheses: list[Hypothesis]
    lm_scores: list[float] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    avg_logprob: float = 0.0
    fixed: str | None = None  # the retry path left one text, no beam


@dataclass
class ClipNBest:
    reference: str
    windows: list[WindowNBest]


def collect(pipe: VoicePipeline, entries: Sequence[ManifestEntry],
            tools: LanguageTools, progress: Callable[[str], None] | None = None
            ) -> list[ClipNBest]:
    """Transcribe each clip once with the n-best kept (nothing rescored or corrected)."""
    lm = tools.rescorer[0] if tools.rescorer else None
    if lm is None:
        raise ValueError("fitting needs a language model")
    keep = LanguageTools(name=tools.name, version=tools.version,
                         rescorer=None, corrector=None)
    transcriber = pipe.transcriber
    transcriber.use_language_model(keep)
    transcriber.options = replace(transcriber.options,
                                  num_hypotheses=transcriber.options.beam_size)
    clips = []
    try:
        for entry in entries:
            outcome = pipe.process(entry.audio, name=entry.audio.name,
                                   dialect=entry.extra.get("dialect"))
            windows = []
            for seg in outcome.transcript.segments:
                hyps = seg.hypotheses or [Hypothesis(seg.raw_text, 0.0, 0)]
                w = WindowNBest(hyps, avg_logprob=seg.avg_logprob,
                                fixed=None if seg.hypotheses else seg.text)
                w.lm_scores = [lm.score(h.text) for h in hyps]
                w.chars = [len(scoring_form(h.text)) for h in hyps]
                windows.append(w)
            clips.append(ClipNBest(entry.text, windows))
            if progress:
                progress(entry.audio.name)
    finally:
        transcriber.use_language_model(tools)
    return clips


def choose(window: WindowNBest, weights: RescoreWeights | None) -> int:
    if weights is None or window.fixed is not None or len(window.hypotheses) < 2:
        return 0
    scores = [combined_score(h, lm, n, weights)
              for h, lm, n in zip(window.hypotheses, window.lm_scores, window.chars,
                                  strict=True)]
    return max(range(len(scores)), key=scores.__getitem__)


def _window_text(window: WindowNBest, index: int) -> str:
    if window.fixed is not None:
        return window.fixed
    return normalize_text(window.hypotheses[index].text)


def _errors(clips: Iterable[ClipNBest], texts: Iterable[str]) -> tuple[int, int]:
    errors = chars = 0
    for clip, text in zip(clips, texts, strict=True):
        e, n = char_errors(clip.reference, text, numbers=True)
        errors, chars = errors + e, chars + n
    return errors, chars


def fit_rescoring(clips: Sequence[ClipNBest]) -> tuple[RescoreWeights, dict]:
    def texts(weights: RescoreWeights | None) -> list[str]:
        return ["".join(_window_text(w, choose(w, weights)) for w in clip.windows)
                for clip in clips]

    before, chars = _errors(clips, texts(None))
    best, best_errors = RescoreWeights(0.0, 0.0), None
    for alpha, beta in itertools.product(ALPHAS, BETAS):
        weights = RescoreWeights(alpha, beta)
        errors, _ = _errors(clips, texts(weights))
        # ties go to the smaller weights: the least change that does as well
        if best_errors is None or errors < best_errors:
            best, best_errors = weights, errors
    oracle = 0
    for clip in clips:
        windows = [[_window_text(w, j) for j in range(len(w.hypotheses))]
                   for w in clip.windows]
        oracle += char_errors(clip.reference, best_of_beam(clip.reference, windows),
                              numbers=True)[0]
    report = {"ref_chars": chars, "cer_first": round(before / max(1, chars), 4),
              "cer_rescored": round((best_errors or 0) / max(1, chars), 4),
              "cer_oracle": round(oracle / max(1, chars), 4)}
    return best, report


def _false_rate(corrector: PhoneticCorrector, candidates: list[tuple[str, list[Correction]]],
                options: CorrectionOptions) -> float:
    changed = total = 0
    for text, cands in candidates:
        chosen = corrector.select(cands, options)
        changed += sum(c.changed for c in chosen)
        total += len(scoring_form(text))
    return changed / max(1, total)


def fit_correction(clips: Sequence[ClipNBest], weights: RescoreWeights,
                   corrector: PhoneticCorrector, clean_texts: Sequence[str] = (),
                   max_false_rate: float = MAX_FALSE_RATE) -> tuple[CorrectionOptions, dict]:
    """The corrector's settings with the fewest dev errors whose false-correction rate on
    `clean_texts` stays within `max_false_rate` (every character treated as unsure)."""
    # candidates once per window and gate; every setting only filters them
    per_gate: dict[float, list[list[tuple[str, list[Correction]]]]] = {}
    for gate in UNSURE_BELOW:
        rows = []
        for clip in clips:
            row = []
            for w in clip.windows:
                index = choose(w, weights)
                text = _window_text(w, index)
                if w.fixed is not None or w.avg_logprob < gate:
                    unsure = None
                else:
                    others = [normalize_text(h.text) for h in w.hypotheses]
                    unsure = unsure_mask(text, others)
                row.append((text, corrector.candidates(text, unsure)
                            if unsure is None or any(unsure) else []))
            rows.append(row)
        per_gate[gate] = rows
    clean = [(t, corrector.candidates(t, None)) for t in clean_texts]
    base_texts = ["".join(t for t, _ in row) for row in per_gate[UNSURE_BELOW[0]]]
    before, chars = _errors(clips, base_texts)
    best: tuple[CorrectionOptions, float] | None = None
    best_errors = before
    report: dict = {"cer_before": round(before / max(1, chars), 4)}
    for threshold, per_char in itertools.product(THRESHOLDS, PER_CHAR):
        options = CorrectionOptions(threshold, per_char, corrector.options.max_word)
        if not clean and (threshold + per_char < MIN_ONE_CHAR_GAIN
                          or per_char < MIN_PER_CHAR):
            continue
        false_rate = _false_rate(corrector, clean, options) if clean else 0.0
        if false_rate > max_false_rate:
            continue
        for gate, rows in per_gate.items():
            texts = ["".join(apply(t, corrector.select(c, options))[0] for t, c in row)
                     for row in rows]
            errors, _ = _errors(clips, texts)
            if errors < best_errors:
                best, best_errors = (options, gate), errors
                report.update(false_rate=round(false_rate, 5))
    if best is None:
        # nothing helped on this set: keep the corrector but make it hard to trigger
        options = CorrectionOptions(max(THRESHOLDS), max(PER_CHAR), corrector.options.max_word)
        report.update(cer_after=report["cer_before"], helped=False,
                      false_rate=round(_false_rate(corrector, clean, options), 5)
                      if clean else None)
        return options, {**report, "unsure_below": UNSURE_BELOW[0]}
    report.update(cer_after=round(best_errors / max(1, chars), 4), helped=True,
                  unsure_below=best[1])
    return best[0], report


def fit(pipe: VoicePipeline, lm_dir: Path, entries: Sequence[ManifestEntry], *,
        clean_texts: Sequence[str] = (), max_false_rate: float = MAX_FALSE_RATE,
        manifest: str = "", progress: Callable[[str], None] | None = None) -> dict:
    """Fit and write `rescoring` and `correction` into the LM's card; returns both."""
    tools = load_language_tools(lm_dir)
    clips = collect(pipe, entries, tools, progress)
    weights, rescoring = fit_rescoring(clips)
    dev = {"manifest": manifest, "clips": len(clips), "ref_chars": rescoring["ref_chars"]}
    dev_cer = {"before": rescoring["cer_first"], "rescored": rescoring["cer_rescored"],
               "after": rescoring["cer_rescored"], "oracle": rescoring["cer_oracle"]}
    fitted: dict = {"rescoring": {"alpha": weights.alpha, "beta": weights.beta,
                                  "dev": dev, "dev_cer": dev_cer}}
    if tools.corrector is not None:
        options, correction = fit_correction(clips, weights, tools.corrector, clean_texts,
                                             max_false_rate)
        dev_cer["after"] = correction["cer_after"]  # rescored, then corrected
        fitted["correction"] = {"threshold": options.threshold, "per_char": options.per_char,
                                "max_word": options.max_word,
                                "unsure_below": correction["unsure_below"],
                                "max_false_rate": max_false_rate,
                                "clean_sentences": len(clean_texts),
                                "false_rate": correction.get("false_rate"),
                                "helped": correction["helped"],
                                "dev_cer": {"before": correction["cer_before"],
                                            "after": correction["cer_after"]}}
    update_card(lm_dir, **fitted)
    return fitted
