"""Dialect detection: is speech the model cannot read kept from passing as a transcript?

    .venv/bin/python bench/dialect.py --per-lang 60 --out bench/out/dialect.json

Sets (read from ../shared, never copied): audio-southern-dialects (Hakka, Minnan,
Min Dong, Wu), audio-dialect (Cantonese), and on the Mandarin side audio,
audio-mandarin-read and samples/. Each clip goes through the real pipeline once (the
untrained rules judging); every window's Whisper signals are kept, so that a detector
trained on one half (split by `parallel_id`: no sentence on both sides) is judged on the
other half from the same decoding. Reported for the rules and for the trained detector,
on the test half (the rules on all clips too):

- non-Mandarin clips not marked readable (target >= 0.90),
- Mandarin clips wrongly flagged (target <= 0.05),
- the variety confusion table (true -> detected),
- detection cost: seconds in language detection and pooling over transcription seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SETS = {  # directory -> the label when the manifest has no `lang`
    "audio-southern-dialects": None,
    "audio-dialect": "cantonese",
    "audio": "mandarin",
    "audio-mandarin-read": "mandarin",
}


def clips(per_lang: int, seed: int) -> list[dict[str, Any]]:
    from asr.dialect import normalise_variety

    rows = []
    for name, default in SETS.items():
        manifest = SHARED / name / "manifest.jsonl"
        if not manifest.is_file():
            print(f"note: {manifest} missing, skipped", file=sys.stderr)
            continue
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                lang = row.get("lang") if name == "audio-southern-dialects" else default
                rows.append({"audio": str(manifest.parent / row["audio"]),
                             "lang": row.get("lang") or default,
                             "variety": normalise_variety(lang),
                             "group": str(row.get("parallel_id") or row["audio"]),
                             "set": name})
    samples = ROOT / "samples" / "manifest.jsonl"
    if samples.is_file():
        for line in samples.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows.append({"audio": str(samples.parent / row["audio"]), "lang": "mandarin",
                             "variety": "mandarin", "group": row["audio"], "set": "samples"})
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by[row["lang"]].append(row)
    rng = random.Random(seed)
    out = []
    for lang in sorted(by):
        group = by[lang]
        rng.shuffle(group)
        out.extend(group if lang in ("mandarin", "zh") else group[:per_lang])
    return out


class Recorder:
    """Wraps a detector: keeps what each window's judgement was made from."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.version = inner, inner.name, inner.version
        self.calls: list[dict[str, Any]] = []

    def judge(self, text: str, **kw: Any) -> Any:
        self.calls.append({"text": text, **kw})
        return self.inner.judge(text, **kw)


def is_test(group: str) -> bool:
    return int(hashlib.sha256(group.encode()).hexdigest(), 16) % 2 == 0


def summarise(results: list[dict[str, Any]], key: str) -> dict[str, Any]:
    mand = [r for r in results if r["variety"] == "mandarin"]
    other = [r for r in results if r["variety"] != "mandarin"]
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        confusion[f"{r['variety']}"][r[key]["variety"] + ("" if not r[key]["readable"]
                                                         else "(readable)")] += 1
    return {
        "clips": len(results), "mandarin_clips": len(mand), "other_clips": len(other),
        "non_mandarin_not_readable": round(
            sum(not r[key]["readable"] for r in other) / len(other), 4) if other else None,
        "mandarin_flagged": round(
            sum(not r[key]["readable"] for r in mand) / len(mand), 4) if mand else None,
        "per_set_not_readable": {
            s: f"{sum(not r[key]['readable'] for r in results if r['set'] == s)}/"
               f"{sum(1 for r in results if r['set'] == s)}"
            for s in sorted({r["set"] for r in results})},
        "variety_right_among_non_mandarin": round(
            sum(r[key]["variety"] == r["variety"] for r in other) / len(other), 4)
        if other else None,
        "confusion": {k: dict(v) for k, v in sorted(confusion.items())},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-lang", type=int, default=60,
                    help="clips per non-Mandarin language (Mandarin: all)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dialect.json")
    args = ap.parse_args()
    os.environ.setdefault("MINYIN_DETECTOR", "rules")
    sys.path.insert(0, str(ROOT))
    import asr.transcriber as tr
    from asr.dialect import (
        Judgement,
        RuleDetector,
        TrainedDetector,
        fit_detector,
        judge_transcript,
        load_detector,
    )
    from asr.types import Segment
    from pipeline.process import VoicePipeline

    pipe = VoicePipeline()
    spent = {"detect": 0.0}
    inner = tr.window_signals

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            spent["detect"] += time.perf_counter() - t0

    tr.window_signals = timed
    rules = Recorder(RuleDetector())
    pipe.detector = lambda profile: rules  # type: ignore[method-assign]
    items = clips(args.per_lang, args.seed)
    print(f"{len(items)} clips: {dict(Counter(i['lang'] for i in items))}", file=sys.stderr)
    results = []
    asr_s = 0.0
    t_all = time.perf_counter()
    for n, item in enumerate(items, 1):
        rules.calls = []
        t0 = time.perf_counter()
        try:
            outcome = pipe.process(item["audio"], name=Path(item["audio"]).name)
        except Exception as e:  # a clip that cannot be decoded is reported, not fatal
            print(f"{item['audio']}: {e}", file=sys.stderr)
            continue
        asr_s += outcome.timings.get("asr", time.perf_counter() - t0)
        t = outcome.transcript
        segs = [{"start": s.start, "end": s.end, "speaker": s.speaker} for s in t.segments]
        results.append({**item, "rules": {"variety": t.variety, "readable": t.readable},
                        "text": t.text[:60], "calls": rules.calls, "segs": segs})
        if n % 25 == 0:
            print(f"  {n}/{len(items)} {time.perf_counter() - t_all:.0f} s", file=sys.stderr)

    # the trained detector: fitted on one half's windows, judged on the other's
    train = [r for r in results if not is_test(r["group"])]
    test = [r for r in results if is_test(r["group"])]
    rows = [(c["signals"], r["variety"]) for r in train for c in r["calls"]
            if c.get("signals") is not None]
    work = args.out.parent / "dialect-detector"
    card = fit_detector(rows, work, name="bench-dialect", version="1",
                        source={"bench": "train half"})
    trained: TrainedDetector = load_detector(work)
    for r in test:
        segs = []
        for call, seg in zip(r["calls"], r["segs"], strict=False):
            kw = {k: v for k, v in call.items() if k != "text"}
            j: Judgement = trained.judge(call["text"], **kw)
            segs.append(Segment(start=seg["start"], end=seg["end"], text="",
                                speaker=seg["speaker"], variety=j.variety,
                                variety_confidence=j.confidence, readable=j.readable))
        caller = [s for s in segs if s.speaker in (None, "caller")] or segs
        j = judge_transcript(caller)
        r["trained"] = {"variety": j.variety, "readable": j.readable and bool(segs)}
    report = {
        "clips": len(results), "per_lang": dict(Counter(r["lang"] for r in results)),
        "rules_all": summarise(results, "rules"),
        "rules_test_half": summarise(test, "rules"),
        "trained_test_half": summarise(test, "trained"),
        "trained_card": {k: card[k] for k in ("classes", "trained_on")},
        "detection_cost": {"detect_s": round(spent["detect"], 2), "asr_s": round(asr_s, 2),
                           "ratio": round(spent["detect"] / asr_s, 4) if asr_s else None},
        "wall_s": round(time.perf_counter() - t_all, 1),
        "misses": [{"audio": Path(r["audio"]).name, "lang": r["lang"], "rules": r["rules"],
                    "text": r["text"]} for r in results
                   if r["rules"]["readable"] != (r["variety"] == "mandarin")][:40],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "misses"}, ensure_ascii=False,
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
