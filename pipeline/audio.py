"""Decoding stage: whatever a phone or a hotline sends -> 16 kHz float32 tracks.

Citizens send WAV (PCM, mu-law, A-law), MP3, M4A/AAC, AMR, OGG/WebM Opus, FLAC and
WeChat SILK voice notes, often with the wrong extension (WeChat SILK arrives as
``.amr``).  So the format is read from the content, never the name.  Everything but
SILK is decoded with PyAV (which bundles its own ffmpeg, so no system ffmpeg is
needed); SILK goes through ``pysilk``.

Every failure leaves as an :class:`AudioError` naming the file and saying why in one
sentence; no library exception escapes :func:`decode_audio`.  Cheap structural checks
run before decoding (WAV header fields, AMR/SILK frame walks, MP4 boxes, OGG pages) so
that hostile headers - a WAV declaring 3 hours, a 4 GHz sample rate - fail fast
without decoding or allocating anything.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import av
import av.error
import numpy as np

__all__ = [
    "ERROR_CODES",
    "SAMPLE_RATE",
    "AudioError",
    "DecodedAudio",
    "decode_audio",
    "sniff_format",
]

SAMPLE_RATE = 16000

ERROR_CODES = (
    "not_found", "not_a_file", "empty", "too_large", "not_audio", "unsupported_format",
    "truncated", "corrupt", "no_audio_stream", "silent", "too_long", "too_short",
    "bad_parameters",
)

# Sanity bounds for what a header may declare.  Real phone/hotline audio is 8-48 kHz;
# 384 kHz is the highest rate any real recorder writes, and below 1 kHz nothing
# intelligible fits.  More than 8 channels is not a call recording.
MIN_SOURCE_RATE = 1_000
MAX_SOURCE_RATE = 384_000
MAX_CHANNELS = 8

# Codecs pad the start/end of a stream (AAC priming, MP3 frames, 20 ms AMR frames), so
# a file of exactly ``max_seconds`` may decode a little longer; don't call that too long.
_LENGTH_SLACK_S = 0.25
# Truncation rule: the decodable part is under 90 % of what the header declares AND
# more than half a second is missing.  A few bytes short at the tail (common with
# sloppy writers) still decodes.
_TRUNCATED_FRACTION = 0.9
_TRUNCATED_MIN_MISSING_S = 0.5
# Durations that ffmpeg only *estimates* from the bit rate (MP3 without a Xing header,
# ADTS, unknown containers) can be off for VBR; reject up front only when far over the
# limit and let the decode loop enforce the exact limit.
_ESTIMATE_FACTOR = 2.0
# Silence: after removing DC, peak below -54 dBFS or RMS below -80 dBFS.  Digital
# silence is exactly 0; A-law "silence" decodes to +-8/32768 (2.4e-4); real speech on
# even a bad phone line peaks far above 2e-3.
_SILENT_PEAK = 2e-3
_SILENT_RMS = 1e-4
# More than this share of undecodable packets means the file is damaged, not glitchy.
_MAX_BAD_PACKET_SHARE = 0.2

_HEAD_BYTES = 64 * 1024
_MAX_PREALLOC = 2 * 3600 * SAMPLE_RATE  # samples per track

_FORMAT_LABELS = {
    "wav": "WAV", "mp3": "MP3", "mp4": "MP4/M4A", "3gp": "3GP", "amr": "AMR",
    "ogg": "OGG", "webm": "WebM", "mkv": "Matroska", "flac": "FLAC", "silk": "SILK",
    "aac": "AAC (ADTS)", "caf": "CAF", "aiff": "AIFF", "au": "AU", "asf": "ASF/WMA",
}
# Our format name -> the ffmpeg demuxer to force (sniffing already decided).
_DEMUXERS = {
    "wav": "wav", "mp3": "mp3", "mp4": "mp4", "3gp": "mp4", "amr": "amr", "ogg": "ogg",
    "webm": "matroska", "mkv": "matroska", "flac": "flac", "aac": "aac", "caf": "caf",
    "aiff": "aiff", "au": "au", "asf": "asf",
}
# ffmpeg demuxer name (first of its comma list) -> our format name, for probed content.
_FFMPEG_TO_FORMAT = {"mov": "mp4", "matroska": "mkv", "adts": "aac", "w64": "wav"}
# Formats whose container states the duration exactly (so a much shorter decode means
# the file was cut).  WAV is checked from its header before decoding instead.
_EXACT_DURATION = {"mp4", "3gp", "flac", "webm", "mkv", "caf", "aiff"}
# Formats whose stated duration is exact enough for an up-front "too long".
_TRUSTED_DURATION = _EXACT_DURATION | {"ogg"}


class AudioError(Exception):
    """A clear, user-facing decode failure.

    ``code`` is machine-readable (one of :data:`ERROR_CODES`), ``reason`` one human
    sentence, ``source`` the file name or label; ``str(err) == f"{source}: {reason}"``.
    """

    code: str
    reason: str
    source: str

    def __init__(self, code: str, reason: str, source: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.code = code
        self.reason = reason
        self.source = source

    def __reduce__(self) -> tuple[Any, ...]:
        # Workers pass errors between processes; the default pickling would call
        # __init__ with the single formatted message and fail.
        return (type(self), (self.code, self.reason, self.source))


@dataclass(frozen=True)
class DecodedAudio:
    tracks: np.ndarray  # float32 (C, N) at 16 kHz; C > 1 only with split_channels
    sample_rate: int  # always SAMPLE_RATE
    format: str  # content format: "wav", "mp3", "mp4", "amr", "ogg", "webm", "flac", "silk"...
    codec: str  # "pcm_s16le", "pcm_mulaw", "aac", "amr_nb", "opus", "silk"...
    source_sample_rate: int
    source_channels: int
    duration: float  # seconds

    @property
    def mono(self) -> np.ndarray:
        """(N,) float32: the mean of the tracks."""
        if self.tracks.shape[0] == 1:
            return self.tracks[0]
        return self.tracks.mean(axis=0, dtype=np.float32)


# --------------------------------------------------------------------------- sniffing

_MP3_BITRATES = {  # (mpeg1?, layer) -> kbit/s by index
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1", b"avif",
                 b"avis")


def _mp3_frame(h: bytes, pos: int) -> tuple[tuple[int, int, int], int] | None:
    """Parse an MPEG audio frame header at ``pos``: ((version, layer, rate), length)."""
    if pos + 4 > len(h) or h[pos] != 0xFF or h[pos + 1] & 0xE0 != 0xE0:
        return None
    version = (h[pos + 1] >> 3) & 3  # 0: 2.5, 1: reserved, 2: MPEG-2, 3: MPEG-1
    layer_bits = (h[pos + 1] >> 1) & 3  # 0 is reserved (and is what ADTS uses)
    br_index = h[pos + 2] >> 4
    sr_index = (h[pos + 2] >> 2) & 3
    if version == 1 or layer_bits == 0 or br_index == 15 or sr_index == 3:
        return None
    layer = 4 - layer_bits
    rate = _MP3_RATES[version][sr_index]
    kbps = _MP3_BITRATES[(version == 3, layer)][br_index]
    pad = (h[pos + 2] >> 1) & 1
    if kbps == 0:  # free format: length unknown
        length = 0
    elif layer == 1:
        length = (12000 * kbps // rate + pad) * 4
    elif layer == 3 and version != 3:
        length = 72000 * kbps // rate + pad
    else:
        length = 144000 * kbps // rate + pad
    return (version, layer, rate), length


def _looks_like_mp3(h: bytes) -> bool:
    first = _mp3_frame(h, 0)
    if first is None:
        return False
    key, length = first
    if key[1] == 1:
        # Layer I is extinct, and its sync (FF FE / FF FF) is also the UTF-16 BOM; leave
        # any real one to ffmpeg's probe.
        return False
    # A lone 0xFFEx at offset 0 happens by chance in binary junk; when the next frame
    # falls inside what we have, demand that it is there and matches.
    if length and length + 4 <= len(h):
        nxt = _mp3_frame(h, length)
        return nxt is not None and nxt[0] == key
    return len(h) >= length  # a one-frame file must at least hold that frame


def sniff_format(head: bytes) -> str | None:
    """The audio format of a file from its first bytes (magic numbers), or None.

    Returns one of "wav", "mp3", "mp4", "3gp", "amr", "ogg", "webm", "mkv", "flac",
    "silk", "aac", "caf", "aiff", "au", "asf".  Pass at least the first few KiB.
    """
    h = bytes(head[:_HEAD_BYTES])
    if len(h) < 4:
        return None
    if h[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and h[8:12] == b"WAVE":
        return "wav"
    if h.startswith(b"#!AMR"):  # "#!AMR\n", "#!AMR-WB\n", multichannel variants
        return "amr"
    if h.startswith((b"#!SILK", b"\x02#!SILK")):  # 0x02: WeChat/Tencent prefix
        return "silk"
    if h[:4] == b"OggS":
        return "ogg"
    if h[:4] == b"\x1a\x45\xdf\xa3":  # EBML; the DocType tells WebM from Matroska
        return "webm" if b"webm" in h[:64] else "mkv"
    if h[:4] == b"fLaC":
        return "flac"
    if h[4:8] == b"ftyp":
        brand = h[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        return "3gp" if brand.startswith(b"3g") else "mp4"
    if h[4:8] in (b"moov", b"mdat", b"wide"):  # old QuickTime files without ftyp
        return "mp4"
    if h[:4] == b"caff":
        return "caf"
    if h[:4] == b"FORM" and h[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if h[:4] == b".snd":
        return "au"
    if h[:16] == _ASF_GUID:
        return "asf"
    if h[:3] == b"ID3" and len(h) >= 10:
        # ID3v2 tags are also put in front of FLAC and ADTS; look past the tag.
        tag_len = 10 + ((h[6] & 0x7F) << 21 | (h[7] & 0x7F) << 14 | (h[8] & 0x7F) << 7
                        | (h[9] & 0x7F))
        after = h[tag_len:]
        if after[:4] == b"fLaC":
            return "flac"
        if len(after) >= 2 and after[0] == 0xFF and after[1] & 0xF6 == 0xF0:
            return "aac"
        return "mp3"
    if h[0] == 0xFF and h[1] & 0xF6 == 0xF0:  # ADTS sync (FFF1/FFF9, with CRC FFF0/FFF8)
        return "aac"
    if _looks_like_mp3(h):
        return "mp3"
    return None


def _describe_non_audio(h: bytes) -> str | None:
    """What a non-audio file looks like, for the error message (None: no idea)."""
    signatures: tuple[tuple[bytes, str], ...] = (
        (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF87a", "a GIF image"), (b"GIF89a", "a GIF image"), (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
        (b"PK\x05\x06", "an empty ZIP archive"), (b"\x1f\x8b", "a gzip archive"),
        (b"BZh", "a bzip2 archive"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
        (b"Rar!\x1a\x07", "a RAR archive"), (b"\x7fELF", "an executable program"),
        (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
        (b"SQLite format 3\x00", "an SQLite database"),
        (b"MThd", "a MIDI file (notes, not a recording)"),
    )
    for magic, what in signatures:
        if h.startswith(magic):
            return what
    if h[:4] == b"RIFF" and h[8:12] == b"WEBP":
        return "a WebP image"
    if h[:2] == b"MZ" and len(h) >= 64:
        return "a Windows executable"
    if h[:2] == b"BM" and h[6:10] == b"\x00\x00\x00\x00" and len(h) >= 26:
        return "a BMP image"
    if h[4:8] == b"ftyp" and h[8:12] in _IMAGE_BRANDS:
        return "a HEIC/AVIF image"
    if h and not h.strip(b"\x00"):
        return "nothing but zero bytes"
    text = _as_text(h[:4096])
    if text is None:
        return None
    start = text.lstrip("\ufeff \t\r\n").lower()
    if start.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in start[:512]:
        return "an HTML page"
    if start.startswith("<?xml") or start.startswith("<svg"):
        return "an XML file"
    if start.startswith(("{", "[")):
        return "a JSON file"
    return "a text file"


def _as_text(h: bytes) -> str | None:
    """Decode ``h`` as text if it plausibly is text (UTF-8/16 or GB18030), else None."""
    if not h:
        return None
    if h.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return h.decode("utf-16")
        except UnicodeDecodeError:
            return None
    if b"\x00" in h:
        return None
    if h.startswith(b"\xef\xbb\xbf"):
        h = h[3:]
    text = None
    for encoding in ("utf-8", "gb18030"):
        try:
            text = h.decode(encoding)
        except UnicodeDecodeError as e:
            # The 4 KiB cut may split a multi-byte character at the very end.
            if e.start >= len(h) - 4:
                text = h[: e.start].decode(encoding, errors="replace")
            else:
                continue
        break
    if not text:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\t\r\n\f")
    return text if printable >= 0.97 * len(text) else None


# --------------------------------------------------------------------------- inputs


@dataclass
class _Input:
    f: IO[bytes]
    size: int
    label: str


def _label_for(source: str | os.PathLike[str] | bytes | bytearray | memoryview,
               name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<upload>"
    path = os.fspath(source)
    return os.path.basename(os.path.normpath(path)) or path


@contextmanager
def _open_input(source: str | os.PathLike[str] | bytes | bytearray | memoryview, label: str,
                max_bytes: int | None) -> Iterator[_Input]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_size(len(data), max_bytes, label)
        yield _Input(io.BytesIO(data), len(data), label)
        return
    path = os.fspath(source)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError("not_found", "the file does not exist", label) from None
    except OSError as e:
        raise AudioError("not_found", f"the file cannot be reached ({e.strerror})",
                         label) from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError("not_a_file", "this is a directory, not an audio file", label)
    if not stat.S_ISREG(st.st_mode):
        # FIFOs and devices may never end (think /dev/zero); only regular files.
        raise AudioError("not_a_file", "this is not a regular file", label)
    _check_size(st.st_size, max_bytes, label)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, yielded to the caller
    except OSError as e:
        raise AudioError("not_a_file", f"the file cannot be read ({e.strerror})",
                         label) from None
    try:
        yield _Input(f, st.st_size, label)
    finally:
        f.close()


def _check_size(size: int, max_bytes: int | None, label: str) -> None:
    if size == 0:
        raise AudioError("empty", "the file is 0 bytes", label)
    if max_bytes is not None and size > max_bytes:
        raise AudioError("too_large", f"the file is {_fmt_bytes(size)}, over the "
                         f"{_fmt_bytes(max_bytes)} limit", label)


def _fmt_bytes(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n:,} bytes"
    return f"{n / (1024 * 1024):.1f} MiB"


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.2f} s"
    whole = round(s)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


# --------------------------------------------------------------------------- public API


def decode_audio(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    split_channels: bool = False,
    max_seconds: float | None = None,
    max_bytes: int | None = None,
    min_seconds: float = 0.1,
    reject_silence: bool = True,
) -> DecodedAudio:
    """Decode a file path or uploaded bytes to 16 kHz mono (or per-channel) float32.

    ``name`` labels the source in errors (default: the file's base name, or
    "<upload>" for bytes).  Raises :class:`AudioError` - and nothing else - when the
    input is missing, not a file, empty, over ``max_bytes``, not audio, damaged,
    truncated, shorter than ``min_seconds``, longer than ``max_seconds`` or (with
    ``reject_silence``) silent.
    """
    label = _label_for(source, name)
    try:
        with _open_input(source, label, max_bytes) as inp:
            return _decode(inp, split_channels, max_seconds, min_seconds, reject_silence)
    except AudioError:
        raise
    except MemoryError:
        raise AudioError("too_large", "decoding it needs more memory than is available",
                         label) from None
    except Exception as e:  # the boundary: no library exception may escape
        raise AudioError("corrupt", f"the file could not be decoded ({_describe_exc(e)})",
                         label) from e


def _describe_exc(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg).strip().rstrip(".")


def _decode(inp: _Input, split: bool, max_seconds: float | None, min_seconds: float,
            reject_silence: bool) -> DecodedAudio:
    inp.f.seek(0)
    head = inp.f.read(_HEAD_BYTES)
    fmt = sniff_format(head)
    if fmt is None:
        what = _describe_non_audio(head)
        if what is not None:
            raise AudioError("not_audio", f"this is not audio: it looks like {what}",
                             inp.label)
    declared: float | None = None  # exact duration stated by the container, if any
    if fmt == "silk":
        result = _decode_silk(inp, max_seconds)
    else:
        if fmt == "wav":
            declared = _check_wav(inp, max_seconds)
        elif fmt == "amr":
            _check_amr(inp, max_seconds)
        elif fmt in ("mp4", "3gp"):
            _check_mp4(inp)
        elif fmt == "ogg":
            _check_ogg(inp)
        result = _decode_av(inp, fmt, split, max_seconds, declared)
    return _finish(result, inp.label, min_seconds, reject_silence)


def _finish(result: DecodedAudio, label: str, min_seconds: float,
            reject_silence: bool) -> DecodedAudio:
    tracks = result.tracks
    # Garbage float WAV data can hold NaN/inf or values like 1e30, and resampling may
    # overshoot a clipped signal a little; downstream (VAD, Whisper) wants [-1, 1].
    if tracks.size and not np.isfinite(tracks).all():
        np.nan_to_num(tracks, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(tracks, -1.0, 1.0, out=tracks)
    if result.duration < min_seconds:
        if result.tracks.shape[1] == 0:
            raise AudioError("too_short", "the file holds no audio samples (0 s)", label)
        raise AudioError("too_short", f"the audio is only {result.duration:.3f} s long "
                         f"(at least {min_seconds:g} s is needed)", label)
    if reject_silence:
        peak, rms = _levels(result.tracks)
        if peak == 0.0:
            what = ("a constant level (DC offset only)" if result.tracks.any()
                    else "digital silence (every sample is zero)")
            raise AudioError("silent", f"the {result.duration:.1f} s of audio are {what}",
                             label)
        if peak < _SILENT_PEAK or rms < _SILENT_RMS:
            raise AudioError("silent", f"the {result.duration:.1f} s of audio are silent "
                             f"(peak {_dbfs(peak):.0f} dBFS, RMS {_dbfs(rms):.0f} dBFS)", label)
    return result


def _dbfs(level: float) -> float:
    return 20 * math.log10(max(level, 1e-10))


def _levels(tracks: np.ndarray) -> tuple[float, float]:
    """Peak and RMS over all tracks, with each track's DC offset removed.

    Chunked so a long file needs no second full-size copy; float32 is plenty here.
    """
    step = SAMPLE_RATE * 60
    peak = 0.0
    sq = 0.0
    n = tracks.shape[1]
    for row in tracks:
        dc = np.float32(row.mean(dtype=np.float64)) if n else np.float32(0)
        for i in range(0, n, step):
            chunk = row[i:i + step] - dc
            peak = max(peak, float(chunk.max()), -float(chunk.min()))
            sq += float(np.dot(chunk, chunk))
    return peak, math.sqrt(sq / max(1, n * tracks.shape[0]))


# --------------------------------------------------------------------------- WAV


def _check_wav(inp: _Input, max_seconds: float | None) -> float | None:
    """Validate a RIFF/WAVE header before ffmpeg sees it; return the declared seconds.

    Fails fast on absurd fields (sample rate, channels), on a header that declares far
    more audio than the file holds (a cut upload, or a hostile "3 hours" header), and
    on a present duration over the limit - all without decoding anything.
    """
    f, size, label = inp.f, inp.size, inp.label
    f.seek(0)
    riff = f.read(12)
    big = riff[:4] == b"RIFX"
    end = ">" if big else "<"
    pos = 12
    fmt_fields: tuple[int, int, int, int, int, int] | None = None
    ds64_data: int | None = None
    data_off: int | None = None
    data_size = 0
    for _ in range(512):  # a real header has a handful of chunks
        if pos + 8 > size:
            break
        f.seek(pos)
        chunk = f.read(8)
        cid = chunk[:4]
        (csize,) = struct.unpack(end + "I", chunk[4:8])
        if cid == b"ds64":  # RF64/BW64: the real 64-bit sizes live here
            body = f.read(min(csize, 28))
            if len(body) >= 16:
                (ds64_data,) = struct.unpack("<Q", body[8:16])
        elif cid == b"fmt ":
            body = f.read(min(csize, 40))
            if csize >= 16 and len(body) < 16:
                raise AudioError("truncated", "the WAV file ends inside its header", label)
            if csize < 16:
                raise AudioError("corrupt", "the WAV 'fmt ' chunk is too short", label)
            tag, channels, rate, avg, align, bits = struct.unpack(end + "HHIIHH", body[:16])
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: real tag
                (tag,) = struct.unpack(end + "H", body[24:26])
            fmt_fields = (tag, channels, rate, avg, align, bits)
        elif cid == b"data":
            data_off = pos + 8
            data_size = csize
            break
        pos += 8 + csize + (csize & 1)
    if fmt_fields is None:
        if data_off is None and pos >= size:
            raise AudioError("truncated", "the WAV file ends inside its header", label)
        raise AudioError("corrupt", "the WAV header has no 'fmt ' chunk", label)
    tag, channels, rate, avg, align, bits = fmt_fields
    if channels == 0:
        raise AudioError("bad_parameters", "the WAV header declares 0 channels", label)
    if channels > MAX_CHANNELS:
        raise AudioError("bad_parameters", f"the WAV header declares {channels} channels "
                         f"(at most {MAX_CHANNELS} are supported)", label)
    _check_rate(rate, "the WAV header", label)
    pcm_like = tag in (1, 3, 6, 7)  # PCM, float, A-law, mu-law
    if pcm_like and not 0 < bits <= 64:
        raise AudioError("bad_parameters", f"the WAV header declares {bits} bits per sample",
                         label)
    if pcm_like and align == 0:
        raise AudioError("bad_parameters", "the WAV header declares a block size of 0",
                         label)
    if data_off is None:
        if pos >= size:
            raise AudioError("truncated", "the WAV file ends before its audio data", label)
        raise AudioError("corrupt", "the WAV file has no 'data' chunk", label)

    present = max(0, size - data_off)
    if data_size == 0xFFFFFFFF and ds64_data is not None:
        data_size = ds64_data
    # 0 and 0xFFFFFFFF (and near-2 GiB placeholders) are what streaming writers leave
    # when they could not go back to fill in the size: length unknown, read to EOF.
    unknown = data_size in (0, 0xFFFFFFFF) or 0x7FFF0000 <= data_size <= 0xFFFFFFFF
    if data_size == 0 and present == 0:
        raise AudioError("too_short", "the WAV file holds no audio samples (0 s)", label)
    bytes_per_second = align * rate if pcm_like else avg
    if not bytes_per_second:
        return None
    present_s = (present if unknown else min(present, data_size)) / bytes_per_second
    declared_s = None if unknown else data_size / bytes_per_second
    if declared_s is not None and _is_truncated(present_s, declared_s):
        raise AudioError("truncated", f"the WAV header declares {_fmt_seconds(declared_s)} "
                         f"of audio but the file holds only {_fmt_seconds(present_s)} "
                         "(it was cut off)", label)
    _check_length_upfront(present_s, max_seconds, label)
    return declared_s


def _check_rate(rate: int, where: str, label: str) -> None:
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioError("bad_parameters", f"{where} declares a sample rate of {rate:,} Hz "
                         f"(expected {MIN_SOURCE_RATE:,}-{MAX_SOURCE_RATE:,} Hz)", label)


def _is_truncated(got_s: float, declared_s: float) -> bool:
    return (got_s < _TRUNCATED_FRACTION * declared_s
            and declared_s - got_s > _TRUNCATED_MIN_MISSING_S)


def _check_length_upfront(seconds: float, max_seconds: float | None, label: str) -> None:
    if max_seconds is not None and seconds > max_seconds + _LENGTH_SLACK_S:
        raise AudioError("too_long", f"the audio is {_fmt_seconds(seconds)} long, over the "
                         f"{_fmt_seconds(max_seconds)} limit", label)


def _raise_too_long(at_least: float, max_seconds: float | None, label: str) -> None:
    # Called as soon as a walk or the decoder passes the limit: the rest is not read.
    raise AudioError("too_long", f"the audio is longer than the "
                     f"{_fmt_seconds(max_seconds or 0)} limit (stopped reading at "
                     f"{_fmt_seconds(at_least)})", label)


# --------------------------------------------------------------------------- AMR

# Payload bytes per frame type (3GPP TS 26.101 / 26.201); None: reserved (invalid).
_AMR_NB_SIZES = (12, 13, 15, 17, 19, 20, 26, 31, 5, 6, 5, 5, None, None, None, 0)
_AMR_WB_SIZES = (17, 23, 32, 36, 40, 46, 50, 58, 60, 5, None, None, None, None, 0, 0)


def _check_amr(inp: _Input, max_seconds: float | None) -> None:
    """Walk the AMR frames: exact duration, and a cut or garbled file is caught here.

    AMR has no length field, and ffmpeg quietly drops a partial last frame, so this walk
    is the only way to tell a cut upload from a complete one.
    """
    f, label = inp.f, inp.label
    f.seek(0)
    data = f.read()
    if data.startswith(b"#!AMR-WB\n"):
        sizes, pos = _AMR_WB_SIZES, 9
    elif data.startswith(b"#!AMR\n"):
        sizes, pos = _AMR_NB_SIZES, 6
    else:  # "#!AMR_MC1.0\n" multichannel storage: ffmpeg has no demuxer for it
        raise AudioError("unsupported_format", "multichannel AMR files are not supported",
                         label)
    frames = 0
    limit = None if max_seconds is None else (max_seconds + _LENGTH_SLACK_S) / 0.02
    n = len(data)
    while pos < n:
        ftype = (data[pos] >> 3) & 0x0F
        payload = sizes[ftype]
        if payload is None:
            raise AudioError("corrupt", f"the AMR data is damaged (invalid frame type "
                             f"{ftype} at byte {pos:,})", label)
        if pos + 1 + payload > n:
            raise AudioError("truncated", f"the AMR file is cut off in the middle of a "
                             f"frame after {_fmt_seconds(frames * 0.02)} of audio", label)
        pos += 1 + payload
        frames += 1
        if limit is not None and frames > limit:
            _raise_too_long(frames * 0.02, max_seconds, label)
    if frames == 0:
        raise AudioError("truncated", "the AMR file has a header but no audio frames",
                         label)


# --------------------------------------------------------------------------- MP4, OGG


def _check_mp4(inp: _Input) -> None:
    """Walk the top-level boxes: without a 'moov' box an MP4/M4A cannot be decoded.

    That is what a phone leaves when a recording is interrupted before it is
    finalised (the index is written last), so say so instead of ffmpeg's message.
    """
    f, size, label = inp.f, inp.size, inp.label
    pos = 0
    seen: set[bytes] = set()
    cut = False
    for _ in range(10_000):
        if pos + 8 > size:
            cut = pos < size
            break
        f.seek(pos)
        hdr = f.read(16)
        (box_size,) = struct.unpack(">I", hdr[:4])
        box = hdr[4:8]
        if box_size == 1 and len(hdr) >= 16:
            (box_size,) = struct.unpack(">Q", hdr[8:16])
        elif box_size == 0:  # "to the end of the file"
            box_size = size - pos
        if box_size < 8:
            break  # garbage after the boxes; let ffmpeg judge
        seen.add(box)
        if pos + box_size > size:
            cut = True
            break
        pos += box_size
    if b"moov" not in seen:
        if cut or b"mdat" in seen:
            raise AudioError("truncated", "the MP4/M4A file has no index ('moov' box): the "
                             "recording was cut off or never finished", label)
        raise AudioError("corrupt", "the MP4/M4A file has no index ('moov' box)", label)


def _check_ogg(inp: _Input) -> None:
    """Walk the OGG pages; a last page that runs past the end means a cut file."""
    f, size, label = inp.f, inp.size, inp.label
    pos = 0
    while pos < size:
        if size - pos < 27:
            raise AudioError("truncated", "the OGG file is cut off in the middle of a page",
                             label)
        f.seek(pos)
        hdr = f.read(27)
        if hdr[:4] != b"OggS":
            return  # junk between pages: ffmpeg resyncs, let it judge
        nsegs = hdr[26]
        table = f.read(nsegs)
        if len(table) < nsegs or pos + 27 + nsegs + sum(table) > size:
            raise AudioError("truncated", "the OGG file is cut off in the middle of a page",
                             label)
        pos += 27 + nsegs + sum(table)


# --------------------------------------------------------------------------- SILK


def _decode_silk(inp: _Input, max_seconds: float | None) -> DecodedAudio:
    """WeChat/QQ voice notes: SILK v3 frames, decoded with pysilk at 24 kHz."""
    label = inp.label
    inp.f.seek(0)
    data = inp.f.read()
    body = data[1:] if data[:1] == b"\x02" else data
    if not body.startswith(b"#!SILK_V3"):
        raise AudioError("unsupported_format", "only SILK v3 voice notes are supported",
                         label)
    # Frames: uint16 little-endian length + payload, 20 ms each (WeChat writes one
    # frame per packet; more would only make the count a lower bound).
    pos, n, frames = 9, len(body), 0
    limit = None if max_seconds is None else (max_seconds + _LENGTH_SLACK_S) / 0.02
    while pos + 2 <= n:
        (length,) = struct.unpack_from("<H", body, pos)
        if length == 0xFFFF:  # end marker some writers add
            break
        if length > 1280:  # SILK's own ceiling per packet; beyond it is garbage
            raise AudioError("corrupt", f"the SILK data is damaged (a {length}-byte frame "
                             f"at byte {pos:,})", label)
        if pos + 2 + length > n:
            raise AudioError("truncated", "the SILK file is cut off in the middle of a "
                             f"frame after {_fmt_seconds(frames * 0.02)} of audio", label)
        pos += 2 + length
        frames += 1
        if limit is not None and frames > limit:
            _raise_too_long(frames * 0.02, max_seconds, label)
    if frames == 0:
        raise AudioError("truncated", "the SILK file has a header but no audio frames",
                         label)
    pcm = _run_silk_decoder(data, frames, label)
    mono = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768)
    _check_length_upfront(mono.size / SAMPLE_RATE, max_seconds, label)
    # WeChat encodes at SILK's top internal rate, 24 kHz; the file itself does not say.
    return DecodedAudio(tracks=mono[np.newaxis, :], sample_rate=SAMPLE_RATE, format="silk",
                        codec="silk", source_sample_rate=24000, source_channels=1,
                        duration=mono.size / SAMPLE_RATE)


# Runs in a child process.  The SILK SDK decoder inside pysilk is not memory-safe on
# damaged bitstreams: fuzzing found flipped payload bytes that corrupt the heap and
# abort the interpreter ("corrupted double-linked list").  One hostile voice note must
# not take a worker down, so the decoder gets a process of its own (~50 ms).
_SILK_CHILD = """
import io, sys
try:
    import pysilk
except ImportError:
    sys.exit(4)
out = io.BytesIO()
try:
    pysilk.decode(io.BytesIO(sys.stdin.buffer.read()), out, int(sys.argv[1]))
except Exception as e:
    sys.stderr.write(f"{type(e).__name__}: {e}")
    sys.exit(3)
sys.stdout.buffer.write(out.getvalue())
"""


def _run_silk_decoder(data: bytes, frames: int, label: str) -> bytes:
    """SILK bytes -> s16le mono PCM at 16 kHz, decoded in a child process."""
    # The SILK decoder has its own output resampler: asking it for 16 kHz directly is
    # ~40 % faster than decoding at 24 kHz and resampling (same tone, same length).
    timeout = 30 + frames * 0.02 * 0.2  # decoding runs ~50x real time; be generous
    try:
        proc = subprocess.run([sys.executable, "-c", _SILK_CHILD, str(SAMPLE_RATE)],
                              input=data, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise AudioError("corrupt", "the SILK decoder got stuck on this data", label) \
            from None
    except OSError as e:
        raise AudioError("unsupported_format", f"the SILK decoder could not be started "
                         f"({e.strerror})", label) from None
    if proc.returncode == 4:
        raise AudioError("unsupported_format", "SILK voice notes need the silk-python "
                         "package, which is not installed", label)
    if proc.returncode == 3:
        message = proc.stderr.decode("utf-8", "replace").strip() or "decoder error"
        raise AudioError("corrupt", f"the SILK data is damaged ({message})", label)
    if proc.returncode != 0:
        raise AudioError("corrupt", "the SILK data is damaged (the decoder crashed on it)",
                         label)
    return proc.stdout


# --------------------------------------------------------------------------- PyAV


def _decode_av(inp: _Input, fmt: str | None, split: bool, max_seconds: float | None,
               declared: float | None) -> DecodedAudio:
    label = inp.label
    kind = _FORMAT_LABELS.get(fmt or "", "audio")
    inp.f.seek(0)
    try:
        container = av.open(inp.f, mode="r", format=_DEMUXERS.get(fmt or ""),
                            metadata_errors="ignore")
    except Exception as e:
        if fmt is None:
            raise AudioError("not_audio", "this is not a recognised audio format", label) \
                from e
        if isinstance(e, av.error.EOFError):  # headers only, e.g. OGG/FLAC cut early
            raise AudioError("truncated", f"the {kind} file ends before any audio (it was "
                             "cut off)", label) from e
        raise AudioError("corrupt", f"the {kind} data is damaged and cannot be opened "
                         f"({_describe_exc(e)})", label) from e
    with container:
        return _decode_container(container, inp, fmt, split, max_seconds, declared)


def _decode_container(container: Any, inp: _Input, fmt: str | None, split: bool,
                      max_seconds: float | None, declared: float | None) -> DecodedAudio:
    label = inp.label
    probed = fmt is None
    if probed:
        fmt = _FFMPEG_TO_FORMAT.get(container.format.name.split(",")[0],
                                    container.format.name.split(",")[0])
    kind = _FORMAT_LABELS.get(fmt, fmt.upper())
    audio_streams = list(container.streams.audio)
    if not audio_streams:
        if probed and not container.streams.video:
            raise AudioError("not_audio", "this is not a recognised audio format", label)
        others = len(container.streams) - len(audio_streams)
        raise AudioError("no_audio_stream", f"the {kind} file has no audio track "
                         f"({others} other track{'s' if others != 1 else ''}, e.g. video)",
                         label)
    stream = container.streams.best("audio") or audio_streams[0]
    ctx = stream.codec_context
    if ctx is None or ctx.codec is None:
        raise AudioError("unsupported_format", f"the {kind} file uses an audio codec that "
                         "cannot be decoded", label)
    codec = getattr(ctx.codec, "canonical_name", None) or ctx.codec.name
    src_rate = int(ctx.sample_rate or 0)
    src_channels = int(ctx.channels or 0)
    if src_rate:
        _check_rate(src_rate, f"the {kind} stream", label)
    if src_channels > MAX_CHANNELS:
        raise AudioError("bad_parameters", f"the {kind} stream has {src_channels} channels "
                         f"(at most {MAX_CHANNELS} are supported)", label)

    stated = _stated_duration(container, stream)
    if stated is not None and fmt != "wav":
        if fmt in _TRUSTED_DURATION:
            _check_length_upfront(stated, max_seconds, label)
        elif max_seconds is not None:
            _check_length_upfront(stated / _ESTIMATE_FACTOR, max_seconds, label)
        if fmt in _EXACT_DURATION:
            declared = stated

    limit = None if max_seconds is None else int((max_seconds + _LENGTH_SLACK_S) * SAMPLE_RATE)
    # Preallocate for the stated length, but never trust a header for more than the
    # limit (or 2 hours without one): past that the sink just falls back to a list.
    expected = None if stated is None else int(stated * SAMPLE_RATE) + SAMPLE_RATE
    if expected is not None:
        expected = min(expected, limit or _MAX_PREALLOC, _MAX_PREALLOC)
    sink = _Sink(expected)
    # Decoded frames are tiny (160 samples for AMR, 1152 for MP3) and PyAV's per-call
    # overhead dominates if each is resampled and converted on its own; so frames are
    # queued in an AudioFifo and resampled about a second at a time (3-4x faster).
    resampler: av.AudioResampler | None = None
    fifo: av.AudioFifo | None = None
    batch = SAMPLE_RATE
    in_key: tuple[str, str, int] | None = None
    out_layout: Any = None
    packets = bad = 0
    first_error: Exception | None = None
    demux_error: Exception | None = None

    def take(frames: list[Any]) -> None:
        for of in frames:
            # Packed "flt", not planar "fltp": PyAV (18.1) reads one plane pointer past
            # the end of AVFrame.data for 8-channel planar frames and segfaults in
            # to_ndarray.  A packed frame is one plane, (1, n * C) interleaved.
            arr = of.to_ndarray().reshape(-1, len(of.layout.channels))  # (n, C)
            if not split and arr.shape[1] > 1:
                arr = arr.mean(axis=1, dtype=np.float32)[:, np.newaxis]
            sink.add(arr.T)
        if limit is not None and sink.size > limit:
            _raise_too_long(sink.size / SAMPLE_RATE, max_seconds, label)

    def drain(final: bool) -> None:
        if resampler is None or fifo is None:
            return
        if fifo.samples:
            take(resampler.resample(fifo.read()))
        if final:
            take(resampler.resample(None))

    try:
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
            try:
                frames = packet.decode()
            except (av.error.FFmpegError, ValueError) as e:
                # One damaged packet in a long call is not worth failing for; many are.
                bad += 1
                first_error = first_error or e
                continue
            for frame in frames:
                if not frame.samples:
                    continue
                rate = frame.sample_rate
                key = (frame.format.name, frame.layout.name, rate)
                if key != in_key:  # first frame, or parameters changed mid-stream
                    nch = len(frame.layout.channels)
                    _check_rate(rate, f"the {kind} stream", label)
                    if nch == 0 or nch > MAX_CHANNELS:
                        raise AudioError("bad_parameters", f"the {kind} stream has {nch} "
                                         "channels", label)
                    drain(final=True)
                    if out_layout is None:
                        # Keep the first layout for the whole file so tracks stay aligned.
                        out_layout = frame.layout
                        src_rate, src_channels = rate, nch
                    resampler = av.AudioResampler(format="flt", layout=out_layout,
                                                  rate=SAMPLE_RATE)
                    fifo = av.AudioFifo()
                    batch = max(4096, rate)
                    in_key = key
                assert fifo is not None
                frame.pts = None  # the FIFO insists on contiguous pts; we don't need them
                fifo.write(frame)
                if fifo.samples >= batch:
                    drain(final=False)
        drain(final=True)
    except AudioError:
        raise
    except Exception as e:  # demuxer gave up mid-file; judge by what was decoded
        demux_error = e
        try:
            drain(final=True)
        except AudioError:
            raise
        except Exception:
            pass

    total = sink.size
    if probed and (total == 0 or bad > _MAX_BAD_PACKET_SHARE * max(packets, 1)):
        raise AudioError("not_audio", "this is not a recognised audio format", label)
    if total == 0 and (bad or demux_error):
        err = first_error or demux_error
        assert err is not None
        raise AudioError("corrupt", f"the {kind} data is damaged and no audio could be "
                         f"decoded ({_describe_exc(err)})", label)
    if bad > max(2, _MAX_BAD_PACKET_SHARE * packets):
        raise AudioError("corrupt", f"the {kind} data is damaged ({bad} of {packets} "
                         "audio packets could not be decoded)", label)
    seconds = total / SAMPLE_RATE
    if declared is not None and _is_truncated(seconds, declared):
        raise AudioError("truncated", f"the {kind} file declares {_fmt_seconds(declared)} "
                         f"of audio but only {_fmt_seconds(seconds)} could be decoded "
                         "(it was cut off)", label)

    return DecodedAudio(tracks=sink.result(), sample_rate=SAMPLE_RATE, format=fmt, codec=codec,
                        source_sample_rate=src_rate, source_channels=src_channels,
                        duration=seconds)


class _Sink:
    """Collects (C, n) float32 blocks into one (C, N) array without doubling memory.

    When the container states its duration the output is written straight into one
    preallocated array (an hour of 16 kHz mono is 230 MB; list + concatenate would
    briefly need twice that).  Otherwise, or past the estimate, blocks are listed and
    joined at the end.
    """

    def __init__(self, expected: int | None) -> None:
        self.expected = expected
        self.buf: np.ndarray | None = None
        self.chunks: list[np.ndarray] = []
        self.size = 0

    def add(self, block: np.ndarray) -> None:
        n = block.shape[1]
        if self.size == 0 and self.buf is None and self.expected:
            self.buf = np.empty((block.shape[0], self.expected), dtype=np.float32)
        if self.buf is not None and not self.chunks and self.size + n <= self.buf.shape[1]:
            self.buf[:, self.size:self.size + n] = block
        else:
            if self.buf is not None and not self.chunks:  # estimate exceeded
                self.chunks.append(self.buf[:, :self.size])
            self.chunks.append(block)
        self.size += n

    def result(self) -> np.ndarray:
        if self.chunks:
            out = np.concatenate(self.chunks, axis=1)
        elif self.buf is not None:
            out = self.buf[:, :self.size]
            if self.size < 0.9 * self.buf.shape[1]:
                out = out.copy()  # don't pin a much larger buffer
        else:
            out = np.zeros((1, 0), dtype=np.float32)
        return np.ascontiguousarray(out, dtype=np.float32)


def _stated_duration(container: Any, stream: Any) -> float | None:
    """The duration the container states (None: not stated)."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


# --------------------------------------------------------------------------- playback


def write_wav(path: str | os.PathLike[str], tracks: np.ndarray,
              sample_rate: int = SAMPLE_RATE) -> Path:
    """Float tracks, (C, N) or (N,), as 16-bit PCM WAV, written to a temporary name and
    renamed, so a concurrent reader never sees half a file."""
    tracks = np.atleast_2d(tracks)
    frames = (np.clip(tracks, -1.0, 1.0).T * 32767.0).astype("<i2")  # (N, C): interleaved
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(frames.tobytes())
    os.replace(tmp, target)
    return target


def write_playable_wav(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """The recording as 16 kHz 16-bit PCM WAV, every channel kept, for a browser player.

    Browsers play neither AMR nor SILK, and seeking needs a format with fixed-size
    frames; the review page plays this rendition.
    """
    decoded = decode_audio(source, split_channels=True, min_seconds=0.0,
                           reject_silence=False)
    return write_wav(target, decoded.tracks, decoded.sample_rate)
