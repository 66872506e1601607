"""minyin's pipeline against plain faster-whisper, in one process, on the same audio.

    .venv/bin/python bench/compare.py [--sets shared,samples,long] [--threads 2]

Plain faster-whisper is what a user would write first: ``WhisperModel(path,
cpu_threads=N).transcribe(file, beam_size=5)`` with every other option at its default
(language detection, float32 on CPU, no VAD), scored on its raw output (traditional
characters count as errors). minyin runs its whole pipeline: decode, conditional
denoise, VAD windows, batched int8 Whisper, guards, normalisation, ticket.

Sets: (a) ``../shared/audio`` real Mandarin clips; (b) ``samples/``; (c) a 10-minute
recording assembled from both with pauses, street noise and a phone band, written to
``bench/out/``. Prints a table and writes ``bench/out/compare.json``. Memory: peak RSS
of this process sampled during each system's run (both models stay loaded, so the
figures include the other model's resident weights; deltas are shown too).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.normalize import scoring_form, to_simplified  # noqa: E402
from bench.audiogen import layout_recording, mix_at_snr, phone_band, street_noise  # noqa: E402
from pipeline.audio import decode_audio  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.evaluate import char_errors, load_manifest  # noqa: E402
from pipeline.process import VoicePipeline, ticket_from_outcome  # noqa: E402

OUT = ROOT / "bench" / "out"
SHARED = ROOT.parent / "shared" / "audio" / "manifest.jsonl"
SAMPLES = ROOT / "samples" / "manifest.jsonl"
SR = 16000


class PeakRSS:
    """Samples this process's RSS every 20 ms while a block runs."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


@dataclass
class SystemRun:
    errors: int = 0
    errors_t2s: int = 0  # after OpenCC t2s: what simplification alone would fix
    chars: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    delta_rss_mb: float = 0.0
    texts: list[str] = field(default_factory=list)

    @property
    def cer(self) -> float:
        return self.errors / max(1, self.chars)

    @property
    def cer_t2s(self) -> float:
        return self.errors_t2s / max(1, self.chars)


@dataclass
class Clip:
    path: Path
    text: str
    audio_s: float


def write_wav(path: Path, audio: np.ndarray, sr: int = SR) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[np.newaxis, :], format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def load_set(manifest: Path) -> list[Clip]:
    clips = []
    for entry in load_manifest(manifest):
        decoded = decode_audio(entry.audio, split_channels=False)
        clips.append(Clip(entry.audio, entry.text, decoded.duration))
    return clips


def build_long_recording(clips: list[Clip], minutes: float, seed: int = 7) -> Clip:
    """Clips laid out as one long recording with pauses, street noise and phone band.

    Like a long hotline recording: several callers' worth of speech with silences of
    1-6 s between them, traffic noise at 15 dB SNR under everything, narrowed to a
    phone line. Deterministic for a given seed and clip list.
    """
    rng = np.random.default_rng(seed)
    path = OUT / f"long_{minutes:g}min.wav"
    decoded = [decode_audio(c.path, split_channels=False).mono for c in clips]
    order: list[int] = []
    total = 0.0
    while total < minutes * 60 - 10:
        i = int(rng.integers(len(clips)))
        order.append(i)
        total += clips[i].audio_s + 3.5
    audio, _layout = layout_recording([decoded[i] for i in order], SR, pause_s=(1.0, 6.0),
                                      rng=rng)
    audio = audio[: int(minutes * 60 * SR)] if len(audio) > minutes * 60 * SR else audio
    noisy = mix_at_snr(audio, street_noise(len(audio), SR, rng), 15.0)
    line = phone_band(noisy, SR)
    line = (line / max(1e-6, float(np.max(np.abs(line)))) * 0.7).astype(np.float32)
    write_wav(path, line)
    text = "".join(clips[i].text for i, (_s, end, _k) in zip(order, _layout, strict=False)
                   if end <= len(audio) / SR + 1e-3)
    return Clip(path, text, len(line) / SR)


def measure(clips: list[Clip], transcribe: Callable[[Clip], str]) -> SystemRun:
    """Time, score and watch the memory of one system over a set of clips."""
    run = SystemRun()
    with PeakRSS() as mem:
        for clip in clips:
            t0 = time.perf_counter()
            text = transcribe(clip)
            run.seconds += time.perf_counter() - t0
            errors, chars = char_errors(clip.text, text)
            run.errors += errors
            run.errors_t2s += char_errors(clip.text, to_simplified(text))[0]
            run.chars += chars
            run.texts.append(text)
    run.peak_rss_mb = mem.peak / 2**20
    run.delta_rss_mb = (mem.peak - mem.start) / 2**20
    return run


def run_plain(model, clips: list[Clip]) -> SystemRun:
    def one(clip: Clip) -> str:
        try:
            segments, _info = model.transcribe(str(clip.path), beam_size=5)
            return "".join(seg.text for seg in segments)
        except Exception:  # plain faster-whisper cannot open SILK: give it PCM
            audio = decode_audio(clip.path, split_channels=False).mono
            segments, _info = model.transcribe(audio, beam_size=5)
            return "".join(seg.text for seg in segments)

    return measure(clips, one)


def run_minyin(pipe: VoicePipeline, clips: list[Clip]) -> SystemRun:
    def one(clip: Clip) -> str:
        outcome = pipe.process(clip.path, name=clip.path.name)
        ticket_from_outcome(outcome)  # the whole job, ticket included
        return outcome.transcript.text

    return measure(clips, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="shared,samples,long")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--compute-type", default=None, help="minyin's (default: settings)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--skip-plain", action="store_true",
                        help="exploration only: no ratio without plain in the same run")
    args = parser.parse_args()

    from faster_whisper import WhisperModel

    overrides = {k: v for k, v in (("compute_type", args.compute_type),
                                   ("batch_size", args.batch_size)) if v is not None}
    settings = Settings(cpu_threads=args.threads, **overrides)
    pipe = VoicePipeline(settings)
    rss0 = psutil.Process().memory_info().rss
    pipe.transcriber  # noqa: B018 - load before timing
    rss_minyin = psutil.Process().memory_info().rss
    plain = WhisperModel(pipe.model_ref.path, device="cpu", cpu_threads=args.threads)
    rss_plain = psutil.Process().memory_info().rss
    print(f"model {pipe.model_ref.name}: minyin {settings.compute_type} loaded "
          f"+{(rss_minyin - rss0) / 2**20:.0f} MB, plain default loaded "
          f"+{(rss_plain - rss_minyin) / 2**20:.0f} MB", file=sys.stderr)

    shared = load_set(SHARED) if SHARED.is_file() else []
    samples = load_set(SAMPLES)
    sets: dict[str, list[Clip]] = {}
    wanted = args.sets.split(",")
    if "shared" in wanted and shared:
        sets["shared"] = shared
    if "samples" in wanted:
        sets["samples"] = samples
    if "long" in wanted:
        sets[f"long {args.minutes:g} min"] = [build_long_recording(shared + samples, args.minutes)]

    # warm both up on one clip so neither pays first-call costs in the timing
    warm = (shared or samples)[:1]
    if not args.skip_plain:
        run_plain(plain, warm)
    run_minyin(pipe, warm)

    rows, details = [], []
    for name, clips in sets.items():
        audio_s = sum(c.audio_s for c in clips)
        p = SystemRun(seconds=1e-9, chars=1, texts=[""] * len(clips)) if args.skip_plain \
            else run_plain(plain, clips)
        m = run_minyin(pipe, clips)
        row = {
            "set": name, "clips": len(clips), "audio_s": round(audio_s, 1),
            "plain_cer": round(p.cer, 4), "minyin_cer": round(m.cer, 4),
            "plain_cer_after_opencc": round(p.cer_t2s, 4),
            "plain_s": round(p.seconds, 2), "minyin_s": round(m.seconds, 2),
            "speedup": round(p.seconds / max(1e-9, m.seconds), 2),
            "plain_rtfx": round(audio_s / p.seconds, 2),
            "minyin_rtfx": round(audio_s / m.seconds, 2),
            "plain_peak_rss_mb": round(p.peak_rss_mb), "minyin_peak_rss_mb": round(m.peak_rss_mb),
            "plain_rss_growth_mb": round(p.delta_rss_mb),
            "minyin_rss_growth_mb": round(m.delta_rss_mb),
        }
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), file=sys.stderr)
        details += [{"set": name, "audio": c.path.name, "reference": c.text, "plain": pt,
                     "minyin": mt} for c, pt, mt in zip(clips, p.texts, m.texts, strict=True)]
        for clip, pt, mt in zip(clips, p.texts, m.texts, strict=True):
            print(f"  {clip.path.name}\n    ref   {scoring_form(clip.text)[:120]}\n"
                  f"    plain {scoring_form(pt)[:120]}\n    minyin {scoring_form(mt)[:120]}",
                  file=sys.stderr)

    header = ("| set | clips | audio | CER plain | CER plain + OpenCC | CER minyin | time plain "
              "| time minyin | speed-up | peak RSS plain / minyin |")
    print(header)
    print("|" + "---|" * 10)
    for r in rows:
        print(f"| {r['set']} | {r['clips']} | {r['audio_s']:.0f} s | {r['plain_cer']:.1%} | "
              f"{r['plain_cer_after_opencc']:.1%} | "
              f"{r['minyin_cer']:.1%} | {r['plain_s']:.1f} s | {r['minyin_s']:.1f} s | "
              f"{r['speedup']:.2f}x | {r['plain_peak_rss_mb']} / {r['minyin_peak_rss_mb']} MB |")
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"threads": args.threads, "model": pipe.model_ref.name,
              "minyin_compute_type": settings.compute_type, "rows": rows, "clips": details}
    (OUT / "compare.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")


if __name__ == "__main__":
    main()
