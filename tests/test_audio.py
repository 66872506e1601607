"""The decoding stage: every format a phone or hotline sends, and hostile input.

All inputs are generated in tmp_path (tones, so the frequency can be checked after
each codec and nothing is "silent"); the real speech in shared/audio and the samples/
set are decoded where present.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.audio import SAMPLE_RATE, AudioError, DecodedAudio, decode_audio, sniff_format
from tests import audio_factory as af

ROOT = Path(__file__).resolve().parents[1]
SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
SAMPLES_MANIFEST = ROOT / "samples" / "manifest.jsonl"


def peak_hz(x: np.ndarray) -> float:
    """The strongest frequency in ``x`` (16 kHz)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / len(x)


def assert_tones(result: DecodedAudio, channels: int, *, seconds: float = 1.0,
                 tolerance_s: float = 0.05) -> None:
    """16 kHz float32, the right length, one track per channel with its own tone."""
    assert result.sample_rate == SAMPLE_RATE
    assert result.tracks.dtype == np.float32
    assert result.tracks.ndim == 2 and result.tracks.shape[0] == channels
    assert result.tracks.flags.c_contiguous
    assert abs(result.duration - seconds) <= tolerance_s, result.duration
    assert result.tracks.shape[1] == round(result.duration * SAMPLE_RATE)
    for track, expected in zip(result.tracks, af.TONES[:channels], strict=True):
        assert abs(peak_hz(track) - expected) <= max(10.0, 0.02 * expected)
    assert result.mono.shape == (result.tracks.shape[1],)
    assert result.mono.dtype == np.float32


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(("head", "expected"), [
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
    (b"RF64\xff\xff\xff\xffWAVEds64", "wav"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00", "mp3"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00fLaC", "flac"),
    (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "mp4"),
    (b"\x00\x00\x00\x20ftypisom\x00\x00\x00\x00", "mp4"),
    (b"\x00\x00\x00\x14ftyp3gp4\x00\x00\x00\x00", "3gp"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", None),  # a photo, not audio
    (b"#!AMR\n\x3c", "amr"),
    (b"#!AMR-WB\n\x44", "amr"),
    (b"OggS\x00\x02", "ogg"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "webm"),
    (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", "mkv"),
    (b"fLaC\x00\x00\x00\x22", "flac"),
    (b"#!SILK_V3\x0c\x00", "silk"),
    (b"\x02#!SILK_V3\x0c\x00", "silk"),
    (b"\xff\xf1\x50\x80\x02\x1f\xfc", "aac"),
    (b"\xff\xf9\x50\x80\x02\x1f\xfc", "aac"),
    (b"caff\x00\x01\x00\x00", "caf"),
    (b"\xff\xfe" + "text".encode("utf-16-le"), None),  # UTF-16 BOM, not MPEG layer I
    (b"hello world", None),
    (b"\x89PNG\r\n\x1a\n", None),
    (b"", None),
    (b"RI", None),
])
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


def test_sniff_format_mp3_needs_a_second_frame() -> None:
    frame = b"\xff\xfb\x90\x64" + bytes(413)  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz
    assert sniff_format(frame + frame) == "mp3"
    assert sniff_format(frame + b"\x00" * 500) is None  # a lone sync word is junk


# --------------------------------------------------------------------------- WAV matrix

WAV_FORMATS = ["u8", "s16", "s24", "s32", "f32", "mulaw", "alaw"]
WAV_CODECS = {"u8": "pcm_u8", "s16": "pcm_s16le", "s24": "pcm_s24le", "s32": "pcm_s32le",
              "f32": "pcm_f32le", "mulaw": "pcm_mulaw", "alaw": "pcm_alaw"}
RATES = [8000, 11025, 16000, 22050, 44100, 48000]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("sample_format", WAV_FORMATS)
def test_wav_round_trip(tmp_path: Path, sample_format: str, rate: int, channels: int) -> None:
    path = af.write_wav(tmp_path / "call.wav", af.tone(1.0, rate, channels), rate,
                        sample_format)
    result = decode_audio(path, split_channels=True)
    assert (result.format, result.codec) == ("wav", WAV_CODECS[sample_format])
    assert (result.source_sample_rate, result.source_channels) == (rate, channels)
    assert_tones(result, channels, tolerance_s=0.002)
    mixed = decode_audio(path)
    assert mixed.tracks.shape == (1, result.tracks.shape[1])
    np.testing.assert_allclose(mixed.tracks[0], result.mono, atol=1e-5)


def test_multichannel_wav_keeps_channel_order(tmp_path: Path) -> None:
    path = tmp_path / "four.wav"
    path.write_bytes(af.wav_bytes(af.tone(1.0, 16000, 4)))
    result = decode_audio(path, split_channels=True)
    assert result.source_channels == 4
    assert_tones(result, 4, tolerance_s=0.002)


def test_wav_with_slightly_short_tail_still_decodes(tmp_path: Path) -> None:
    # Sloppy writers leave the data size a little larger than what they wrote.
    data = af.wav_bytes(af.tone(2.0, 16000))
    path = tmp_path / "tail.wav"
    path.write_bytes(data[:-3000])  # 94 ms short
    result = decode_audio(path)
    assert abs(result.duration - (2.0 - 3000 / 32000)) < 0.002


@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF])
def test_streamed_wav_with_unknown_length_decodes(tmp_path: Path, data_size: int) -> None:
    # Recorders writing to a pipe cannot go back to fill in the size.
    path = tmp_path / "stream.wav"
    path.write_bytes(af.wav_bytes(af.tone(1.0, 8000), rate=8000, data_size=data_size))
    assert_tones(decode_audio(path), 1, tolerance_s=0.002)


def test_rf64_wav(tmp_path: Path) -> None:
    payload = af.wav_bytes(af.tone(1.0, 16000))[44:]
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    ds64 = struct.pack("<QQQI", 0, len(payload), len(payload) // 2, 0)
    data = (b"RF64\xff\xff\xff\xffWAVE" + b"ds64" + struct.pack("<I", len(ds64)) + ds64
            + b"fmt " + struct.pack("<I", 16) + fmt + b"data\xff\xff\xff\xff" + payload)
    path = tmp_path / "broadcast.wav"
    path.write_bytes(data)
    assert_tones(decode_audio(path), 1, tolerance_s=0.002)


# --------------------------------------------------------------------------- compressed

Writer = Callable[[Path, np.ndarray, int], Any]

# (id, writer, input rate, channels, file name, format, codec, source rate, tolerance s)
COMPRESSED: list[tuple[str, Writer, int, int, str, str, str, int, float]] = [
    ("mp3-44k-stereo", af.write_mp3, 44100, 2, "memo.mp3", "mp3", "mp3", 44100, 0.05),
    ("mp3-16k-mono", af.write_mp3, 16000, 1, "memo.mp3", "mp3", "mp3", 16000, 0.05),
    ("mp3-8k-mono", af.write_mp3, 8000, 1, "memo.mp3", "mp3", "mp3", 8000, 0.08),
    ("m4a-44k-stereo", af.write_m4a, 44100, 2, "memo.m4a", "mp4", "aac", 44100, 0.05),
    ("m4a-16k-mono", af.write_m4a, 16000, 1, "memo.m4a", "mp4", "aac", 16000, 0.05),
    ("3gp-aac", lambda p, x, r: af.write_m4a(p, x, r, "3gp"), 16000, 1, "memo.3gp", "3gp",
     "aac", 16000, 0.05),
    # ADTS has nowhere to record the encoder delay, so AAC's 1024 priming samples stay.
    ("adts-44k-stereo", af.write_adts, 44100, 2, "memo.aac", "aac", "aac", 44100, 0.06),
    ("adts-16k-mono", af.write_adts, 16000, 1, "memo.aac", "aac", "aac", 16000, 0.13),
    ("amr-nb", lambda p, x, r: af.write_amr_nb(p, x, r), 8000, 1, "memo.amr", "amr",
     "amr_nb", 8000, 0.05),
    ("ogg-opus-stereo", af.write_opus, 48000, 2, "memo.ogg", "ogg", "opus", 48000, 0.05),
    ("ogg-opus-16k-mono", af.write_opus, 16000, 1, "memo.opus", "ogg", "opus", 48000, 0.05),
    ("webm-opus", lambda p, x, r: af.write_opus(p, x, r, "webm"), 48000, 2, "memo.webm",
     "webm", "opus", 48000, 0.05),
    ("ogg-vorbis", af.write_vorbis, 44100, 2, "memo.ogg", "ogg", "vorbis", 44100, 0.05),
    ("flac-44k-stereo", af.write_flac, 44100, 2, "memo.flac", "flac", "flac", 44100, 0.002),
    ("flac-8k-mono", af.write_flac, 8000, 1, "memo.flac", "flac", "flac", 8000, 0.002),
    ("aiff", lambda p, x, r: af.encode(p, x, r, container="aiff", codec="pcm_s16be"),
     22050, 2, "memo.aiff", "aiff", "pcm_s16be", 22050, 0.002),
    ("caf", lambda p, x, r: af.encode(p, x, r, container="caf", codec="pcm_s16le"),
     16000, 1, "memo.caf", "caf", "pcm_s16le", 16000, 0.002),
]


@pytest.mark.parametrize(
    ("writer", "rate", "channels", "filename", "fmt", "codec", "source_rate", "tolerance"),
    [pytest.param(*case[1:], id=case[0]) for case in COMPRESSED])
def test_compressed_round_trip(tmp_path: Path, writer: Writer, rate: int, channels: int,
                               filename: str, fmt: str, codec: str, source_rate: int,
                               tolerance: float) -> None:
    path = tmp_path / filename
    writer(path, af.tone(1.0, rate, channels), rate)
    result = decode_audio(path, split_channels=True)
    assert (result.format, result.codec) == (fmt, codec)
    assert (result.source_sample_rate, result.source_channels) == (source_rate, channels)
    assert_tones(result, channels, tolerance_s=tolerance)
    assert decode_audio(path).tracks.shape[0] == 1


@pytest.mark.parametrize("tencent", [True, False], ids=["wechat-0x02", "plain-silk-v3"])
def test_silk_voice_note_named_amr(tmp_path: Path, tencent: bool) -> None:
    data = af.silk_bytes(af.tone(1.0, 24000), tencent=tencent)
    assert data.startswith(b"\x02#!SILK_V3" if tencent else b"#!SILK_V3")
    path = tmp_path / "微信语音.amr"  # how WeChat exports them
    path.write_bytes(data)
    result = decode_audio(path)
    assert (result.format, result.codec, result.source_channels) == ("silk", "silk", 1)
    assert_tones(result, 1, tolerance_s=0.02)
    assert_tones(decode_audio(data, name="upload.amr"), 1, tolerance_s=0.02)


def test_amr_wb_hand_made(tmp_path: Path) -> None:
    # PyAV ships no AMR-WB encoder; af.amr_wb_bytes builds valid frames with random
    # payloads, which the decoder turns into 16 kHz noise: container, codec and length
    # are checked, not a tone.
    path = tmp_path / "wideband.amr"
    path.write_bytes(af.amr_wb_bytes(1.0))
    result = decode_audio(path)
    assert (result.format, result.codec) == ("amr", "amr_wb")
    assert (result.source_sample_rate, result.source_channels) == (16000, 1)
    assert result.tracks.dtype == np.float32
    assert abs(result.duration - 1.0) <= 0.03
    assert float(np.abs(result.mono).max()) > 0.01


# --------------------------------------------------------------------------- content, not name


@pytest.mark.parametrize(("filename", "writer", "fmt"), [
    ("recording.mp3", lambda p: af.write_wav(p, af.tone(1.0, 16000), 16000), "wav"),
    ("recording.wav", lambda p: af.write_mp3(p, af.tone(1.0, 16000), 16000), "mp3"),
    ("recording.amr", lambda p: af.write_m4a(p, af.tone(1.0, 16000), 16000), "mp4"),
    ("recording.mp3", lambda p: af.write_opus(p, af.tone(1.0, 16000), 16000), "ogg"),
    ("recording", lambda p: af.write_flac(p, af.tone(1.0, 16000), 16000), "flac"),
    ("recording.wav", lambda p: p.write_bytes(af.silk_bytes(af.tone(1.0, 24000))), "silk"),
])
def test_format_comes_from_content_not_name(tmp_path: Path, filename: str,
                                            writer: Callable[[Path], Any], fmt: str) -> None:
    path = tmp_path / filename
    writer(path)
    result = decode_audio(path)
    assert result.format == fmt
    assert_tones(result, 1)


def test_bytes_input_and_odd_file_names(tmp_path: Path) -> None:
    data = af.wav_bytes(af.tone(1.0, 8000, 2), rate=8000)
    from_bytes = decode_audio(data, split_channels=True)
    assert_tones(from_bytes, 2, tolerance_s=0.002)
    # ffmpeg would read "a:b" as a protocol; we hand it an open file instead.
    path = tmp_path / "投诉 录音:1.wav"
    path.write_bytes(data)
    from_path = decode_audio(str(path), split_channels=True)
    np.testing.assert_array_equal(from_path.tracks, from_bytes.tracks)
    assert decode_audio(bytearray(data)).duration == from_bytes.duration


def test_quiet_but_real_audio_is_not_silent(tmp_path: Path) -> None:
    path = tmp_path / "quiet.wav"
    path.write_bytes(af.wav_bytes(af.tone(1.0, 16000, amplitude=0.01)))  # -40 dBFS
    assert_tones(decode_audio(path), 1, tolerance_s=0.002)


def test_silence_allowed_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    path.write_bytes(af.wav_bytes(np.zeros((1, 16000), dtype=np.float32)))
    result = decode_audio(path, reject_silence=False)
    assert result.duration == 1.0 and not result.mono.any()


def test_garbage_float_samples_are_made_safe(tmp_path: Path) -> None:
    # A float WAV holding NaN/inf/1e30 must not poison VAD or Whisper downstream.
    x = af.tone(1.0, 16000)[0]
    x[100:200] = np.nan
    x[300:400] = np.inf
    x[500:600] = 1e30
    path = tmp_path / "float.wav"
    path.write_bytes(af.wav_bytes(payload=x.astype("<f4").tobytes(), tag=3, bits=32))
    result = decode_audio(path)
    assert np.isfinite(result.tracks).all()
    assert float(np.abs(result.tracks).max()) <= 1.0


# --------------------------------------------------------------------------- hostile input


def _write(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    """Write ``data`` (or what the callable builds, lazily) to ``tmp/name``."""
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data() if callable(data) else data)
        return path
    return make


def _made(name: str, build: Callable[[Path], Any], edit: Callable[[bytes], bytes]
          ) -> Callable[[Path], Path]:
    """Encode a real file with ``build``, then damage its bytes with ``edit``."""
    def make(tmp: Path) -> Path:
        scratch = tmp / ("scratch" + Path(name).suffix)
        build(scratch)
        data = edit(scratch.read_bytes())
        scratch.unlink()
        path = tmp / name
        path.write_bytes(data)
        return path
    return make


def _amr(seconds: float) -> Callable[[Path], Any]:
    return lambda p: af.write_amr_nb(p, af.tone(seconds, 8000))


def _directory(tmp: Path) -> Path:
    folder = tmp / "uploads.wav"
    folder.mkdir()
    return folder


RNG = np.random.default_rng(20240611)
TONE_2S = af.tone(2.0, 16000)
SILK_2S = af.silk_bytes(af.tone(2.0, 24000))  # 5 kB, 10 ms to make
AMR_FRAME = 32  # 12.2 kbit/s: 1 header byte + 31 payload bytes per 20 ms

# (id, make(tmp_path) -> source, decode kwargs, code, words the reason must contain)
HOSTILE: list[tuple[str, Callable[[Path], Any], dict[str, Any], str, str]] = [
    ("zero-bytes", _write("empty.wav", b""), {}, "empty", "0 bytes"),
    ("text-as-mp3", _write("complaint.mp3", "市民投诉：楼下噪音很大，请处理。\n".encode() * 20),
     {}, "not_audio", "text file"),
    ("gbk-text-as-amr", _write("note.amr", "路灯坏了一个礼拜了。".encode("gb18030") * 20), {},
     "not_audio", "text file"),
    ("utf16-text", _write("note.wav", "hello 投诉".encode("utf-16")), {}, "not_audio",
     "text file"),
    ("html-as-m4a", _write("voice.m4a", b"<!DOCTYPE html>\n<html><body>403 Forbidden"
                                        b"</body></html>"), {}, "not_audio", "HTML"),
    ("json", _write("voice.ogg", b'{"error": "upload failed", "code": 500}'), {},
     "not_audio", "JSON"),
    ("png-as-wav", _write("photo.wav", b"\x89PNG\r\n\x1a\n" + RNG.bytes(2000)), {},
     "not_audio", "PNG image"),
    ("jpeg-as-amr", _write("photo.amr", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + RNG.bytes(2000)),
     {}, "not_audio", "JPEG image"),
    ("zip", _write("voice.zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + RNG.bytes(500)), {},
     "not_audio", "ZIP"),
    ("pdf-as-mp3", _write("letter.mp3", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"), {},
     "not_audio", "PDF"),
    ("random-bytes-amr", _write("voice.amr", RNG.bytes(8000)), {}, "not_audio",
     "not a recognised audio format"),
    ("zero-filled", _write("voice.wav", bytes(8000)), {}, "not_audio", "zero bytes"),
    ("amr-header-and-half-a-frame",
     _made("half.amr", _amr(1.0), lambda d: d[:6 + AMR_FRAME // 2]), {}, "truncated",
     "cut off"),
    ("amr-cut-in-the-middle",
     _made("cut.amr", _amr(3.0), lambda d: d[:6 + AMR_FRAME * 75 + 9]), {}, "truncated",
     "1.50 s"),
    ("amr-header-only", _write("header.amr", b"#!AMR\n"), {}, "truncated", "no audio frames"),
    ("amr-garbage-frames",
     _made("garbage.amr", _amr(1.0), lambda d: d[:6 + AMR_FRAME * 10] + b"\x6c" * 100), {},
     "corrupt", "invalid frame type"),
    ("wav-zero-seconds", _write("empty-recording.wav", af.wav_bytes(np.zeros((1, 0)))), {},
     "too_short", "no audio samples"),
    ("wav-header-declares-3-hours",
     _write("three-hours.wav", af.wav_bytes(payload=bytes(3200), data_size=3 * 3600 * 32000)),
     {}, "truncated", "3:00:00"),
    ("wav-cut-to-a-third", _write("cut.wav", af.wav_bytes(af.tone(3.0, 16000))[:32044]), {},
     "truncated", "cut off"),
    ("wav-header-cut", _write("header.wav", af.wav_bytes(TONE_2S)[:24]), {}, "truncated",
     "header"),
    ("wav-rate-4-ghz", _write("fast.wav", af.wav_bytes(TONE_2S, rate=4_000_000_000)), {},
     "bad_parameters", "4,000,000,000 Hz"),
    ("wav-rate-10-mhz", _write("fast.wav", af.wav_bytes(TONE_2S, rate=10_000_000)), {},
     "bad_parameters", "sample rate"),
    ("wav-rate-0", _write("still.wav", af.wav_bytes(TONE_2S, rate=0)), {}, "bad_parameters",
     "0 Hz"),
    ("wav-zero-channels", _write("nochan.wav", af.wav_bytes(payload=bytes(32000), channels=0)),
     {}, "bad_parameters", "0 channels"),
    ("wav-nine-channels", _write("many.wav", af.wav_bytes(payload=bytes(9 * 3200), channels=9)),
     {}, "bad_parameters", "9 channels"),
    ("wav-unknown-codec", _write("odd.wav", af.wav_bytes(TONE_2S, tag=0x1234)), {},
     "unsupported_format", "codec"),
    ("mp4-cut-before-moov",
     _made("memo.m4a", lambda p: af.write_m4a(p, af.tone(3.0, 16000), 16000),
           lambda d: d[: d.find(b"moov") - 4]), {}, "truncated", "'moov'"),
    ("mp4-faststart-cut-in-mdat",
     _made("memo.m4a", lambda p: af.write_m4a(p, af.tone(5.0, 16000), 16000, faststart=True),
           lambda d: d[: len(d) // 2]), {}, "truncated", "cut off"),
    ("flac-cut", _made("memo.flac", lambda p: af.write_flac(p, af.tone(3.0, 16000), 16000),
                       lambda d: d[: len(d) // 3]), {}, "truncated", "cut off"),
    ("flac-header-only",
     _made("memo.flac", lambda p: af.write_flac(p, af.tone(1.0, 16000), 16000),
           lambda d: d[:42]), {}, "truncated", "cut off"),
    ("ogg-cut-mid-page",
     _made("memo.ogg", lambda p: af.write_opus(p, af.tone(3.0, 16000), 16000),
           lambda d: d[: len(d) // 2]), {}, "truncated", "cut off"),
    ("silk-cut", _write("voice.amr", SILK_2S[: len(SILK_2S) // 2]), {}, "truncated",
     "cut off"),
    ("silk-garbage", _write("voice.amr", SILK_2S[:10] + RNG.bytes(3000)), {}, "corrupt",
     "damaged"),
    ("silk-header-only", _write("voice.amr", b"\x02#!SILK_V3"), {}, "truncated",
     "no audio frames"),
    ("silk-garbage-payloads",  # frame lengths fine, bitstream not: the decoder refuses
     _write("voice.amr", b"\x02#!SILK_V3" + b"".join(
         struct.pack("<H", 40) + RNG.bytes(40) for _ in range(50))), {}, "corrupt",
     "SILK data is damaged"),
    ("digital-silence", _write("silence.wav", af.wav_bytes(np.zeros((2, 32000)))), {},
     "silent", "every sample is zero"),
    ("alaw-line-silence",  # A-law "zero" decodes to +-8/32768, not 0
     _made("line.wav", lambda p: af.write_wav(p, np.zeros((1, 16000), np.float32), 8000,
                                              "alaw"), lambda d: d), {}, "silent", "dBFS"),
    ("dc-offset-only", _write("dc.wav", af.wav_bytes(np.full((1, 16000), 0.25))), {},
     "silent", "DC offset"),
    ("too-short", _write("click.wav", af.wav_bytes(af.tone(0.05, 16000))), {}, "too_short",
     "0.050 s"),
    ("wav-20s-over-10s-limit", _write("long.wav", af.wav_bytes(af.tone(20.0, 8000), rate=8000)),
     {"max_seconds": 10}, "too_long", "over the 10.00 s limit"),
    ("adts-20s-over-10s-limit",  # no stated length: stopped while decoding
     _made("long.aac", lambda p: af.write_adts(p, af.tone(20.0, 16000), 16000), lambda d: d),
     {"max_seconds": 10}, "too_long", "stopped reading"),
    ("amr-20s-over-10s-limit", _made("long.amr", _amr(20.0), lambda d: d),
     {"max_seconds": 10}, "too_long", "10.00 s limit"),
    ("silk-20s-over-10s-limit", _write("long.amr", lambda: af.silk_bytes(af.tone(20.0, 24000))),
     {"max_seconds": 10}, "too_long", "10.00 s limit"),
    ("file-over-max-bytes", _write("big.wav", af.wav_bytes(TONE_2S)), {"max_bytes": 10_000},
     "too_large", "10,000 bytes limit"),
    ("video-without-audio", lambda tmp: af.write_video_only(tmp / "clip.mp4"), {},
     "no_audio_stream", "no audio track"),
    ("directory", _directory, {}, "not_a_file", "directory"),
    ("missing", lambda tmp: tmp / "gone.wav", {}, "not_found", "does not exist"),
]


@pytest.mark.parametrize(("make", "kwargs", "code", "words"),
                         [pytest.param(*case[1:], id=case[0]) for case in HOSTILE])
def test_hostile_input_gives_a_clear_error(tmp_path: Path, make: Callable[[Path], Any],
                                           kwargs: dict[str, Any], code: str,
                                           words: str) -> None:
    path = make(tmp_path)
    started = time.perf_counter()
    with pytest.raises(AudioError) as caught:
        decode_audio(path, **kwargs)
    err = caught.value
    assert err.code == code, str(err)
    assert err.source == path.name
    assert str(err) == f"{path.name}: {err.reason}"
    assert words in err.reason, err.reason
    assert "Traceback" not in str(err) and "\n" not in str(err)
    assert time.perf_counter() - started < 5.0


def test_enough_hostile_cases() -> None:
    assert len(HOSTILE) >= 15
    assert {case[3] for case in HOSTILE} >= {
        "empty", "not_audio", "truncated", "corrupt", "too_short", "bad_parameters",
        "silent", "too_long", "too_large", "no_audio_stream", "not_a_file", "not_found",
        "unsupported_format"}


def test_uploaded_bytes_errors_name_the_upload() -> None:
    with pytest.raises(AudioError) as caught:
        decode_audio(af.wav_bytes(TONE_2S), name="caller-42.wav", max_bytes=1000)
    assert caught.value.code == "too_large"
    assert str(caught.value).startswith("caller-42.wav: ")
    with pytest.raises(AudioError) as caught:
        decode_audio(b"")
    assert caught.value.code == "empty" and caught.value.source == "<upload>"


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs a POSIX device file")
def test_device_file_is_not_a_file() -> None:
    with pytest.raises(AudioError) as caught:
        decode_audio("/dev/null")
    assert caught.value.code == "not_a_file"


def test_a_crashing_silk_decoder_cannot_take_the_process_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Fuzzing found damaged SILK payloads that corrupt pysilk's heap and abort the
    # interpreter; the decoder runs in a child process, so that becomes an AudioError.
    import pipeline.audio as audio

    monkeypatch.setattr(audio, "_SILK_CHILD", "import os; os.abort()")
    with pytest.raises(AudioError) as caught:
        decode_audio(af.silk_bytes(af.tone(1.0, 24000)), name="hostile.amr")
    assert caught.value.code == "corrupt"
    assert "crashed" in caught.value.reason


def test_three_hour_header_fails_fast_without_allocating() -> None:
    data = af.wav_bytes(payload=bytes(3200), data_size=3 * 3600 * 32000)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(AudioError) as caught:
            decode_audio(data, name="three-hours.wav", max_seconds=3600)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "truncated"
    assert time.perf_counter() - started < 0.5
    assert peak < 5_000_000  # 3 h of 16 kHz float32 would be 690 MB


def test_too_long_declared_up_front_costs_nothing(tmp_path: Path) -> None:
    # A complete 20 s file is refused from its header alone, before decoding.
    data = af.wav_bytes(af.tone(20.0, 48000, 2), rate=48000)
    tracemalloc.start()
    try:
        with pytest.raises(AudioError) as caught:
            decode_audio(data, name="long.wav", max_seconds=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "too_long"
    assert peak < 1_000_000


def test_audio_error_pickles() -> None:
    err = AudioError("truncated", "the file was cut off", "a.amr")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, copy.reason, copy.source, str(copy)) == (
        "truncated", "the file was cut off", "a.amr", "a.amr: the file was cut off")


# --------------------------------------------------------------------------- fuzz


@pytest.mark.parametrize("writer", [
    lambda p: af.write_mp3(p, af.tone(1.0, 16000), 16000),
    lambda p: af.write_m4a(p, af.tone(1.0, 16000), 16000, faststart=True),
    lambda p: af.write_amr_nb(p, af.tone(1.0, 8000)),
    lambda p: af.write_opus(p, af.tone(1.0, 16000), 16000),
    lambda p: af.write_flac(p, af.tone(1.0, 16000), 16000),
    lambda p: af.write_adts(p, af.tone(1.0, 16000), 16000),
    lambda p: af.write_wav(p, af.tone(1.0, 8000), 8000, "mulaw"),
    lambda p: p.write_bytes(af.silk_bytes(af.tone(1.0, 24000))),
], ids=["mp3", "m4a", "amr", "opus", "flac", "adts", "mulaw", "silk"])
def test_damaged_files_never_raise_anything_but_audio_error(tmp_path: Path,
                                                           writer: Callable[[Path], Any]
                                                           ) -> None:
    path = tmp_path / "good"
    writer(path)
    good = path.read_bytes()
    rng = np.random.default_rng(7)
    for trial in range(30):
        data = bytearray(good)
        if trial % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        elif trial % 3 == 1:
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        else:
            at = int(rng.integers(0, len(data)))
            data = data[:at] + rng.bytes(int(rng.integers(1, 500))) + data[at:]
        try:
            result = decode_audio(bytes(data), name="fuzz", split_channels=True)
        except AudioError as err:
            assert err.source == "fuzz" and err.reason
        else:
            assert result.tracks.dtype == np.float32
            assert np.isfinite(result.tracks).all()


# --------------------------------------------------------------------------- speed


def test_ten_minutes_decode_quickly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    call = af.tone(600.0, 8000, amplitude=0.2)
    call += 0.02 * rng.standard_normal(call.shape).astype(np.float32)
    path = tmp_path / "hotline.wav"
    af.write_wav(path, call, 8000, "mulaw")
    started = time.perf_counter()
    result = decode_audio(path, max_seconds=3600)
    elapsed = time.perf_counter() - started
    assert abs(result.duration - 600.0) < 0.01
    assert elapsed < 5.0  # ~0.3 s on an idle core; generous for a shared CI box


# --------------------------------------------------------------------------- real audio


def _shared_wavs() -> list[Any]:
    files = sorted(SHARED_AUDIO.glob("*.wav")) if SHARED_AUDIO.is_dir() else []
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"{SHARED_AUDIO} is not here (shared/ sits beside the repository)"))]
    return [pytest.param(f, id=f.name) for f in files]


@pytest.mark.parametrize("path", _shared_wavs())
def test_real_speech_in_shared_audio(path: Path) -> None:
    result = decode_audio(path, split_channels=True)
    assert result.format == "wav" and result.sample_rate == SAMPLE_RATE
    assert result.tracks.dtype == np.float32 and result.duration > 0.5
    # The length must match what the header says (frames / rate), to the sample.
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        declared = float(stream.duration * stream.time_base)
    assert abs(result.duration - declared) < 0.002


def _sample_entries() -> list[Any]:
    if not SAMPLES_MANIFEST.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"{SAMPLES_MANIFEST} does not exist yet"))]
    entries = [json.loads(line) for line in SAMPLES_MANIFEST.read_text("utf-8").splitlines()
               if line.strip()]
    return [pytest.param(e, id=str(e.get("audio"))) for e in entries]


@pytest.mark.parametrize("entry", _sample_entries())
def test_samples_decode(entry: dict[str, Any]) -> None:
    path = SAMPLES_MANIFEST.parent / entry["audio"]
    result = decode_audio(path, split_channels=True)
    assert result.sample_rate == SAMPLE_RATE and result.duration > 1.0
    if "sample_rate" in entry:
        assert result.source_sample_rate == entry["sample_rate"]
    if "channels" in entry:
        assert result.source_channels == entry["channels"] == result.tracks.shape[0]
