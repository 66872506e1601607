"""Noise estimate and conditional denoising.

Whisper is trained on noisy audio and a denoiser can remove speech along with noise,
so denoising is applied only where the measured signal-to-noise ratio is poor; the
threshold (``MINYIN_DENOISE_BELOW_SNR_DB``) is set from measurements (README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
_FRAME = 480  # 30 ms


@dataclass(frozen=True)
class NoiseEstimate:
    snr_db: float  # speech level over noise floor
    noise_dbfs: float  # noise floor, dB relative to full scale
    speech_dbfs: float


def estimate_noise(audio: np.ndarray) -> NoiseEstimate:
    """Percentiles of 30 ms frame energy: the quiet tenth is noise, the loud tenth speech.

    A voice note always holds some pauses between words, so the lower percentile finds
    the noise floor without needing a VAD (which itself is fooled by noise).
    """
    n = len(audio) // _FRAME
    if n < 4:
        return NoiseEstimate(snr_db=99.0, noise_dbfs=-120.0, speech_dbfs=-120.0)
    frames = audio[: n * _FRAME].reshape(n, _FRAME).astype(np.float64)
    energy = np.mean(frames**2, axis=1) + 1e-12
    noise = float(np.percentile(energy, 10))
    speech = float(np.percentile(energy, 95))
    return NoiseEstimate(
        snr_db=round(10 * np.log10(speech / noise), 2),
        noise_dbfs=round(10 * np.log10(noise), 2),
        speech_dbfs=round(10 * np.log10(speech), 2),
    )


def denoise(audio: np.ndarray, *, strength: float = 0.5) -> np.ndarray:
    """Stationary spectral gating (noisereduce): traffic rumble, hum, line hiss."""
    import noisereduce

    out = noisereduce.reduce_noise(y=audio, sr=SAMPLE_RATE, stationary=True,
                                   prop_decrease=strength, n_jobs=1)
    return out.astype(np.float32, copy=False)


def maybe_denoise(audio: np.ndarray, below_snr_db: float,
                  strength: float = 0.5) -> tuple[np.ndarray, NoiseEstimate, bool]:
    estimate = estimate_noise(audio)
    if estimate.snr_db < below_snr_db and estimate.noise_dbfs > -70.0:
        return denoise(audio, strength=strength), estimate, True
    return audio, estimate, False
