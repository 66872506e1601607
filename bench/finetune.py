"""Fine-tuning benchmark: does `minyin finetune` make the bundled base better on county
complaints without making it worse elsewhere, and what does it cost?

    .tts-venv/bin/python bench/finetune_data.py          # 240 generated clips (once)
    .venv/bin/python bench/finetune.py [--decoder-only] [--epochs 2] [--device cpu]

It runs the real command, ``minyin finetune --data bench/out/finetune_data --base
whisper-base --out models/bench-pujiang/<run> --regression ../shared/audio/manifest.jsonl``
(the base exported to Hugging Face weights, LoRA training, CTranslate2 conversion, CER
before and after through the workers' pipeline), and beside it plain faster-whisper
(the bundled base, its default settings, OpenCC to simplified) on the same held-out
clips and the same real recordings, as the usual yardstick. The held-out split is by
caller: voices, lines and sentences never trained on. ``../shared/audio`` must not get
worse by more than 1 point. Results: bench/out/finetune-<run>.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.normalize import to_simplified  # noqa: E402
from pipeline.evaluate import char_errors, load_manifest  # noqa: E402

OUT = ROOT / "bench" / "out"
DATA = OUT / "finetune_data"
SHARED = ROOT.parent / "shared" / "audio" / "manifest.jsonl"


def plain_cer(items: list[tuple[Path, str]], threads: int) -> tuple[float, float]:
    """(CER, seconds) of plain faster-whisper on the bundled base, OpenCC applied."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(ROOT / "models" / "whisper-base"), device="cpu",
                         compute_type="float32", cpu_threads=threads)
    errors = chars = 0
    t0 = time.perf_counter()
    for audio, text in items:
        segments, _ = model.transcribe(str(audio), language="zh")
        hyp = to_simplified("".join(s.text for s in segments))
        e, n = char_errors(text, hyp)
        errors, chars = errors + e, chars + n
    return errors / max(1, chars), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--decoder-only", action="store_true")
    parser.add_argument("--no-cross-attention", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--run", default=datetime.now(timezone.utc).strftime("%Y%m%d-%H%M"))
    parser.add_argument("--merge-scale", type=float, default=1.0)
    parser.add_argument("--work-of", help="reuse this earlier run's work directory: a "
                        "finished training is merged again (--merge-scale) without training")
    parser.add_argument("--skip-plain", action="store_true")
    args = parser.parse_args()

    if not (args.data / "train.jsonl").is_file():
        sys.exit(f"{args.data} has no dataset: run .tts-venv/bin/python bench/finetune_data.py")
    out = ROOT / "models" / "bench-pujiang" / args.run
    command = [sys.executable, "-m", "api.cli", "finetune", "--data", str(args.data),
               "--base", "whisper-base", "--out", str(out), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--learning-rate",
               str(args.learning_rate), "--device", args.device, "--threads",
               str(args.threads), "--work", str(OUT / f"finetune-work-{args.work_of or args.run}"),
               "--merge-scale", str(args.merge_scale)]
    if args.decoder_only:
        command.append("--decoder-only")
    if args.no_cross_attention:
        command.append("--no-cross-attention")
    if SHARED.is_file():
        command += ["--regression", str(SHARED)]
    env = {**os.environ, "MINYIN_CPU_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(f"minyin finetune failed ({run.returncode})")
    card = json.loads(run.stdout.strip().splitlines()[-1])

    held_out = [(e.audio, e.text) for e in load_manifest(args.data / "validation.jsonl")]
    shared = [(e.audio, e.text) for e in load_manifest(SHARED)] if SHARED.is_file() else []
    plain = {}
    if not args.skip_plain:
        for name, items in (("validation", held_out), ("regression", shared)):
            if items:
                cer, seconds = plain_cer(items, args.threads)
                plain[name] = {"cer": round(cer, 4), "seconds": round(seconds, 1)}

    training = card["training"]
    result = {
        "run": args.run, "model": f"bench-pujiang/{args.run}", "wall_s": round(wall, 1),
        "training_wall_s": training["wall_s"], "device": training["device"],
        "steps": training["steps"], "epochs": training["epochs_done"],
        "method": training["method"], "encoder": training["encoder"],
        "learning_rate": training["learning_rate"], "merge_scale": training["merge_scale"],
        "cross_attention": training.get("cross_attention"),
        "resumed_from": training["resumed_from"],
        "train_clips": card["data"]["train_clips"],
        "validation_clips": card["data"]["validation_clips"],
        "train_hours": card["data"]["card"].get("hours", {}).get("train"),
        "cer": {k: {"before": v["before"], "after": v["after"]} for k, v in card["cer"].items()},
        "plain_faster_whisper": plain, "threads": args.threads,
        "command": " ".join(command[1:]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"finetune-{args.run}.json").write_text(json.dumps(result, indent=1),
                                                   encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False))
    print()
    print("| set | plain faster-whisper | minyin, base | minyin, fine-tuned |")
    print("|---|---|---|---|")
    for name, label in (("validation", f"held-out ({result['validation_clips']} clips, "
                                       "unseen callers)"),
                        ("regression", "../shared/audio (real speech)")):
        if name in result["cer"]:
            c = result["cer"][name]
            p = plain.get(name, {}).get("cer")
            print(f"| {label} | {f'{p:.1%}' if p is not None else '-'} | {c['before']:.1%} "
                  f"| {c['after']:.1%} |")
    print(f"\ntraining: {result['steps']} steps, {result['epochs']} epochs, "
          f"{result['training_wall_s']:.0f} s on {result['device']} ({args.threads} threads); "
          f"whole command {wall:.0f} s")


if __name__ == "__main__":
    main()
