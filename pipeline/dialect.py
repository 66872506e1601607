"""The dialect detector as a registered model: which one the workers use, training it
from a county's labelled recordings or its staff's confirmed varieties, promoting it.

- `MINYIN_DETECTOR`: `default` (the registry's current one, else the untrained rules),
  `rules`, or a directory under models_dir/detector (or a path).
- `train_detector`: recordings (a manifest's `audio` + `lang`, or the store's reviewed
  tickets with a confirmed variety) -> each speech window's Whisper signals -> a
  logistic regression (`asr.dialect.fit_detector`) under models_dir/detector/NAME.
- Promotion uses the same `model_promotions` table as Whisper, LMs and classifiers,
  kind "dialect".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asr.dialect import (
    DETECTOR_KIND,
    Detector,
    RuleDetector,
    WindowSignals,
    fit_detector,
    load_detector,
    normalise_variety,
)
from pipeline.config import Settings
from pipeline.textfiles import read_text_lines

if TYPE_CHECKING:
    from pipeline.process import Pipeline
    from pipeline.store import ModelPromotion, Store

log = logging.getLogger(__name__)
DETECTOR_DIR = "detector"
RULES = "rules"


class DetectorError(ValueError):
    pass


def detector_path(spec: str, settings: Settings) -> Path | None:
    """None for the rules; else the detector's directory."""
    if spec in (RULES, "none", ""):
        return None
    path = Path(spec)
    if not path.is_absolute():
        under = settings.models_dir / spec
        path = under if (under / "card.json").is_file() or "/" in spec else (
            settings.models_dir / DETECTOR_DIR / spec)
    return path.resolve()


def current_detector_spec(store: Store | None, settings: Settings) -> str:
    row = store.current_model(kind=DETECTOR_KIND) if store is not None else None
    if row is not None:
        return row.model
    return settings.detector


def make_detector(spec: str | None, settings: Settings, *, expected: str | None = None
                  ) -> Detector:
    """The detector of `spec`; `default` with nothing trained is the rules. A detector
    asked for by name that is not there is an error naming it."""
    spec = spec or settings.detector
    path = detector_path(spec, settings)
    if path is None:
        return RuleDetector(expected=expected)
    if not (path / "card.json").is_file():
        if spec == "default":
            return RuleDetector(expected=expected)
        raise DetectorError(f"dialect detector {spec!r} not found at {path}; train it with "
                            "minyin dialect train, or set MINYIN_DETECTOR=rules")
    return load_detector(path, expected=expected)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    audio: Path
    variety: str
    group: str | None = None  # recordings of one sentence (parallel_id): kept together


def read_manifests(source: Path) -> list[Labelled]:
    """`source`: a manifest (JSONL with `audio` relative to it and `lang`) or a
    directory holding manifest.jsonl files (searched below it)."""
    files = [source] if source.is_file() else sorted(source.rglob("manifest.jsonl"))
    if not files:
        raise DetectorError(f"{source}: no manifest.jsonl (lines with audio and lang)")
    out = []
    for file in files:
        for n, line in enumerate(read_text_lines(file, DetectorError), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DetectorError(f"{file}:{n}: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise DetectorError(f"{file}:{n}: expected a JSON object with audio and "
                                    f"lang, not {type(row).__name__}")
            if not row.get("audio") or not (row.get("lang") or row.get("variety_code")):
                raise DetectorError(f"{file}:{n}: a line needs 'audio' and 'lang'")
            audio = (file.parent / row["audio"]).resolve()
            if not audio.is_file():
                raise DetectorError(f"{file}:{n}: no audio file {audio}")
            out.append(Labelled(audio, normalise_variety(row.get("lang")),
                                str(row["parallel_id"]) if row.get("parallel_id") else None))
    return out


def from_store(store: Store, blobs: Any) -> list[Labelled]:
    """Recordings whose variety a reviewer confirmed (or whose Mandarin text a reviewer
    approved as read), from the store's reviewed tickets."""
    out = []
    for ticket_id, sha, variety in confirmed_varieties(store):
        path = blobs.path(sha)
        if not Path(path).is_file():
            log.warning("ticket %s: its recording is not in the blob store; skipped",
                        ticket_id)
            continue
        out.append(Labelled(Path(path), normalise_variety(variety), ticket_id))
    return out


def confirmed_varieties(store: Store) -> list[tuple[str, str, str]]:
    """(ticket id, audio sha256, variety) of recordings whose variety a person settled:
    a reviewer confirmed or changed it (`transcript.variety_confirmed_by`), or approved
    the ticket with its transcript readable as Mandarin (they listened and let it stand)."""
    from sqlalchemy import select

    from pipeline.store import TicketRow

    out = []
    with store.session() as s:
        rows = s.execute(select(TicketRow.id, TicketRow.status, TicketRow.document)
                         .where(TicketRow.status == "reviewed")
                         .order_by(TicketRow.created_at)).all()
        for ticket_id, _status, doc in rows:
            transcript, audio = doc.get("transcript") or {}, doc.get("audio") or {}
            if not audio.get("sha256"):
                continue  # a typed message
            if transcript.get("variety_confirmed_by"):
                out.append((ticket_id, audio["sha256"], transcript.get("variety") or "unknown"))
            elif transcript.get("readable", True) and transcript.get(
                    "variety", "mandarin") == "mandarin":
                out.append((ticket_id, audio["sha256"], "mandarin"))
    return out


def recording_signals(pipe: Pipeline, audio: Path) -> Iterator[WindowSignals]:
    """Each speech window's signals, measured as the transcriber measures them (the
    window's features padded to 30 s, encoded once)."""
    from asr.transcriber import window_signals
    from pipeline.segment import VadOptions, speech_windows

    s = pipe.settings
    decoded = pipe.decode(audio, name=audio.name)
    model = pipe.transcriber.model  # faster_whisper.WhisperModel
    vad = VadOptions(aggressiveness=s.vad_aggressiveness, max_window_s=s.max_window_seconds,
                     max_gap_s=s.merge_gap_seconds)
    mono = decoded.mono
    windows = speech_windows(mono, vad)
    if not windows:  # short or quiet clip: judge all of it
        clips = [mono[: 30 * 16000]]
    else:
        from asr.transcriber import _join

        clips = [_join(mono, w.spans()) for w in windows]
    for clip in clips:
        feats = model.feature_extractor(clip)[:, :3000]
        if feats.shape[1] < 3000:
            feats = np.pad(feats, ((0, 0), (0, 3000 - feats.shape[1])))
        encoded = model.encode(feats)
        yield from window_signals(model.model, encoded, [len(clip) / 16000])


def signals_of(pipe: Pipeline, items: Iterable[Labelled]) -> list[tuple[WindowSignals, str]]:
    rows = []
    for item in items:
        for signals in recording_signals(pipe, item.audio):
            rows.append((signals, item.variety))
    return rows


def train_detector(pipe: Pipeline, items: list[Labelled], *, name: str, version: str,
                   source: dict[str, Any], c: float = 0.1) -> dict[str, Any]:
    out = pipe.settings.models_dir / DETECTOR_DIR / name
    rows = signals_of(pipe, items)
    return fit_detector(rows, out, name=name, version=version, source={
        **source, "recordings": len(items), "whisper": pipe.model_ref.name}, c=c)


def promote_detector(store: Store, settings: Settings, spec: str, *, author: str,
                     reason: str | None = None) -> ModelPromotion:
    path = detector_path(spec, settings)
    if path is None:
        detector_name, version = "dialect-rules", "1"
    else:
        try:
            detector = load_detector(path)
        except (OSError, ValueError, KeyError) as e:
            raise DetectorError(f"{spec}: not a dialect detector ({e})") from None
        detector_name, version = detector.name, detector.version
    if current_detector_spec(store, settings) == spec:
        raise DetectorError(f"{spec} is already the current dialect detector")
    return store.record_promotion(kind=DETECTOR_KIND, model=spec, name=detector_name,
                                  version=version, action="promote", author=author,
                                  reason=reason)
