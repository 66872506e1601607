"""Approved reviews as a speech dataset: the training data for the next dialect model.

`export_corrections` reads every approved ticket (the document as its last approval
left it), cuts each segment out of the stored recording (16 kHz mono WAV, the caller's
or the call taker's own channel on a stereo call) and writes:

    DIR/audio/<ticket id>_<segment>.wav
    DIR/train.jsonl, DIR/validation.jsonl   one clip per line (see `Clip`)
    DIR/data_card.json                      counts, hours, what was skipped and why

An approved segment is a person's verified transcript whether or not they changed it;
`corrected` says whether they did and `machine_text` keeps what the model wrote.
No contact data goes out: no phone, no client reference, no address or coordinates.

The split keeps every caller on one side, so validation measures voices the model did
not train on: the group is the caller's phone number (hashed, never written) or, for a
recording without one, the ticket. A group's side depends only on the hash and the
fraction, so re-exporting with more data never moves a caller across.

Dialect speech: `text` is the Mandarin meaning a reviewer wrote, `dialect_text` what
was said in the dialect's own characters, `variety` the variety (confirmed by the
reviewer where `variety_confirmed`).

Skipped, with a count per reason: segments a reviewer discarded, machine text of
speech nobody transcribed (not readable), empty texts, texts with
masked digits (``138****5678``: the words no longer match the audio), clips shorter
than 0.3 s or longer than 30 s (Whisper's window), recordings whose audio is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.audio import SAMPLE_RATE, AudioError, decode_audio, write_wav
from pipeline.blobs import BlobStore
from pipeline.review import DISCARDED_FLAG
from pipeline.store import Store
from pipeline.ticket_schema import normalise_phone

MIN_CLIP_S = 0.3
MAX_CLIP_S = 30.0
DATASET_FORMAT = "minyin-corrections/1"


@dataclass(frozen=True)
class Clip:
    audio: str  # relative to the dataset directory
    text: str
    dialect: str
    source: str  # voice_note | hotline
    duration_s: float
    ticket_id: str
    segment: int
    speaker: str | None
    corrected: bool
    machine_text: str
    model: str  # name/version that wrote machine_text
    approved_by: str
    approved_at: str
    # the variety heard (as confirmed by a reviewer, else as detected) and, for dialect
    # speech, what was said in the dialect's own characters (`text` is its Mandarin)
    variety: str = "mandarin"
    variety_confirmed: bool = False
    dialect_text: str | None = None


@dataclass
class DataCard:
    format: str
    created_at: str
    validation_fraction: float
    tickets: int = 0
    clips: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=dict)
    callers: dict[str, int] = field(default_factory=dict)
    corrected_clips: int = 0
    by_dialect: dict[str, int] = field(default_factory=dict)
    by_variety: dict[str, int] = field(default_factory=dict)
    dialect_text_clips: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def caller_group(ticket_id: str, phone: str | None) -> str:
    """The split's unit: one caller (hashed number) or, without a number, one ticket."""
    if phone and normalise_phone(phone):
        return "phone:" + hashlib.sha256(normalise_phone(phone).encode()).hexdigest()
    return "ticket:" + ticket_id


def side(group: str, validation_fraction: float) -> str:
    bucket = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if bucket < validation_fraction else "train"


def _skip_reason(seg: dict[str, Any]) -> str | None:
    if DISCARDED_FLAG in seg.get("flags", []):
        return "discarded"
    if not seg.get("readable", True):
        return "unreadable"  # dialect speech approved without a person's text
    text = seg["text"].strip()
    if not text:
        return "empty_text"
    if "*" in text:
        return "masked_digits"
    duration = seg["end"] - seg["start"]
    if duration < MIN_CLIP_S:
        return "too_short"
    if duration > MAX_CLIP_S:
        return "too_long"
    return None


def export_corrections(store: Store, blobs: BlobStore, out: Path, *,
                       validation_fraction: float = 0.1, since: datetime | None = None,
                       overwrite: bool = False) -> DataCard:
    """Write the dataset to `out` (see the module doc) and return its data card."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError("validation_fraction must be in [0, 1)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty (overwrite to replace it)")
        shutil.rmtree(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    card = DataCard(format=DATASET_FORMAT, validation_fraction=validation_fraction,
                    created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    skipped: Counter[str] = Counter()
    clips: dict[str, list[Clip]] = {"train": [], "validation": []}
    groups: dict[str, set[str]] = {"train": set(), "validation": set()}

    for revision, job in store.approved_documents(since=since):
        doc = revision.document
        segments = doc["transcript"]["segments"]
        if job is None or not blobs.exists(job.audio_sha256):
            skipped["audio_missing"] += len(segments)
            continue
        wanted = [(i, s) for i, s in enumerate(segments) if _skip_reason(s) is None]
        skipped.update(r for s in segments if (r := _skip_reason(s)) is not None)
        if not wanted:
            continue
        try:
            decoded = decode_audio(blobs.path(job.audio_sha256), split_channels=True,
                                   min_seconds=0.0, reject_silence=False)
        except AudioError:
            skipped["audio_unreadable"] += len(wanted)
            continue
        machine_texts = _machine_texts(store, revision.ticket_id)
        group = caller_group(revision.ticket_id, job.phone)
        split = side(group, validation_fraction)
        written = 0
        for i, seg in wanted:
            channel = seg.get("channel", 0)
            track = (decoded.tracks[channel] if channel < decoded.tracks.shape[0]
                     else decoded.mono)
            a, b = int(seg["start"] * SAMPLE_RATE), int(seg["end"] * SAMPLE_RATE)
            samples = track[a:min(b, track.shape[0])]
            if samples.shape[0] < MIN_CLIP_S * SAMPLE_RATE:
                skipped["beyond_audio"] += 1
                continue
            name = f"audio/{revision.ticket_id}_{i:03d}.wav"
            write_wav(out / name, samples)
            machine = machine_texts.get(i, seg["text"])
            clips[split].append(Clip(
                audio=name, text=seg["text"].strip(), dialect=doc["dialect"],
                source=doc["source"], duration_s=round(samples.shape[0] / SAMPLE_RATE, 3),
                ticket_id=revision.ticket_id, segment=i, speaker=seg.get("speaker"),
                corrected=machine != seg["text"], machine_text=machine,
                model=f"{doc['model']['name']}/{doc['model']['version']}".rstrip("/"),
                approved_by=revision.author,
                approved_at=revision.created_at.isoformat(timespec="seconds"),
                variety=seg.get("variety") if not doc["transcript"].get(
                    "variety_confirmed_by") else doc["transcript"].get("variety", "mandarin"),
                variety_confirmed=bool(doc["transcript"].get("variety_confirmed_by")),
                dialect_text=seg.get("dialect_text")))
            written += 1
        if written:
            card.tickets += 1
            groups[split].add(group)

    for split, items in clips.items():
        _write_jsonl(out / f"{split}.jsonl", (asdict(c) for c in items))
        card.clips[split] = len(items)
        card.hours[split] = round(sum(c.duration_s for c in items) / 3600, 4)
        card.callers[split] = len(groups[split])
    every = clips["train"] + clips["validation"]
    card.corrected_clips = sum(c.corrected for c in every)
    card.by_dialect = dict(Counter(c.dialect for c in every))
    card.by_variety = dict(Counter(c.variety for c in every))
    card.dialect_text_clips = sum(c.dialect_text is not None for c in every)
    card.by_source = dict(Counter(c.source for c in every))
    card.skipped = dict(skipped)
    tmp = out / ".data_card.json.tmp"
    tmp.write_text(json.dumps(asdict(card), ensure_ascii=False, indent=2) + "\n",
                   encoding="utf-8")
    os.replace(tmp, out / "data_card.json")
    return card


def _machine_texts(store: Store, ticket_id: str) -> dict[int, str]:
    """What the model wrote for each corrected segment: its first correction's `before`."""
    texts: dict[int, str] = {}
    for entry in reversed(store.ticket_history(ticket_id)):  # oldest first
        for c in entry.corrections:
            if c.target_kind == "segment":
                texts.setdefault(int(c.target), str(c.before or ""))
    return texts


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
