"""Hotline batches, the parts that need no workers: what to transcribe (a directory or a
manifest) and what a finished call leaves in the output directory.

Per call, in ``<out>/<call_id>/``: ``ticket.json`` (the ticket, phone masked unless asked
otherwise), ``transcript.json`` (segments with speaker, channel, start, end, text,
confidence), ``transcript.srt`` and ``transcript.txt`` (the dialogue, 来电人/话务员). For
the run: ``<out>/summary.csv``. Every file is written to a temporary name and renamed,
so a batch killed mid-write leaves either the old file or the new one, never half of
one, and a rerun rewrites the same names: each output exists exactly once.

The orchestration (embedded or Celery fan-out) is `workers.batch`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import srt

from pipeline.process import ROLE_LABELS, speaker_lines
from pipeline.textfiles import read_text_lines
from pipeline.ticket_schema import Ticket

AUDIO_SUFFIXES = {".wav", ".mp3", ".amr", ".m4a", ".aac", ".ogg", ".opus", ".flac", ".3gp",
                  ".silk", ".slk", ".webm", ".wma", ".aiff", ".aif", ".caf", ".au", ".gsm"}
_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


class SourceError(ValueError):
    pass


@dataclass(frozen=True)
class CallItem:
    path: Path
    call_id: str
    caller: str | None = None  # the caller's number
    agent_id: str | None = None
    started_at: datetime | None = None
    caller_channel: int | None = None  # which stereo channel is the caller (default 0)


def safe_call_id(raw: str) -> str:
    """A call id usable as a directory name: no separators, no dot-dot, <= 150 chars."""
    cleaned = _UNSAFE.sub("_", raw.strip()).strip("._")
    return cleaned[:150] or hashlib.sha256(raw.encode()).hexdigest()[:16]


def batch_id_for(out_dir: Path) -> str:
    """One batch per output directory: running the same command again resumes it."""
    return "B" + hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]


def _parse_time(value: str | None, where: str) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise SourceError(f"{where}: started_at {value!r} is not an ISO 8601 time") from None
    # a hotline's clock is local: a time without zone is China Standard Time
    return when if when.tzinfo else when.replace(tzinfo=timezone(timedelta(hours=8)))


def _item(entry: dict[str, Any], base: Path, where: str) -> CallItem:
    raw = str(entry.get("path") or entry.get("audio") or "").strip()
    if not raw:
        raise SourceError(f"{where}: no 'path'")
    path = Path(raw) if Path(raw).is_absolute() else base / raw
    channel = entry.get("caller_channel")
    if channel not in (None, ""):
        try:
            channel = int(channel)
        except (TypeError, ValueError):
            raise SourceError(f"{where}: caller_channel must be 0 or 1") from None
        if channel not in (0, 1):
            raise SourceError(f"{where}: caller_channel must be 0 or 1")
    else:
        channel = None
    call_id = str(entry.get("call_id") or "").strip() or Path(raw).with_suffix("").as_posix()
    caller = entry.get("caller") or entry.get("caller_number")
    agent = entry.get("agent_id") or entry.get("agent")
    return CallItem(path=path, call_id=safe_call_id(call_id),
                    caller=str(caller).strip() if caller else None,
                    agent_id=str(agent).strip() if agent else None,
                    started_at=_parse_time(entry.get("started_at"), where),
                    caller_channel=channel)


def read_source(source: Path, pattern: str | None = None) -> list[CallItem]:
    """The calls of a directory (recursive; `pattern` a glob such as "*.wav", default:
    every audio suffix) or of a manifest (.csv or .jsonl with path, call_id, caller,
    agent_id, started_at, caller_channel; paths relative to the manifest)."""
    if source.is_dir():
        files = sorted(p for p in source.rglob(pattern or "*")
                       if p.is_file() and not any(part.startswith(".") for part in
                                                  p.relative_to(source).parts)
                       and (pattern or p.suffix.lower() in AUDIO_SUFFIXES))
        items = [CallItem(path=p, call_id=safe_call_id(
            p.relative_to(source).with_suffix("").as_posix().replace("/", "__")))
                 for p in files]
    elif source.is_file() and source.suffix.lower() in (".csv", ".jsonl"):
        lines = read_text_lines(source, SourceError)
        entries: list[tuple[str, Any]] = []
        if source.suffix.lower() == ".csv":
            reader = csv.DictReader(io.StringIO("\n".join(lines)), strict=True)
            try:
                if not reader.fieldnames or not {"path", "audio"} & {
                        (f or "").strip().lower() for f in reader.fieldnames}:
                    raise SourceError(f"{source}:1: the header names no 'path' column "
                                      f"({', '.join(reader.fieldnames or []) or 'empty'})")
                entries = [(f"{source}:{reader.line_num}", row) for row in reader]
            except csv.Error as e:
                raise SourceError(f"{source}:{reader.line_num + 1}: not CSV ({e})") from None
        else:
            for i, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        entries.append((f"{source}:{i}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise SourceError(f"{source}:{i}: not JSON ({e.msg})") from None
        for where, entry in entries:
            if not isinstance(entry, dict):
                raise SourceError(f"{where}: expected a JSON object with 'path', not "
                                  f"{type(entry).__name__}")
        items = [_item({k.strip().lower(): v for k, v in e.items() if k}, source.parent, w)
                 for w, e in entries]
        if pattern:
            items = [it for it in items if it.path.match(pattern)]
    else:
        raise SourceError(f"{source}: not a directory, a .csv or a .jsonl manifest")
    seen: dict[str, Path] = {}
    for it in items:
        if it.call_id in seen:
            raise SourceError(f"call id {it.call_id!r} is used twice ({seen[it.call_id]} and "
                              f"{it.path}); give each call its own call_id")
        seen[it.call_id] = it.path
    return items


# --------------------------------------------------------------------------- outputs


class _Seg(Protocol):
    start: float
    end: float
    text: str
    speaker: str | None


def srt_text(segments: Sequence[_Seg]) -> str:
    subs = [srt.Subtitle(index=i, start=timedelta(seconds=seg.start),
                         end=timedelta(seconds=max(seg.end, seg.start + 0.2)),
                         content=(f"{ROLE_LABELS.get(seg.speaker, seg.speaker)}：{seg.text}"
                                  if seg.speaker else seg.text))
            for i, seg in enumerate(segments, 1)]
    return srt.compose(subs)


def dialogue_text(segments: Sequence[_Seg], text: str) -> str:
    """The call as lines "来电人：…" in time order; a one-speaker recording as its text."""
    lines = speaker_lines(segments, text)
    return "\n".join(lines) + "\n" if lines else ""


def write_atomic(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


OUTPUT_FILES = ("ticket.json", "transcript.json", "transcript.srt", "transcript.txt")


def outputs_complete(out_dir: Path, call_id: str, ticket_id: str) -> bool:
    d = out_dir / call_id
    if not all((d / name).is_file() for name in OUTPUT_FILES):
        return False
    try:
        return json.loads((d / "ticket.json").read_text(encoding="utf-8"))["id"] == ticket_id
    except (OSError, ValueError, KeyError):
        return False


def write_call_outputs(out_dir: Path, call_id: str, ticket: Ticket, *,
                       include_contact: bool = False) -> Path:
    """The four files of one call; the ticket file last, as the 'complete' marker."""
    d = out_dir / call_id
    segments = ticket.transcript.segments
    transcript = {
        "call_id": call_id, "ticket_id": ticket.id, "duration_s": ticket.audio.duration_s,
        "language": ticket.language, "dialect": ticket.dialect, "text": ticket.transcript.text,
        "segments": [{"speaker": s.speaker, "channel": s.channel, "start": s.start,
                      "end": s.end, "text": s.text, "confidence": s.confidence}
                     for s in segments],
    }
    write_atomic(d / "transcript.json", json.dumps(transcript, ensure_ascii=False, indent=2)
                 + "\n")
    write_atomic(d / "transcript.srt", srt_text(segments))
    write_atomic(d / "transcript.txt", dialogue_text(segments, ticket.transcript.text))
    document = ticket.storage_dict() if include_contact else ticket.public_dict()
    write_atomic(d / "ticket.json", json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    return d


@dataclass
class SummaryRow:
    call_id: str
    path: str
    status: str  # done | failed | skipped (the same recording was done before)
    ticket_id: str = ""
    category: str = ""
    kind: str = ""
    urgency: str = ""
    needs_review: str = ""
    audio_seconds: str = ""
    processing_seconds: str = ""
    error_code: str = ""
    error: str = ""


def write_summary(out_dir: Path, rows: Iterable[SummaryRow]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(SummaryRow)])
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    path = out_dir / "summary.csv"
    write_atomic(path, buf.getvalue())
    return path
