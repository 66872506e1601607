"""Reading the text files people hand the CLI and the batch (manifests, CSV, JSONL):
a file that cannot be read, or is not UTF-8, is an error naming it, not a traceback."""

from __future__ import annotations

from pathlib import Path


def read_text_lines(path: Path, error: type[Exception]) -> list[str]:
    """A text file's lines, or `error` naming the file (unreadable, not UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None
