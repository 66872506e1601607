"""Accuracy and speed on a manifest of clips with reference text (``minyin eval``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from asr.normalize import canonical_numbers, scoring_form
from pipeline.textfiles import read_text_lines


def char_errors(reference: str, hypothesis: str, *,
                numbers: bool = False) -> tuple[int, int]:
    """(edit distance, reference length) on the scoring form of both texts.

    `numbers`: first put every number in digits on both sides (一百五十 / 150), so a
    transcript is not charged for writing a number the other way than the reference.
    """
    if numbers:
        reference, hypothesis = canonical_numbers(reference), canonical_numbers(hypothesis)
    ref, hyp = scoring_form(reference), scoring_form(hypothesis)
    return Levenshtein.distance(ref, hyp), len(ref)


def cer(reference: str, hypothesis: str) -> float:
    errors, length = char_errors(reference, hypothesis)
    return errors / max(1, length)


def best_of_beam(reference: str, windows: Sequence[Sequence[str]]) -> str:
    """The oracle: the clip's text with each window's hypothesis (one of `windows[i]`,
    the first being the one chosen) picked to minimise the errors, numbers in one form.
    One pass of coordinate descent over the windows: exact for a single window."""
    choice = [options[0] if options else "" for options in windows]
    for i, options in enumerate(windows):
        def errors(text: str, i: int = i, choice: list[str] = choice) -> int:
            joined = "".join([*choice[:i], text, *choice[i + 1:]])
            return char_errors(reference, joined, numbers=True)[0]
        if len(options) > 1:
            choice[i] = min(options, key=errors)
    return "".join(choice)


@dataclass(frozen=True)
class ManifestEntry:
    audio: Path
    text: str
    extra: dict


class ManifestError(ValueError):
    pass


def load_manifest(path: Path) -> list[ManifestEntry]:
    """JSONL lines ``{"audio": path, "text": reference}``; paths relative to the manifest.
    A refusal names the file, the line and the field."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    entries = []
    for number, line in enumerate(read_text_lines(path, ManifestError), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ManifestError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise ManifestError(f"{path}:{number}: expected a JSON object with 'audio' and "
                                f"'text', not {type(row).__name__}")
        for field in ("audio", "text"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise ManifestError(f"{path}:{number}: expected a JSON object with 'audio' "
                                    f"and 'text': no '{field}'")
        audio, text = row.pop("audio"), row.pop("text")
        entries.append(ManifestEntry((path.parent / audio).resolve(), str(text), row))
    return entries


@dataclass
class ClipResult:
    audio: str
    reference: str
    hypothesis: str
    errors: int
    ref_chars: int
    audio_s: float
    seconds: float
    error: str | None = None
    # the same with numbers in digits on both sides
    errors_numbers: int = 0
    ref_chars_numbers: int = 0

    @property
    def cer(self) -> float:
        return self.errors / max(1, self.ref_chars)

    @property
    def cer_numbers(self) -> float:
        return self.errors_numbers / max(1, self.ref_chars_numbers)


@dataclass
class EvalSummary:
    clips: int
    failed: int
    audio_s: float
    seconds: float
    errors: int
    ref_chars: int
    cer: float
    rtfx: float  # audio seconds per processing second
    # CER with numbers in one form (digits) on both sides, and its reference length
    cer_numbers: float = 0.0
    ref_chars_numbers: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(results: list[ClipResult]) -> EvalSummary:
    errors = sum(r.errors for r in results)
    chars = sum(r.ref_chars for r in results)
    audio_s = sum(r.audio_s for r in results)
    seconds = sum(r.seconds for r in results)
    return EvalSummary(
        clips=len(results), failed=sum(1 for r in results if r.error),
        audio_s=round(audio_s, 2), seconds=round(seconds, 2), errors=errors,
        ref_chars=chars, cer=round(errors / max(1, chars), 4),
        rtfx=round(audio_s / seconds, 2) if seconds else 0.0,
        cer_numbers=round(sum(r.errors_numbers for r in results)
                          / max(1, sum(r.ref_chars_numbers for r in results)), 4),
        ref_chars_numbers=sum(r.ref_chars_numbers for r in results),
    )


def run_eval(entries: list[ManifestEntry],
             transcribe: Callable[[Path], tuple[str, float]]) -> Iterator[ClipResult]:
    """``transcribe(path) -> (text, audio seconds)``; a failure counts all reference chars."""
    for entry in entries:
        t0 = time.perf_counter()
        try:
            text, audio_s = transcribe(entry.audio)
            error = None
        except Exception as exc:  # a clip that fails is scored, not fatal to the run
            text, audio_s, error = "", 0.0, str(exc)
        seconds = time.perf_counter() - t0
        errors, length = char_errors(entry.text, text)
        errors_n, length_n = char_errors(entry.text, text, numbers=True)
        yield ClipResult(str(entry.audio), entry.text, text, errors, length,
                         round(audio_s, 3), round(seconds, 3), error, errors_n, length_n)


def bootstrap_gain(before: Sequence[tuple[int, int]], after: Sequence[tuple[int, int]], *,
                   rounds: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """(gain, low, high): the CER gain ``before - after`` over paired clips
    ``(errors, reference characters)``, and its percentile bootstrap interval (clips
    resampled with replacement, the same clips on both sides). A gain whose interval
    holds 0 is inside the set's noise."""
    import numpy as np

    if len(before) != len(after) or not before:
        raise ValueError("bootstrap_gain needs the same clips, at least one, on both sides")
    b = np.array([e for e, _ in before], float)
    a = np.array([e for e, _ in after], float)
    n = np.array([c for _, c in before], float)
    gain = float((b.sum() - a.sum()) / max(1.0, n.sum()))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(b), size=(rounds, len(b)))
    gains = (b[picks].sum(1) - a[picks].sum(1)) / np.maximum(1.0, n[picks].sum(1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(gains, [tail, 100 - tail])
    return round(gain, 4), round(float(low), 4), round(float(high), 4)
