"""Synthetic acoustic conditions for samples, benchmarks and tests.

Citizens record complaints at the roadside, in crowded markets and over phone
lines, and the pipeline has to cope with all of it.  Real recordings of that
kind cannot be shipped (privacy, licensing), so this module builds the
*conditions* from scratch: street noise, crowd babble, the 300–3400 Hz phone
band, G.711 companding, and mixing at a controlled SNR.  Everything is pure
numpy/scipy and driven by an explicit ``numpy.random.Generator`` so that a
benchmark run is reproducible bit for bit and needs no data download.

All signals are mono float arrays in roughly [-1, 1] at the sample rate the
caller passes; nothing here assumes 16 kHz.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy import signal

__all__ = [
    "babble_noise",
    "layout_recording",
    "mix_at_snr",
    "mulaw_roundtrip",
    "phone_band",
    "resample",
    "rms",
    "street_noise",
]

_EPS = 1e-12


def rms(x: np.ndarray) -> float:
    """Root-mean-square level; the common currency for every level decision here."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def _normalise_rms(x: np.ndarray, target: float) -> np.ndarray:
    """Scale to a target RMS so that callers reason about levels, not raw amplitudes."""
    level = rms(x)
    if level < _EPS:
        return np.asarray(x, dtype=np.float32)
    return (x * (target / level)).astype(np.float32)


def _cap(freq_hz: float, sr: int) -> float:
    """Keep a filter edge below Nyquist so the same recipe works at 8 kHz and 48 kHz."""
    return min(freq_hz, 0.45 * sr)


def _slow_modulation(
    n_samples: int, sr: int, rng: np.random.Generator, rates_hz: tuple[float, float], depth: float
) -> np.ndarray:
    """Gain curve made of a few slow random sinusoids.

    Real background noise is never stationary; a constant level makes a
    denoiser's job unrealistically easy, so every noise layer breathes.
    """
    t = np.arange(n_samples) / sr
    curve = np.zeros(n_samples)
    for _ in range(3):
        f = rng.uniform(*rates_hz)
        curve += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    curve /= 3.0
    return (1.0 + depth * curve).clip(0.05, None)


def _swell_envelope(n: int) -> np.ndarray:
    """Rise-and-fall of a car passing by: slow approach, quicker departure."""
    t = np.linspace(0.0, 1.0, n)
    peak = 0.6
    env = np.where(t < peak, (t / peak) ** 2, ((1 - t) / (1 - peak)) ** 1.5)
    return env


def street_noise(n_samples: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Roadside ambience: traffic rumble, passing cars, horns and wind.

    Layers, each chosen because it stresses a different part of the pipeline:

    * rumble: brown noise low-passed at ~250 Hz with slow amplitude modulation;
      carries most of the energy, so it dominates an SNR figure while leaving
      speech formants partly intact, as real traffic does;
    * passing cars: band-limited noise swells of 2–4 s (tyre roar up to ~2 kHz)
      that overlap speech and defeat stationary-noise estimators;
    * horns: short harmonic tones (fundamental 350–500 Hz) that voice-activity
      detectors tend to mistake for speech;
    * wind hiss: faint high-passed noise so the top of the band is not empty.

    Returns a float32 array of ``n_samples`` normalised to RMS 0.1; callers
    set the real level with :func:`mix_at_snr`.
    """
    if n_samples <= 0:
        return np.zeros(0, dtype=np.float32)
    out = np.zeros(n_samples)

    # Rumble: leaky-integrated white noise (brown, without DC drift), low-passed.
    white = rng.standard_normal(n_samples)
    brown = signal.lfilter([1.0], [1.0, -0.995], white)
    sos = signal.butter(4, _cap(250.0, sr), btype="lowpass", fs=sr, output="sos")
    rumble = signal.sosfilt(sos, brown)
    rumble = rumble / (rms(rumble) + _EPS)
    rumble *= _slow_modulation(n_samples, sr, rng, (0.03, 0.25), 0.45)
    out += rumble

    # Passing cars: on average one every ~5 s.
    n_cars = rng.poisson(max(1.0, n_samples / sr / 5.0))
    car_sos = signal.butter(2, [60.0, _cap(2000.0, sr)], btype="bandpass", fs=sr, output="sos")
    for _ in range(n_cars):
        length = int(rng.uniform(2.0, 4.0) * sr)
        start = int(rng.integers(-length // 2, n_samples))
        burst = signal.sosfilt(car_sos, rng.standard_normal(length))
        burst = burst / (rms(burst) + _EPS) * _swell_envelope(length) * rng.uniform(0.8, 2.0)
        lo, hi = max(start, 0), min(start + length, n_samples)
        if hi > lo:
            out[lo:hi] += burst[lo - start : hi - start]

    # Horns: rare, loud, harmonic; sometimes a double toot.
    n_horns = rng.poisson(n_samples / sr / 20.0)
    for _ in range(n_horns):
        f0 = rng.uniform(350.0, 500.0)
        toots = int(rng.integers(1, 3))
        start = int(rng.integers(0, n_samples))
        for k in range(toots):
            length = int(rng.uniform(0.2, 0.7) * sr)
            t = np.arange(length) / sr
            tone = np.zeros(length)
            for h in range(1, 8):
                if f0 * h < 0.45 * sr:
                    tone += np.sin(2 * np.pi * f0 * h * t) / h
            ramp = max(1, int(0.02 * sr))
            env = np.ones(length)
            env[:ramp] = np.linspace(0, 1, ramp)
            env[-ramp:] = np.linspace(1, 0, ramp)
            tone *= env * rng.uniform(0.8, 1.6)
            s = start + k * int(length + 0.12 * sr)
            lo, hi = min(s, n_samples), min(s + length, n_samples)
            out[lo:hi] += tone[: hi - lo]

    # Wind hiss: faint, gusty, high band only.
    hiss_sos = signal.butter(2, _cap(2500.0, sr), btype="highpass", fs=sr, output="sos")
    hiss = signal.sosfilt(hiss_sos, rng.standard_normal(n_samples))
    hiss = hiss / (rms(hiss) + _EPS) * 0.12
    hiss *= _slow_modulation(n_samples, sr, rng, (0.1, 0.6), 0.7)
    out += hiss

    return _normalise_rms(out, 0.1)


def babble_noise(
    speech_clips: list[np.ndarray],
    n_samples: int,
    sr: int,
    rng: np.random.Generator,
    talkers: int = 6,
) -> np.ndarray:
    """Crowd babble: several talkers speaking at once, none intelligible.

    Babble is the hardest noise for ASR because it *is* speech: the model may
    transcribe a neighbour instead of the complainant.  Each talker is a
    stream of randomly chosen clips from ``speech_clips`` (all at ``sr``),
    started at a random offset and slightly sped up or slowed down
    (resampling, ±10 %) so that one TTS voice does not line up with itself.
    Every clip is level-normalised first, so no single talker stands out, and
    the sum is normalised to RMS 0.1.
    """
    if n_samples <= 0:
        return np.zeros(0, dtype=np.float32)
    clips = [np.asarray(c, dtype=np.float64) for c in speech_clips if len(c) > 0]
    if not clips:
        raise ValueError("babble_noise needs at least one non-empty speech clip")
    out = np.zeros(n_samples)
    for _ in range(max(1, talkers)):
        # A rational rate change: up/down factors near 20/20.
        up = int(rng.integers(18, 23))
        track: list[np.ndarray] = []
        total = 0
        # Random initial offset so talkers do not start together.
        lead = int(rng.uniform(0.0, 1.5) * sr)
        track.append(np.zeros(lead))
        total += lead
        while total < n_samples:
            clip = clips[int(rng.integers(0, len(clips)))]
            clip = signal.resample_poly(clip, up, 20)
            clip = clip / (rms(clip) + _EPS)
            gap = np.zeros(int(rng.uniform(0.05, 0.4) * sr))
            track.extend([clip, gap])
            total += len(clip) + len(gap)
        talker = np.concatenate(track)
        # Start somewhere inside the stream, not always at a clip boundary.
        offset = int(rng.integers(0, max(1, len(talker) - n_samples + 1)))
        talker = talker[offset : offset + n_samples]
        out += talker * 10 ** (rng.uniform(-3.0, 3.0) / 20)
    return _normalise_rms(out, 0.1)


def phone_band(x: np.ndarray, sr: int) -> np.ndarray:
    """Band-limit to 300–3400 Hz, the pass band of a narrowband phone line.

    Hotline recordings lose the low fundamentals and all fricative energy
    above 3.4 kHz; a model tuned on wideband audio must be tested on this.
    A causal 4th-order Butterworth is used because a real line is causal too.
    """
    x = np.asarray(x, dtype=np.float64)
    hi = _cap(3400.0, sr)
    sos = signal.butter(4, [300.0, hi], btype="bandpass", fs=sr, output="sos")
    return signal.sosfilt(sos, x).astype(np.float32)


def mulaw_roundtrip(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """Encode to 8-bit mu-law and decode again (G.711-style companding).

    Hotline recorders store calls as G.711; the 8-bit logarithmic
    quantisation adds a signal-correlated noise floor that is easy to forget
    when testing with clean PCM.  This uses the continuous mu-law curve with
    256 levels, close to (not bit-exact with) the segmented G.711 table,
    which is all a robustness test needs.  Input is clipped to [-1, 1].
    """
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    compressed = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    levels = 256
    q = np.round((compressed + 1.0) / 2.0 * (levels - 1))
    decoded_c = q / (levels - 1) * 2.0 - 1.0
    y = np.sign(decoded_c) * ((1.0 + mu) ** np.abs(decoded_c) - 1.0) / mu
    return y.astype(np.float32)


def _active_power(x: np.ndarray, frame: int = 400) -> float:
    """Mean power over frames that carry speech (within 30 dB of the loudest).

    Pauses would otherwise pull the speech level down and make a stated SNR
    sound cleaner than it is; measuring active speech is the usual
    convention (cf. ITU-T P.56, much simplified).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x) // frame
    if n == 0:
        return float(np.mean(x * x)) if x.size else 0.0
    powers = np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = powers[powers > powers.max() * 1e-3]
    return float(active.mean()) if active.size else 0.0


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` to ``speech`` so that active-speech SNR equals ``snr_db``.

    The noise is tiled or cropped to the speech length.  If the mixture would
    clip, the whole mixture is scaled down (the SNR is preserved), because a
    clipped benchmark file measures the clipping, not the noise.
    """
    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.size == 0:
        raise ValueError("noise is empty")
    if len(noise) < len(speech):
        noise = np.tile(noise, int(np.ceil(len(speech) / len(noise))))
    noise = noise[: len(speech)]
    p_speech = _active_power(speech)
    p_noise = float(np.mean(noise * noise))
    if p_noise < _EPS or p_speech < _EPS:
        return speech.astype(np.float32)
    gain = np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    mix = speech + gain * noise
    peak = float(np.max(np.abs(mix)))
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix.astype(np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling between integer rates (e.g. 24 kHz TTS to 8 kHz AMR).

    ``resample_poly`` applies a proper anti-aliasing filter, unlike naive
    decimation, and is exact for the small integer ratios used here.
    """
    x = np.asarray(x, dtype=np.float64)
    if sr_in == sr_out:
        return x.astype(np.float32)
    g = gcd(int(sr_in), int(sr_out))
    return signal.resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def layout_recording(
    clips: list[np.ndarray],
    sr: int,
    pause_s: tuple[float, float] = (0.25, 0.8),
    rng: np.random.Generator | None = None,
    noise: np.ndarray | None = None,
    snr_db: float | None = None,
) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """Lay clips end to end with random pauses, optionally under noise.

    Real voice notes have hesitations between sentences and some dead air at
    both ends; segmenters and VAD need that.  A pause drawn from ``pause_s``
    is put before the first clip, between clips and after the last.

    Returns the audio and ``(start_s, end_s, clip_index)`` for each clip, the
    ground-truth timeline that segmentation tests compare against.  If
    ``noise`` is given it is mixed over the whole recording (pauses included)
    at ``snr_db`` measured on the speech.
    """
    if rng is None:
        rng = np.random.default_rng(0)
    lo, hi = pause_s
    if lo < 0 or hi < lo:
        raise ValueError(f"bad pause range {pause_s!r}")
    parts: list[np.ndarray] = []
    segments: list[tuple[float, float, int]] = []
    cursor = 0
    for i, clip in enumerate(clips):
        gap = int(rng.uniform(lo, hi) * sr)
        parts.append(np.zeros(gap, dtype=np.float32))
        cursor += gap
        clip = np.asarray(clip, dtype=np.float32)
        parts.append(clip)
        segments.append((cursor / sr, (cursor + len(clip)) / sr, i))
        cursor += len(clip)
    tail = int(rng.uniform(lo, hi) * sr)
    parts.append(np.zeros(tail, dtype=np.float32))
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if noise is not None:
        if snr_db is None:
            raise ValueError("snr_db is required when noise is given")
        audio = mix_at_snr(audio, noise, snr_db)
    return audio.astype(np.float32), segments
