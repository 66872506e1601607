"""Writes small audio test files in every format a phone or hotline sends.

Everything is generated (tones, so frequency survives every codec and the result is
not "silent") with PyAV's bundled encoders, pysilk, or by hand for headers that must
be exactly wrong.  No system ffmpeg, no downloaded fixtures.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# One distinct tone per channel, all inside the AMR-NB/phone pass band (300-3400 Hz).
TONES = (440.0, 1000.0, 1700.0, 2500.0)


def tone(seconds: float, rate: int, channels: int = 1, amplitude: float = 0.4) -> np.ndarray:
    """(channels, n) float32 sine tones, channel ``i`` at ``TONES[i]`` Hz."""
    t = np.arange(round(seconds * rate)) / rate
    rows = [amplitude * np.sin(2 * np.pi * TONES[i] * t) for i in range(channels)]
    return np.asarray(rows, dtype=np.float32)


# --------------------------------------------------------------------------- WAV by hand


def wav_bytes(
    samples: np.ndarray | None = None,
    *,
    rate: int = 16000,
    channels: int | None = None,
    bits: int = 16,
    tag: int = 1,
    data_size: int | None = None,
    payload: bytes | None = None,
) -> bytes:
    """A RIFF/WAVE file; every header field can be set to a hostile value.

    ``samples`` (channels, n) in [-1, 1] is written as 16-bit PCM unless ``payload``
    gives the raw data bytes; ``data_size`` overrides the data chunk's size field.
    """
    if payload is None:
        assert samples is not None
        pcm = np.clip(np.round(samples.T * 32767), -32768, 32767).astype("<i2")
        payload = pcm.tobytes()
        channels = samples.shape[0] if channels is None else channels
    channels = 1 if channels is None else channels
    align = channels * ((bits + 7) // 8)
    fmt = struct.pack("<HHIIHH", tag, channels, rate & 0xFFFFFFFF,
                      (rate * align) & 0xFFFFFFFF, align & 0xFFFF, bits)
    size = len(payload) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", size & 0xFFFFFFFF) + payload
    return b"RIFF" + struct.pack("<I", len(body) & 0xFFFFFFFF) + body


# --------------------------------------------------------------------------- PyAV


_PLANAR = {"fltp", "s16p", "s32p", "dblp", "u8p"}


def encode(
    path: Path,
    samples: np.ndarray,
    rate: int,
    *,
    container: str,
    codec: str,
    bit_rate: int | None = None,
    out_rate: int | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode ``samples`` (channels, n) float32 at ``rate`` with PyAV into ``path``."""
    channels = samples.shape[0]
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    with av.open(str(path), "w", format=container, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=out_rate or rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        if options:
            stream.codec_context.options = options
        ctx = stream.codec_context
        sample_fmt = ctx.format.name if ctx.format is not None else "fltp"
        resampler = av.AudioResampler(format=sample_fmt, layout=layout, rate=out_rate or rate)
        frame_size = 1024
        for start in range(0, samples.shape[1], frame_size):
            block = np.ascontiguousarray(samples[:, start:start + frame_size])
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for rf in resampler.resample(frame):
                out.mux(stream.encode(rf))
        for rf in resampler.resample(None):
            out.mux(stream.encode(rf))
        out.mux(stream.encode(None))
    return path


_WAV_CODECS = {
    "u8": "pcm_u8", "s16": "pcm_s16le", "s24": "pcm_s24le", "s32": "pcm_s32le",
    "f32": "pcm_f32le", "mulaw": "pcm_mulaw", "alaw": "pcm_alaw",
}


def write_wav(path: Path, samples: np.ndarray, rate: int, sample_format: str = "s16") -> Path:
    return encode(path, samples, rate, container="wav", codec=_WAV_CODECS[sample_format])


def write_mp3(path: Path, samples: np.ndarray, rate: int) -> Path:
    return encode(path, samples, rate, container="mp3", codec="libmp3lame", bit_rate=64000)


def write_m4a(path: Path, samples: np.ndarray, rate: int, container: str = "ipod", *,
              faststart: bool = False) -> Path:
    """AAC in MP4.  By default the index ('moov') comes last, as phones write it while
    recording; ``faststart`` puts it first, as servers re-encode for streaming."""
    return encode(path, samples, rate, container=container, codec="aac", bit_rate=64000,
                  container_options={"movflags": "faststart"} if faststart else None)


def write_adts(path: Path, samples: np.ndarray, rate: int) -> Path:
    return encode(path, samples, rate, container="adts", codec="aac", bit_rate=64000)


def write_amr_nb(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    return encode(path, samples[:1], rate, container="amr", codec="libopencore_amrnb",
                  bit_rate=12200, out_rate=8000)


def write_opus(path: Path, samples: np.ndarray, rate: int, container: str = "ogg") -> Path:
    return encode(path, samples, rate, container=container, codec="libopus", bit_rate=48000,
                  out_rate=48000)


def write_vorbis(path: Path, samples: np.ndarray, rate: int) -> Path:
    # ffmpeg's own Vorbis encoder is flagged experimental and only does stereo.
    stereo = samples if samples.shape[0] == 2 else np.repeat(samples[:1], 2, axis=0)
    return encode(path, stereo, rate, container="ogg", codec="vorbis",
                  options={"strict": "experimental"})


def write_flac(path: Path, samples: np.ndarray, rate: int) -> Path:
    return encode(path, samples, rate, container="flac", codec="flac")


def write_video_only(path: Path, seconds: float = 0.5) -> Path:
    """A tiny MP4 with one video track and no audio."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(round(seconds * 10)):
            img = np.full((32, 32, 3), i * 20 % 255, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return path


# --------------------------------------------------------------------------- SILK, AMR-WB


def silk_bytes(samples: np.ndarray, rate: int = 24000, *, tencent: bool = True) -> bytes:
    """A SILK v3 voice note as WeChat writes it (``tencent``: with the 0x02 prefix)."""
    import pysilk

    pcm = np.clip(np.round(samples[0] * 32767), -32768, 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    pysilk.encode(io.BytesIO(pcm), out, rate, 24000, tencent=tencent)
    return out.getvalue()


_AMR_WB_MODE8_BYTES = 60  # 23.85 kbit/s payload per 20 ms frame


def amr_wb_bytes(seconds: float, seed: int = 0) -> bytes:
    """A hand-made AMR-WB file (no AMR-WB encoder ships with PyAV).

    Every 20 ms frame is mode 8 (23.85 kbit/s) with a random payload: any bit pattern is
    a valid AMR-WB frame, so the decoder yields a noisy but real 16 kHz signal.  Good
    for the container, codec and duration path; not for checking a tone.
    """
    rng = np.random.default_rng(seed)
    frames = round(seconds / 0.02)
    header = bytes([(8 << 3) | 0x04])  # frame type 8, quality bit set
    body = b"".join(header + rng.bytes(_AMR_WB_MODE8_BYTES) for _ in range(frames))
    return b"#!AMR-WB\n" + body
