"""Plain result types of the speech-to-text layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str
    probability: float


@dataclass(frozen=True)
class Hypothesis:
    """One of the beam's n best texts for a window."""

    text: str
    logprob: float  # cumulative natural-log probability under Whisper
    tokens: int = 0


@dataclass
class Segment:
    """One recognised stretch of speech, times in seconds of the source audio."""

    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    channel: int = 0
    speaker: str | None = None
    # why this segment is doubtful (e.g. "low_confidence", "repetition_trimmed")
    flags: list[str] = field(default_factory=list)
    raw_text: str = ""  # model output before normalisation, kept for auditing
    # the beam's n best for this window (raw text), when more than one was asked for
    hypotheses: list[Hypothesis] = field(default_factory=list)
    # which variety was heard here (asr.dialect) and whether the text can be relied on
    variety: str = "mandarin"
    variety_confidence: float = 1.0
    readable: bool = True

    @property
    def confidence(self) -> float:
        """0..1: exp(avg log-prob), scaled down by the no-speech probability."""
        return round(math.exp(min(0.0, self.avg_logprob)) * (1.0 - self.no_speech_prob), 4)


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    language: str
    language_probability: float
    duration: float
    dialect: str = "mandarin"
    model: str = ""
    model_version: str = ""
    lm: str = ""  # the language model that rescored and corrected it ("" for none)
    lm_version: str = ""
    # transcript-level doubts, e.g. "dropped_hallucination", "wrong_language"
    flags: list[str] = field(default_factory=list)
    variety: str = "mandarin"
    variety_confidence: float = 1.0
    readable: bool = True
    detector: str = ""  # the dialect detector that judged it, and its version
    detector_version: str = ""
