"""Ticket bench: level-1 category accuracy on real messages and ticket building time.

    .venv/bin/python -m bench.tickets              # shipped + trained accuracy, timing
    .venv/bin/python -m bench.tickets --compare    # model alternatives, rule weight

(a) Level-1 accuracy on ../shared/text/teddy2020c/labelled_l1.jsonl (247 real messages,
    text = title + text) of the shipped classifier (as `minyin models setup` trains it)
    and of one trained with `minyin tickets train` on unlabelled_messages.jsonl with its
    `label_l1_pred` as noisy level-1 labels; per-class accuracy and confusions.
(b) Ticket building time per typed message through `pipeline.messages` and the real
    builder (median, p95).
--compare: model kinds and n-gram ranges, measured by grouped cross-validation on our own
phrasings (category_phrases.yaml: a phrasing and its framed copy stay on one side) and
on the real messages (reported, never trained on for shipping); and the rule weight.

The shared texts are for measuring only: nothing derived from them ships. Results go to
bench/out/tickets.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "text" / "teddy2020c"
OUT = ROOT / "bench" / "out"


def _rows(name: str) -> list[dict[str, Any]]:
    path = SHARED / name
    if not path.is_file():
        sys.exit(f"{path} is missing: the bench needs the shared contest texts")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _text(row: dict[str, Any]) -> str:
    return f"{row.get('title') or ''}。{row.get('text') or ''}"


def level1_report(predicted: list[str], gold: list[str]) -> dict[str, Any]:
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for p, g in zip(predicted, gold, strict=True):
        per[g][p] += 1
    classes = {g: {"n": sum(c.values()), "accuracy": round(c[g] / sum(c.values()), 3),
                   "confused_with": {k: v for k, v in c.most_common() if k != g}}
               for g, c in sorted(per.items(), key=lambda kv: -sum(kv[1].values()))}
    correct = sum(p == g for p, g in zip(predicted, gold, strict=True))
    return {"n": len(gold), "accuracy": round(correct / len(gold), 4), "classes": classes}


def evaluate(model: Any, rules: Any, texts: list[str], gold: list[str]) -> dict[str, Any]:
    """Level-1 accuracy of the model alone and of the builder's combination with the
    keyword score (what a ticket gets, before the safety overrides)."""
    from pipeline.tickets.classifier import choose_category

    model_only = model.level1_many(texts)
    combined = [choose_category(t, rules, model, homophones=False).category.path[0]
                for t in texts]
    return {"model": level1_report(model_only, gold), "combined": level1_report(combined, gold)}


def print_report(title: str, report: dict[str, Any]) -> None:
    print(f"\n{title}: level-1 accuracy {report['accuracy']:.3f} (n={report['n']})")
    print(f"  {'class':<10} {'n':>4} {'acc':>6}  confused with")
    for name, c in report["classes"].items():
        confused = ", ".join(f"{k} {v}" for k, v in list(c["confused_with"].items())[:4])
        print(f"  {name:<10} {c['n']:>4} {c['accuracy']:>6.3f}  {confused}")


def train_with_cli(rows: list[dict[str, Any]], models_dir: Path) -> Path:
    """`minyin tickets train --from` the unlabelled messages with their predicted labels,
    into a models directory of the bench's own."""
    history = OUT / "unlabelled_l1.jsonl"
    with history.open("w", encoding="utf-8") as f:
        for row in rows:
            if row.get("label_l1_pred"):
                f.write(json.dumps({"title": row.get("title") or "", "text": row["text"],
                                    "label_l1": row["label_l1_pred"]},
                                   ensure_ascii=False) + "\n")
    env = {**os.environ, "MINYIN_MODELS_DIR": str(models_dir),
           "MINYIN_DATA_DIR": str(OUT / "data")}
    cmd = [sys.executable, "-m", "api.cli", "tickets", "train", "--from", str(history),
           "--name", "teddy-noisy", "--overwrite"]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return models_dir / "classifier" / "teddy-noisy"


def timing(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    from pipeline.messages import TypedMessage, ticket_from_message

    msgs = [TypedMessage(title=(r.get("title") or "")[:200] or None, text=r["text"][:5000])
            for r in rows[:limit]]
    ticket_from_message(msgs[0])  # loads rules and the classifier once
    times = []
    for msg in msgs:
        t0 = time.perf_counter()
        ticket_from_message(msg)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"tickets": len(times), "median_ms": round(1000 * statistics.median(times), 1),
            "p95_ms": round(1000 * times[int(0.95 * (len(times) - 1))], 1),
            "max_ms": round(1000 * times[-1], 1),
            "mean_chars": round(sum(len(m.text) for m in msgs) / len(msgs))}


def compare(rules: Any, texts: list[str], gold: list[str]) -> list[dict[str, Any]]:
    """Model alternatives: grouped 5-fold CV on our phrasings (leaf and level-1 accuracy)
    and level-1 accuracy on the real messages."""
    from pipeline.tickets.classifier import CategoryClassifier, shipped_examples

    shipped = shipped_examples(rules)
    phrases = [e for e in shipped if e.weight == 1.0]
    others = [e for e in shipped if e.weight != 1.0]
    # a phrasing and its framed copy are consecutive: one group
    groups = [i // 2 for i in range(len(phrases))]
    table = []
    for kind in ("logreg", "svc", "cnb"):
        for ngram in ((1, 2), (1, 3), (2, 4)):
            for c in ((10.0, 30.0) if kind != "cnb" else (1.0,)):
                t0 = time.perf_counter()
                leaf_ok = l1_ok = 0
                for fold in range(5):
                    test = [e for e, g in zip(phrases, groups, strict=True) if g % 5 == fold]
                    train = [e for e, g in zip(phrases, groups, strict=True) if g % 5 != fold]
                    m = CategoryClassifier.train(train + others, rules, model=kind,
                                                 ngram_range=ngram, c=c)
                    for e, probs in zip(test, m.predict_many([e.text for e in test]),
                                        strict=True):
                        best = max(probs, key=probs.get)
                        leaf_ok += best == e.leaf
                        l1_ok += m.leaf_level1[best] == m.leaf_level1[e.leaf]
                full = CategoryClassifier.train(shipped, rules, model=kind, ngram_range=ngram,
                                                c=c)
                real = full.level1_many(texts)
                row = {"model": kind, "ngram": f"{ngram[0]}-{ngram[1]}", "C": c,
                       "cv_leaf": round(leaf_ok / len(phrases), 3),
                       "cv_level1": round(l1_ok / len(phrases), 3),
                       "real_level1": round(sum(p == g for p, g in zip(real, gold,
                                                                       strict=True))
                                            / len(gold), 3),
                       "seconds": round(time.perf_counter() - t0, 1)}
                print(json.dumps(row), flush=True)
                table.append(row)
    return table


def rule_weights(rules: Any, texts: list[str], gold: list[str]) -> list[dict[str, Any]]:
    """The keyword score's share, on held-out phrasings (grouped CV) and real messages."""
    from pipeline.tickets.classifier import CategoryClassifier, choose_category, shipped_examples

    shipped = shipped_examples(rules)
    phrases = [e for e in shipped if e.weight == 1.0]
    others = [e for e in shipped if e.weight != 1.0]
    folds = []
    for fold in range(5):
        test = [e for i, e in enumerate(phrases) if (i // 2) % 5 == fold]
        train = [e for i, e in enumerate(phrases) if (i // 2) % 5 != fold]
        m = CategoryClassifier.train(train + others, rules)
        folds.append((test, m, m.predict_many([e.text for e in test])))
    full = CategoryClassifier.train(shipped, rules)
    real_probs = full.predict_many(texts)
    out = []
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        tuned = rules.taxonomy.model_copy(update={"rule_weight": w})
        r = dataclasses.replace(rules, taxonomy=tuned)
        ok = n = 0
        for test, m, probs in folds:
            for e, p in zip(test, probs, strict=True):
                ok += choose_category(e.text, r, m, homophones=False,
                                      model_probs=p).category.code == e.leaf
                n += 1
        real = [choose_category(t, r, full, homophones=False, model_probs=p).category.path[0]
                for t, p in zip(texts, real_probs, strict=True)]
        row = {"rule_weight": w, "cv_leaf": round(ok / n, 3),
               "real_level1": round(sum(a == b for a, b in zip(real, gold, strict=True))
                                    / len(gold), 3)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", action="store_true", help="model alternatives")
    parser.add_argument("--timing-limit", type=int, default=2000,
                        help="messages for the timing run")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    from pipeline.tickets import load_rules
    from pipeline.tickets.classifier import CategoryClassifier, ensure_default_classifier

    rules = load_rules()
    labelled = _rows("labelled_l1.jsonl")
    texts, gold = [_text(r) for r in labelled], [r["label_l1"] for r in labelled]
    results: dict[str, Any] = {}
    if args.compare:
        results["compare"] = compare(rules, texts, gold)
        results["rule_weight"] = rule_weights(rules, texts, gold)
        (OUT / "tickets_compare.json").write_text(json.dumps(results, ensure_ascii=False,
                                                             indent=2), encoding="utf-8")
        return

    models_dir = OUT / "models"
    t0 = time.perf_counter()
    shipped = CategoryClassifier.load(ensure_default_classifier(models_dir, force=True))
    results["shipped_train_seconds"] = round(time.perf_counter() - t0, 1)
    results["shipped"] = evaluate(shipped, rules, texts, gold)
    print_report("shipped classifier (model alone)", results["shipped"]["model"])
    print_report("shipped classifier + keywords (the ticket's category)",
                 results["shipped"]["combined"])

    unlabelled = _rows("unlabelled_messages.jsonl")
    t0 = time.perf_counter()
    trained = CategoryClassifier.load(train_with_cli(unlabelled, models_dir))
    results["trained_train_seconds"] = round(time.perf_counter() - t0, 1)
    results["trained"] = evaluate(trained, rules, texts, gold)
    print_report("trained on unlabelled_messages' noisy labels (model alone)",
                 results["trained"]["model"])
    print_report("trained + keywords", results["trained"]["combined"])

    # the ticket builder as the product runs it, with the shipped classifier
    os.environ["MINYIN_MODELS_DIR"] = str(models_dir)
    from pipeline.config import get_settings

    get_settings.cache_clear()
    hotspot = SHARED / "hotspot_messages.jsonl"
    timing_rows = _rows(hotspot.name) if hotspot.is_file() else unlabelled
    results["timing"] = timing(timing_rows, args.timing_limit)
    t = results["timing"]
    print(f"\nticket building ({t['tickets']} typed messages, mean {t['mean_chars']} chars): "
          f"median {t['median_ms']} ms, p95 {t['p95_ms']} ms, max {t['max_ms']} ms")

    print("\n| classifier | level-1 accuracy (model) | + keywords (ticket) | target |")
    print("| --- | --- | --- | --- |")
    for key, target in (("shipped", 0.80), ("trained", 0.85)):
        r = results[key]
        print(f"| {key} | {r['model']['accuracy']:.3f} | {r['combined']['accuracy']:.3f} "
              f"| {target:.2f} |")
    (OUT / "tickets.json").write_text(json.dumps(results, ensure_ascii=False, indent=2),
                                      encoding="utf-8")


if __name__ == "__main__":
    main()
