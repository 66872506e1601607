import numpy as np

from pipeline.denoise import estimate_noise, maybe_denoise
from pipeline.segment import Region, VadOptions, Window, speech_windows, windows_from_regions

SR = 16000


def voice_like(seconds: float, rng: np.random.Generator, f0: float = 160.0) -> np.ndarray:
    """Harmonic buzz with syllable-rate amplitude modulation: webrtcvad calls it speech."""
    t = np.arange(int(seconds * SR)) / SR
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 15))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * x * envelope + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def test_pauses_are_skipped(rng):
    silence = np.zeros(3 * SR, dtype=np.float32)
    audio = np.concatenate([silence, voice_like(2.0, rng), silence, silence,
                            voice_like(3.0, rng), silence])
    windows = speech_windows(audio, VadOptions(max_gap_s=2.0))
    assert len(windows) == 2
    # padded by 0.25 s, plus the 300 ms hysteresis ring on the closing side
    assert 2.5 < windows[0].start < 3.1 and 4.9 < windows[0].end < 5.7
    assert sum(w.speech_s for w in windows) < 7.0  # of 17 s


def test_long_speech_split_into_windows_of_at_most_30_s(rng):
    audio = voice_like(75.0, rng)
    windows = speech_windows(audio)
    assert all(w.speech_s <= 30.0 + 1e-6 for w in windows)
    assert windows[0].start < 0.3 and windows[-1].end > 74.5
    assert len(windows) == 3


def test_regions_packed_into_windows_without_their_pauses():
    audio = np.zeros(90 * SR, dtype=np.float32)
    regions = [Region(0, 5), Region(6, 10), Region(20, 25), Region(26, 29), Region(30, 52),
               Region(70, 75)]
    windows = windows_from_regions(audio, regions, VadOptions(max_gap_s=10.0,
                                                               join_silence_s=0.3))
    assert windows == [
        Window((Region(0, 5), Region(6, 10), Region(20, 25), Region(26, 29))),  # 17 s speech
        Window((Region(30, 52),)),  # 22 s more would pass 30 s
        Window((Region(70, 75),)),  # 18 s after the last: a new window
    ]
    assert windows[0].speech_s == 17 and (windows[0].start, windows[0].end) == (0, 29)
    # speech plus the silences put between pieces never passes 30 s
    tight = windows_from_regions(audio, [Region(0, 10), Region(11, 21), Region(22, 31.9)],
                                 VadOptions(join_silence_s=0.3))
    assert [len(w.pieces) for w in tight] == [2, 1]


def test_silence_has_no_windows():
    assert speech_windows(np.zeros(10 * SR, dtype=np.float32)) == []


def test_denoise_only_where_noise_is_measured(rng):
    clean = voice_like(4.0, rng)
    clean = np.concatenate([np.zeros(SR // 2, np.float32), clean, np.zeros(SR // 2, np.float32)])
    noisy = clean + 0.05 * rng.standard_normal(len(clean)).astype(np.float32)
    assert estimate_noise(clean).snr_db > 40
    assert estimate_noise(noisy).snr_db < 15
    out, _, applied = maybe_denoise(clean, below_snr_db=15)
    assert not applied and out is clean
    out, _, applied = maybe_denoise(noisy, below_snr_db=15, strength=0.9)
    assert applied
    # noise in the pauses is strongly reduced
    assert np.std(out[: SR // 3]) < 0.5 * np.std(noisy[: SR // 3])
