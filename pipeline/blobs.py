"""Content-addressed store for original audio: `root/ab/cd/<sha256>`, never overwritten.

The originals are evidence (what the citizen actually said), so a blob, once written,
is never replaced: a second `put` of the same bytes only checks the size and returns.
Writes go to a temporary file in the target directory, are fsynced, then renamed into
place, so a crash never leaves a truncated blob under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from asr.model import sha256_file

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class BlobError(Exception):
    """A blob on disk disagrees with its name (size or content)."""


def check_sha256(sha: str) -> str:
    """The name as given, if it is 64 lower-case hex digits; ValueError otherwise.

    Callers pass names taken from URLs and job rows; anything else ("../..", "/etc")
    must never reach the file system.
    """
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ValueError(f"not a sha256 hex digest: {sha!r}")
    return sha


def _fsync_dir(path: Path) -> None:
    # the rename is durable only once the directory entry is on disk (POSIX)
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        sha = check_sha256(sha)
        return self.root / sha[:2] / sha[2:4] / sha

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def open(self, sha: str) -> BinaryIO:
        """The blob for reading; FileNotFoundError if it is not stored."""
        return self.path(sha).open("rb")

    def size(self, sha: str) -> int:
        return self.path(sha).stat().st_size

    def put(self, data: bytes | str | os.PathLike[str] | BinaryIO) -> str:
        """Store bytes, a file's content or a binary stream; return its sha256.

        Streamed: a one-hour upload is hashed and written in 1 MiB chunks, never held
        in memory whole (except when `data` already is bytes).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        # the temp file lives under root so the final rename stays on one file system
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=self.root)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in _chunks(data):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            if final.exists():
                self._verify_existing(final, size)
                return sha
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)  # read-only: a stray writer gets an error, not a new blob
            try:
                # link, not rename: it fails if another writer got there first, so an
                # existing blob is never replaced, even in a race
                os.link(tmp, final)
            except FileExistsError:
                self._verify_existing(final, size)
                return sha
            _fsync_dir(final.parent)
            return sha
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @staticmethod
    def _verify_existing(final: Path, size: int) -> None:
        # same name, different size: the stored blob is damaged; keep it for inspection
        actual = final.stat().st_size
        if actual != size:
            raise BlobError(f"{final} has {actual} bytes, expected {size}")

    def verify(self, sha: str) -> bool:
        """Re-hash a stored blob (slow; for audits and tests)."""
        return sha256_file(self.path(sha)) == sha


def _chunks(data: bytes | str | os.PathLike[str] | BinaryIO) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for i in range(0, len(view), _CHUNK):
            yield bytes(view[i : i + _CHUNK])
        return
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as fh:
            yield from iter(lambda: fh.read(_CHUNK), b"")
        return
    yield from iter(lambda: data.read(_CHUNK), b"")
