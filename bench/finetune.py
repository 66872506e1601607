"""Fine-tuning benchmark: does `minyin finetune` make the bundled base better on county
complaints without making it worse on real speech, and does the result pass the
registry's gate?

    make tts-venv && .tts-venv/bin/python bench/finetune_data.py   # the dataset (once)
    .venv/bin/python bench/finetune.py [--epochs 2] [--learning-rate 1e-4]

The dataset (bench/finetune_data.py) is real complaint sentences spoken by many offline
voices under several lines; its held-out split has voices and messages never trained
on, and its ``replay.jsonl`` is general speech the base already handles. The real sets
come from ``../shared/audio-mandarin-read`` (97 read sentences, one speaker) split by
sentence: every other sentence in ``parallel_id`` order is the development set the
merge scale is chosen on (``--dev``), the others are held out; with ``../shared/audio``
(6 clips) they make the regression set the gate reads (all 97 + 6, 945 reference
characters as scored: the gate needs 800, so the development half is inside it; the
held-out half and ``../shared/audio`` are also reported on their own, from the same
per-clip counts).

It runs the real command (``minyin finetune --decoder-only --dev ... --regression ...``:
replay with the base's own transcripts, the KL term, merge scales measured and chosen,
CTranslate2 conversion, CER before and after through the workers' pipeline), plain
faster-whisper (the bundled base, default settings, OpenCC) on the same clips for
scale, and then ``minyin models promote`` without ``--force`` against a scratch
registry. Results: bench/out/finetune-<run>.json, the card copied to
bench/results/finetune-<run>.card.json, and a table.
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
READ = ROOT.parent / "shared" / "audio-mandarin-read" / "manifest.jsonl"
RESULTS = ROOT / "bench" / "results"


def real_sets() -> dict[str, Path]:
    """Manifests (absolute audio paths) under bench/out: ``dev`` and ``held_out`` halves
    of the read sentences, and ``regression`` (both halves and ../shared/audio)."""
    if not (READ.is_file() and SHARED.is_file()):
        sys.exit("../shared/audio-mandarin-read and ../shared/audio are needed")
    rows = {"dev": [], "held_out": [], "shared": []}
    read = [json.loads(line) for line in READ.read_text(encoding="utf-8").splitlines()]
    # every other sentence in parallel_id order (the ids themselves are all odd)
    order = {pid: k for k, pid in enumerate(sorted({r["parallel_id"] for r in read}))}
    for row in read:
        half = "held_out" if order[row["parallel_id"]] % 2 else "dev"
        rows[half].append({"audio": str(READ.parent / row["audio"]), "text": row["text"]})
    for line in SHARED.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows["shared"].append({"audio": str(SHARED.parent / row["audio"]), "text": row["text"]})
    rows["regression"] = rows["dev"] + rows["held_out"] + rows["shared"]
    paths = {}
    OUT.mkdir(parents=True, exist_ok=True)
    for name, lines in rows.items():
        paths[name] = OUT / f"finetune-real-{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                       for r in lines), encoding="utf-8")
    return paths


def trimmed(data: Path, clips: int) -> Path:
    """The dataset with every k-th held-out clip only (`clips` of them; the voices and
    lines stay mixed), beside it, sharing its audio."""
    lines = (data / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    step = max(1, len(lines) // clips)
    out = data.with_name(f"{data.name}-v{clips}")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train.jsonl", "replay.jsonl", "data_card.json"):
        if (data / name).is_file():
            (out / name).write_bytes((data / name).read_bytes())
    (out / "validation.jsonl").write_text("\n".join(lines[::step][:clips]) + "\n",
                                          encoding="utf-8")
    if not (out / "audio").exists():
        (out / "audio").symlink_to((data / "audio").resolve(), target_is_directory=True)
    return out


def subset_cer(detail: dict, manifest: Path) -> dict:
    """CER (raw and numbers in one form) of one subset, from a card's per-clip counts."""
    names = {Path(json.loads(line)["audio"]).name
             for line in manifest.read_text(encoding="utf-8").splitlines()}
    clips = [c for c in detail["per_clip"] if c[0] in names]
    return {"clips": len(clips), "ref_chars": sum(c[2] for c in clips),
            "cer": round(sum(c[1] for c in clips) / max(1, sum(c[2] for c in clips)), 4),
            "cer_numbers": round(sum(c[3] for c in clips) / max(1, sum(c[4] for c in clips)),
                                 4)}


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
    parser.add_argument("--merge-scale", default="auto")
    parser.add_argument("--merge-scales", default="0.5,1")
    parser.add_argument("--validation-clips", type=int, default=0,
                        help="measure on every k-th held-out clip, this many (0: all)")
    parser.add_argument("--replay-share", type=float, default=0.25)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--work-of", help="reuse this earlier run's work directory: a "
                        "finished training is merged again (--merge-scale) without training")
    parser.add_argument("--skip-plain", action="store_true")
    args = parser.parse_args()

    if not (args.data / "train.jsonl").is_file():
        sys.exit(f"{args.data} has no dataset: run .tts-venv/bin/python bench/finetune_data.py")
    if args.validation_clips:
        args.data = trimmed(args.data, args.validation_clips)
    out = ROOT / "models" / "bench-pujiang" / args.run
    command = [sys.executable, "-m", "api.cli", "finetune", "--data", str(args.data),
               "--base", "whisper-base", "--out", str(out), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--learning-rate",
               str(args.learning_rate), "--device", args.device, "--threads",
               str(args.threads), "--work", str(OUT / f"finetune-work-{args.work_of or args.run}"),
               "--merge-scale", str(args.merge_scale), "--merge-scales", args.merge_scales,
               "--replay-share",
               str(args.replay_share), "--kl-weight", str(args.kl_weight)]
    sets = real_sets()
    command += ["--dev", str(sets["dev"]), "--regression", str(sets["regression"])]
    if args.decoder_only:
        command.append("--decoder-only")
    if args.no_cross_attention:
        command.append("--no-cross-attention")
    env = {**os.environ, "MINYIN_CPU_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(f"minyin finetune failed ({run.returncode})")
    card = json.loads(run.stdout.strip().splitlines()[-1])

    plain = {}
    if not args.skip_plain:
        for name, manifest in (("validation", args.data / "validation.jsonl"),
                               ("held_out", sets["held_out"]), ("shared", sets["shared"])):
            items = [(e.audio, e.text) for e in load_manifest(manifest)]
            cer, seconds = plain_cer(items, args.threads)
            plain[name] = {"cer": round(cer, 4), "seconds": round(seconds, 1)}
    reg = card["cer"]["regression"]
    real = {name: {when: subset_cer(reg[f"{when}_detail"], sets[name])
                   for when in ("before", "after")} for name in ("held_out", "shared", "dev")}

    # the registry's verdict, without --force, in a scratch data directory
    scratch = OUT / f"finetune-registry-{args.run}"
    promote = subprocess.run(
        [sys.executable, "-m", "api.cli", "models", "promote", f"bench-pujiang/{args.run}"],
        cwd=ROOT, capture_output=True, text=True,
        env={**env, "MINYIN_DATA_DIR": str(scratch)})
    verdict = {"returncode": promote.returncode,
               "said": " ".join((promote.stdout + promote.stderr).split())[-600:]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"finetune-{args.run}.card.json").write_text(
        json.dumps(card, ensure_ascii=False, indent=1), encoding="utf-8")

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
        "replay": training.get("replay"), "merge": card.get("merge"),
        "cer": {k: {"before": v["before"], "after": v["after"], "gain": v.get("gain")}
                for k, v in card["cer"].items()},
        "real": real, "promote": verdict,
        "plain_faster_whisper": plain, "threads": args.threads,
        "command": " ".join(command[1:]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"finetune-{args.run}.json").write_text(json.dumps(result, indent=1),
                                                   encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False))
    print()
    print("| set (clips, ref chars) | plain faster-whisper | minyin, base | fine-tuned |")
    print("|---|---|---|---|")
    v = result["cer"]["validation"]
    p = plain.get("validation", {}).get("cer")
    print(f"| held-out generated ({result['validation_clips']}, "
          f"{v['gain']['ref_chars'] if v.get('gain') else '?'}) | "
          f"{f'{p:.1%}' if p is not None else '-'} | {v['before']:.1%} | {v['after']:.1%} |")
    for name, label in (("held_out", "read, held-out half"), ("shared", "../shared/audio"),
                        ("dev", "read, dev half (chose the merge)")):
        c = real[name]
        p = plain.get(name, {}).get("cer")
        print(f"| {label} ({c['before']['clips']}, {c['before']['ref_chars']}) | "
              f"{f'{p:.1%}' if p is not None else '-'} | {c['before']['cer']:.1%} "
              f"({c['before']['cer_numbers']:.1%}) | {c['after']['cer']:.1%} "
              f"({c['after']['cer_numbers']:.1%}) |")
    r = result["cer"]["regression"]
    print(f"| regression gate ({r['gain']['clips']}, {r['gain']['ref_chars']}) | - | "
          f"{r['before']:.1%} | {r['after']:.1%} |")
    print(f"\nvalidation gain {v['gain']['points']:+.2f} points, 95% interval "
          f"{v['gain']['interval']}; merge scale {result['merge'].get('scale')} "
          f"({result['merge'].get('chosen_by')}); promote: rc {verdict['returncode']} "
          f"{verdict['said'][-200:]}")
    print(f"\ntraining: {result['steps']} steps, {result['epochs']} epochs, "
          f"{result['training_wall_s']:.0f} s on {result['device']} ({args.threads} threads); "
          f"whole command {wall:.0f} s")


if __name__ == "__main__":
    main()
