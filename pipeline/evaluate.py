"""Accuracy and speed on a manifest of clips with reference text (``minyin eval``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from asr.normalize import scoring_form


def char_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance, reference length) on the scoring form of both texts."""
    ref, hyp = scoring_form(reference), scoring_form(hypothesis)
    return Levenshtein.distance(ref, hyp), len(ref)


def cer(reference: str, hypothesis: str) -> float:
    errors, length = char_errors(reference, hypothesis)
    return errors / max(1, length)


@dataclass(frozen=True)
class ManifestEntry:
    audio: Path
    text: str
    extra: dict


class ManifestError(ValueError):
    pass


def load_manifest(path: Path) -> list[ManifestEntry]:
    """JSONL lines ``{"audio": path, "text": reference}``; paths relative to the manifest."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio, text = row.pop("audio"), row.pop("text")
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(
                f"{path}:{number}: expected a JSON object with 'audio' and 'text' ({exc})"
            ) from exc
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

    @property
    def cer(self) -> float:
        return self.errors / max(1, self.ref_chars)


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
        yield ClipResult(str(entry.audio), entry.text, text, errors, length,
                         round(audio_s, 3), round(seconds, 3), error)
