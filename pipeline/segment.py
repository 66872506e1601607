"""Speech segmentation: webrtcvad frames -> speech regions -> windows of at most 30 s.

Whisper reads 30 s at a time, whatever the window holds, so the cost of a recording is
the number of windows. Each window is packed with up to 30 s of speech regions, the
pauses between them left out (as faster-whisper's own VAD path does): fewer passes, and
fewer silent stretches to hallucinate on. Regions are padded so word edges survive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import webrtcvad

from asr.transcriber import JOIN_SILENCE_S

SAMPLE_RATE = 16000
FRAME_MS = 30
FRAME = SAMPLE_RATE * FRAME_MS // 1000


@dataclass(frozen=True)
class VadOptions:
    aggressiveness: int = 2  # webrtcvad mode 0..3
    start_ratio: float = 0.6  # share of voiced frames in the ring that opens a region
    end_ratio: float = 0.9  # share of unvoiced frames in the ring that closes it
    ring_frames: int = 10  # 300 ms of context for the decision
    pad_s: float = 0.25  # kept around each region so word edges survive
    min_speech_s: float = 0.3  # shorter blips (clicks, coughs) are dropped
    max_window_s: float = 30.0
    # regions further apart than this start a new window, so a segment's time span
    # stays meaningful (and, in a call, the other party's turn is not packed over)
    max_gap_s: float = 2.0
    join_silence_s: float = JOIN_SILENCE_S  # what the transcriber puts between pieces


@dataclass(frozen=True)
class Region:
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Window:
    """Speech regions read by Whisper in one pass, pauses between them left out."""

    pieces: tuple[Region, ...]

    @property
    def start(self) -> float:
        return self.pieces[0].start

    @property
    def end(self) -> float:
        return self.pieces[-1].end

    @property
    def speech_s(self) -> float:
        return sum(p.duration for p in self.pieces)

    def spans(self) -> list[tuple[float, float]]:
        return [(p.start, p.end) for p in self.pieces]


def _to_pcm16(audio: np.ndarray) -> bytes:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    # Quiet phone recordings still need to cross webrtcvad's fixed energy floor.
    gain = 0.5 / peak if 0 < peak < 0.1 else 1.0
    return (np.clip(audio * gain, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def voiced_frames(audio: np.ndarray, aggressiveness: int = 2) -> np.ndarray:
    """One bool per 30 ms frame."""
    vad = webrtcvad.Vad(aggressiveness)
    pcm = _to_pcm16(audio)
    step = FRAME * 2
    n = len(pcm) // step
    return np.fromiter((vad.is_speech(pcm[i * step:(i + 1) * step], SAMPLE_RATE)
                        for i in range(n)), dtype=bool, count=n)


def speech_regions(audio: np.ndarray, options: VadOptions = VadOptions()) -> list[Region]:
    """Hysteresis over a ring of frames, as in webrtcvad's own example, then padding."""
    flags = voiced_frames(audio, options.aggressiveness)
    frame_s = FRAME_MS / 1000
    regions: list[Region] = []
    ring = options.ring_frames
    start: int | None = None
    for i in range(len(flags)):
        window = flags[max(0, i - ring + 1):i + 1]
        if start is None:
            if window.sum() >= options.start_ratio * ring:
                start = max(0, i - ring + 1)
        elif (~window).sum() >= options.end_ratio * ring:
            regions.append(Region(start * frame_s, (i + 1) * frame_s))
            start = None
    if start is not None:
        regions.append(Region(start * frame_s, len(flags) * frame_s))
    total = len(audio) / SAMPLE_RATE
    padded = [Region(max(0.0, r.start - options.pad_s), min(total, r.end + options.pad_s))
              for r in regions if r.duration >= options.min_speech_s]
    merged: list[Region] = []
    for r in padded:  # padding can make neighbours overlap
        if merged and r.start <= merged[-1].end:
            merged[-1] = Region(merged[-1].start, max(merged[-1].end, r.end))
        else:
            merged.append(r)
    return merged


def _split_long(audio: np.ndarray, region: Region, max_s: float) -> list[Region]:
    """Cut a region longer than a window at its quietest 100 ms near the limit."""
    out = []
    start, end = region.start, region.end
    hop = int(0.1 * SAMPLE_RATE)
    while end - start > max_s:
        lo, hi = start + max_s * 0.6, start + max_s - 0.05
        a, b = int(lo * SAMPLE_RATE), int(hi * SAMPLE_RATE)
        chunk = audio[a:b]
        n = max(1, len(chunk) // hop)
        energy = [float(np.mean(chunk[k * hop:(k + 1) * hop] ** 2)) for k in range(n)]
        cut = lo + (int(np.argmin(energy)) + 0.5) * hop / SAMPLE_RATE
        out.append(Region(start, cut))
        start = cut
    out.append(Region(start, end))
    return out


def windows_from_regions(audio: np.ndarray, regions: list[Region],
                         options: VadOptions = VadOptions()) -> list[Window]:
    """Greedy packing of regions into windows of at most ``max_window_s`` of speech."""
    pieces = [p for r in regions for p in _split_long(audio, r, options.max_window_s)]
    windows: list[Window] = []
    for p in pieces:
        last = windows[-1] if windows else None
        joined = last.speech_s + options.join_silence_s * len(last.pieces) if last else 0.0
        if last and p.start - last.end <= options.max_gap_s \
                and joined + p.duration <= options.max_window_s:
            windows[-1] = Window((*last.pieces, p))
        else:
            windows.append(Window((p,)))
    return windows


def speech_windows(audio: np.ndarray, options: VadOptions = VadOptions()) -> list[Window]:
    return windows_from_regions(audio, speech_regions(audio, options), options)
