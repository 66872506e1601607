"""Transcript accuracy against plain faster-whisper, in one process, on the same audio.

    .venv/bin/python bench/accuracy.py [--sets shared,read,samples,noisy] [--threads 2]
        [--systems plain-int8,plain-float32,minyin-nolm,minyin-lm,minyin-county]

Systems:

- ``plain-int8`` / ``plain-float32``: what a user writes first, ``WhisperModel(path,
  compute_type=...).transcribe(file, beam_size=5, language="zh")`` with every other
  option at its default, then OpenCC t2s.
- ``minyin-nolm``: minyin's whole pipeline without a language model (``MINYIN_LM=none``).
- ``minyin-lm``: with the shipped LM as ``make setup`` builds it for a deployment in
  ``--region`` (what the product may ship plus the region's names, fitted on
  ``samples/``; in ``bench/out/shipped-models/lm/default``), or ``--lm DIR``.
- ``minyin-county``: with an LM built, for this bench only, from the shipped sources
  plus ``../shared/text/teddy2020c/`` as if it were the county's own work-order history
  (``bench/out/lm-county``, git-ignored, never shipped).
- ``*-int8`` variants of the minyin systems measure the compute type with the LM on.

Sets: ``../shared/audio`` (6 real clips), ``../shared/audio-mandarin-read`` (97 real read
sentences), ``samples/`` (11 voice notes) and ``noisy``: ``samples/`` rendered through a
phone band with street noise at 10 dB SNR (``bench/out/noisy-samples/``, deterministic).

Per set and system: CER raw and with numbers in one form on both sides, the oracle CER
(the best of the beam's hypotheses per window, for systems that keep the n-best), the
reference size, seconds, ratios to plain int8 + OpenCC, and peak RSS. Writes
``bench/out/accuracy.json`` with every clip's reference and hypotheses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.normalize import normalize_text, to_simplified  # noqa: E402
from asr.rescore import LanguageTools, load_language_tools  # noqa: E402
from bench.audiogen import mix_at_snr, phone_band, street_noise  # noqa: E402
from bench.compare import PeakRSS, write_wav  # noqa: E402
from pipeline.audio import decode_audio  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.evaluate import best_of_beam, char_errors, load_manifest  # noqa: E402
from pipeline.process import VoicePipeline  # noqa: E402

OUT = ROOT / "bench" / "out"
SHARED = ROOT.parent / "shared"
SETS = {
    "shared": SHARED / "audio" / "manifest.jsonl",
    "read": SHARED / "audio-mandarin-read" / "manifest.jsonl",
    "samples": ROOT / "samples" / "manifest.jsonl",
}
HISTORY = SHARED / "text" / "teddy2020c"
SR = 16000


@dataclass
class Clip:
    path: Path
    text: str
    audio_s: float


@dataclass
class Run:
    errors: int = 0
    chars: int = 0
    errors_numbers: int = 0
    chars_numbers: int = 0
    oracle_errors: int = 0
    oracle_numbers: int = 0
    has_oracle: bool = False
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    texts: list[str] = field(default_factory=list)

    def add(self, reference: str, text: str, oracle: str | None) -> None:
        e, n = char_errors(reference, text)
        en, nn = char_errors(reference, text, numbers=True)
        self.errors, self.chars = self.errors + e, self.chars + n
        self.errors_numbers, self.chars_numbers = self.errors_numbers + en, self.chars_numbers + nn
        if oracle is not None:
            self.has_oracle = True
        oracle = text if oracle is None else oracle
        self.oracle_errors += char_errors(reference, oracle)[0]
        self.oracle_numbers += char_errors(reference, oracle, numbers=True)[0]
        self.texts.append(text)

    def row(self) -> dict:
        return {
            "cer": round(self.errors / max(1, self.chars), 4),
            "cer_numbers": round(self.errors_numbers / max(1, self.chars_numbers), 4),
            "oracle_cer": round(self.oracle_errors / max(1, self.chars), 4)
            if self.has_oracle else None,
            "oracle_cer_numbers": round(self.oracle_numbers / max(1, self.chars_numbers), 4)
            if self.has_oracle else None,
            "ref_chars": self.chars, "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(self.peak_rss_mb),
        }


def load_set(manifest: Path) -> list[Clip]:
    return [Clip(e.audio, e.text, decode_audio(e.audio, split_channels=False).duration)
            for e in load_manifest(manifest)]


def noisy_set(clips: list[Clip], snr_db: float = 10.0, seed: int = 11) -> list[Clip]:
    """`clips` through a phone band under street noise; written once, deterministic."""
    rng = np.random.default_rng(seed)
    out = []
    for clip in clips:
        path = OUT / "noisy-samples" / f"{clip.path.stem}.wav"
        audio = decode_audio(clip.path, split_channels=False).mono
        noise = street_noise(len(audio), SR, rng)  # drawn even when cached: same stream
        if not path.is_file():
            line = phone_band(mix_at_snr(audio, noise, snr_db), SR)
            write_wav(path, (line / max(1e-6, float(np.max(np.abs(line)))) * 0.7)
                      .astype(np.float32))
        out.append(Clip(path, clip.text, clip.audio_s))
    return out


def oracle(reference: str, segments) -> str | None:
    """The best of the beam for this clip, None when no window kept an n-best."""
    windows = []
    for seg in segments:
        hyps = [normalize_text(h.text) for h in seg.hypotheses]
        windows.append([seg.text, *hyps])
    if not any(len(w) > 2 for w in windows):
        return None
    return best_of_beam(reference, windows)


def run_plain(model, clips: list[Clip]) -> Run:
    run = Run()
    with PeakRSS() as mem:
        for clip in clips:
            t0 = time.perf_counter()
            try:
                segments, _ = model.transcribe(str(clip.path), beam_size=5, language="zh")
                text = "".join(s.text for s in segments)
            except Exception:  # plain faster-whisper cannot open SILK: give it PCM
                audio = decode_audio(clip.path, split_channels=False).mono
                segments, _ = model.transcribe(audio, beam_size=5, language="zh")
                text = "".join(s.text for s in segments)
            text = to_simplified(text)
            run.seconds += time.perf_counter() - t0
            run.add(clip.text, text, None)
    run.peak_rss_mb = mem.peak / 2**20
    return run


def run_minyin(pipe: VoicePipeline, tools: LanguageTools, clips: list[Clip]) -> Run:
    pipe.transcriber.use_language_model(tools)
    run = Run()
    with PeakRSS() as mem:
        for clip in clips:
            t0 = time.perf_counter()
            outcome = pipe.process(clip.path, name=clip.path.name)
            run.seconds += time.perf_counter() - t0
            segments = outcome.transcript.segments
            run.add(clip.text, outcome.transcript.text, oracle(clip.text, segments))
    run.peak_rss_mb = mem.peak / 2**20
    return run


def shipped_lm(path: Path, pipe: VoicePipeline, region: str | None) -> Path:
    """What `minyin models setup` and `make setup` give a deployment with this region:
    the shipped sources and the region's names, fitted on samples/."""
    from asr.lm import read_card
    from pipeline.language_model import ensure_default_lm
    from pipeline.lm_fit import fit

    lm = ensure_default_lm(path, region=region)
    if not (read_card(lm).get("rescoring") or {}).get("dev_cer"):
        fit(pipe, lm, load_manifest(SETS["samples"]), manifest="samples/manifest.jsonl")
    return lm


def county_lm(path: Path, pipe: VoicePipeline, region: str | None) -> Path:
    """The shipped sources plus ../shared/text as the county's history (bench only),
    fitted like the shipped one (on samples/), with the county's replied messages as
    the clean text the corrector must leave alone."""
    from asr.gazetteer import region_names
    from asr.lm import read_card
    from pipeline.language_model import build_lm, read_history
    from pipeline.lm_fit import fit, sentences_of

    if not (path / "card.json").is_file():
        # replied_messages.jsonl stays out of it: it is the clean text below
        history = [HISTORY / name for name in ("hotspot_messages.jsonl",
                                               "unlabelled_messages.jsonl",
                                               "labelled_l1.jsonl")]
        build_lm(path, history_files=history, region=region,
                 place_names=region_names(region).all_names() if region else ())
    if not (read_card(path).get("rescoring") or {}).get("dev_cer"):
        clean = [s for t in read_history(HISTORY / "replied_messages.jsonl")[:400]
                 for s in sentences_of(t)]
        fit(pipe, path, load_manifest(SETS["samples"]), clean_texts=clean[:1000],
            manifest="samples/manifest.jsonl")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="shared,read,samples,noisy")
    parser.add_argument("--systems",
                        default="plain-int8,plain-float32,minyin-nolm,minyin-lm,minyin-county")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="first N clips of each set")
    parser.add_argument("--lm", type=Path, default=None, help="the shipped LM directory")
    parser.add_argument("--county-lm", type=Path, default=OUT / "lm-county")
    parser.add_argument("--out", type=Path, default=OUT / "accuracy.json")
    parser.add_argument("--region", default="浙江省金华市浦江县",
                        help="minyin's MINYIN_REGION (samples/ are Pujiang complaints); "
                             "'' for none")
    args = parser.parse_args()

    from faster_whisper import WhisperModel

    wanted = args.sets.split(",")
    systems = args.systems.split(",")
    sets: dict[str, list[Clip]] = {}
    for name in ("shared", "read", "samples"):
        if (name in wanted or (name == "samples" and "noisy" in wanted)) \
                and SETS[name].is_file():
            sets[name] = load_set(SETS[name])[:args.limit]
    if "noisy" in wanted:
        sets["noisy"] = noisy_set(sets["samples"])
    if "samples" not in wanted:
        sets.pop("samples", None)

    pipes: dict[str, VoicePipeline] = {}

    def pipe_for(compute_type: str) -> VoicePipeline:
        if compute_type not in pipes:
            pipes[compute_type] = VoicePipeline(Settings(
                cpu_threads=args.threads, compute_type=compute_type, lm="none",
                region=args.region or None))
        return pipes[compute_type]

    tools: dict[str, LanguageTools] = {"nolm": LanguageTools()}
    if any("-lm" in s for s in systems):
        tools["lm"] = load_language_tools(
            args.lm or shipped_lm(OUT / "shipped-models", pipe_for("float32"), args.region))
    if any("county" in s for s in systems):
        tools["county"] = load_language_tools(
            county_lm(args.county_lm, pipe_for("float32"), args.region))
    plain: dict[str, object] = {}
    base = pipe_for("float32").model_ref.path
    for system in systems:
        if system.startswith("plain-"):
            plain[system] = WhisperModel(base, device="cpu", cpu_threads=args.threads,
                                         compute_type=system.removeprefix("plain-"))

    # warm every system up on one clip so none pays first-call costs in the timing
    warm = next(iter(sets.values()))[:1]
    for system in systems:
        if system in plain:
            run_plain(plain[system], warm)
        else:
            kind, _, ct = system.removeprefix("minyin-").partition("-")
            run_minyin(pipe_for(ct or "float32"), tools[kind], warm)

    rows, details = [], []
    for set_name, clips in sets.items():
        audio_s = sum(c.audio_s for c in clips)
        runs: dict[str, Run] = {}
        for system in systems:
            if system in plain:
                runs[system] = run_plain(plain[system], clips)
            else:
                kind, _, ct = system.removeprefix("minyin-").partition("-")
                runs[system] = run_minyin(pipe_for(ct or "float32"), tools[kind], clips)
            row = {"set": set_name, "system": system, "clips": len(clips),
                   "audio_s": round(audio_s, 1), **runs[system].row()}
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), file=sys.stderr, flush=True)
        ref_run = runs.get("plain-int8") or next(iter(runs.values()))
        for row in rows[-len(systems):]:
            row["cer_vs_plain_int8"] = round(row["cer"] / max(1e-9, ref_run.row()["cer"]), 3)
            row["cer_numbers_vs_plain_int8"] = round(
                row["cer_numbers"] / max(1e-9, ref_run.row()["cer_numbers"]), 3)
            row["time_vs_plain_int8"] = round(row["seconds"] / max(1e-9, ref_run.seconds), 3)
        for i, clip in enumerate(clips):
            details.append({"set": set_name, "audio": clip.path.name, "reference": clip.text,
                            **{s: r.texts[i] for s, r in runs.items()}})

    print("| set | clips | ref chars | system | CER | CER numbers in one form | oracle "
          "(numbers) | vs plain int8 (numbers) | seconds | vs plain int8 | peak RSS |")
    print("|" + "---|" * 11)
    for r in rows:
        oracle = f"{r['oracle_cer_numbers']:.1%}" if r["oracle_cer_numbers"] is not None else "–"
        print(f"| {r['set']} | {r['clips']} | {r['ref_chars']} | {r['system']} | {r['cer']:.1%} "
              f"| {r['cer_numbers']:.1%} | {oracle} | {r['cer_numbers_vs_plain_int8']:.2f} "
              f"| {r['seconds']:.1f} | {r['time_vs_plain_int8']:.2f} | {r['peak_rss_mb']} MB |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows, "clips": details},
                                   ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
