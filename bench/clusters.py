"""Bench: `minyin clusters` over the contest's hotspot messages, and clustering 10,000
tickets.

    python -m bench.clusters

1. ../shared/text/teddy2020c/hotspot_messages.jsonl (4,326 real messages; skipped with
   a reason if absent): build time, clustering time, the top 10 clusters.
2. The gold fixture's tickets, each replicated with shifted time, caller and id up to
   10,000: clustering + repeat matching time (the built items are reused, so this
   times pipeline.tickets.repeats alone).
Writes bench/out/clusters_hotspot.jsonl and bench/out/clusters_bench.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from pipeline.clusters import analyse, build_items, cluster_line, record_from_dict
from pipeline.messages import MAX_TEXT_CHARS
from pipeline.tickets import load_rules

ROOT = Path(__file__).resolve().parent.parent
HOTSPOT = ROOT.parent / "shared" / "text" / "teddy2020c" / "hotspot_messages.jsonl"
GOLD = ROOT / "tests" / "data" / "gold_tickets.jsonl"
OUT = ROOT / "bench" / "out"


def hotspot(rules) -> dict:
    if not HOTSPOT.is_file():
        print(f"skip: {HOTSPOT} is not here (shared/ sits beside the repository)")
        return {"skipped": str(HOTSPOT)}
    records = []
    for n, line in enumerate(HOTSPOT.read_text(encoding="utf-8").splitlines(), 1):
        data = json.loads(line)
        data["text"] = (data.get("text") or data.get("title") or "")[:MAX_TEXT_CHARS]
        records.append(record_from_dict(data, f"{HOTSPOT}:{n}"))
    t0 = time.perf_counter()
    items = [item for item, _ in build_items(records, rules)]
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    clusters, repeats = analyse(items, rules.rules.repeats)
    clustered = time.perf_counter() - t0
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "clusters_hotspot.jsonl").open("w", encoding="utf-8") as fh:
        for c in clusters:
            fh.write(json.dumps(cluster_line(c), ensure_ascii=False) + "\n")
    print(f"hotspot: {len(items)} messages, build {built:.1f} s, cluster {clustered:.2f} s, "
          f"{len(clusters)} clusters, {len(repeats)} repeats")
    top = sorted(clusters, key=lambda c: (-c.size, c.id))[:10]
    for c in top:
        print(f"  size {c.size:3d}  heat {c.heat:7.3f}  {c.description}")
    return {"messages": len(items), "build_s": round(built, 2),
            "cluster_s": round(clustered, 3), "clusters": len(clusters),
            "repeats": len(repeats),
            "top10_by_size": [{"size": c.size, "heat": c.heat,
                               "description": c.description} for c in top]}


def ten_thousand(rules, n: int = 10_000) -> dict:
    records = [record_from_dict({k: v for k, v in json.loads(line).items() if k != "gold"},
                                f"{GOLD}:{i}")
               for i, line in enumerate(GOLD.read_text(encoding="utf-8").splitlines(), 1)]
    base = [item for item, _ in build_items(records, rules)]
    items = []
    k = 0
    while len(items) < n:
        for item in base:
            if len(items) >= n:
                break
            # each copy another month and other callers: new matters, same shapes
            items.append(replace(item, id=f"{item.id}-{k}", time=item.time + timedelta(days=45 * k),
                                 caller=f"{item.caller}-{k}" if item.caller else None))
        k += 1
    t0 = time.perf_counter()
    clusters, repeats = analyse(items, rules.rules.repeats)
    took = time.perf_counter() - t0
    print(f"{len(items)} tickets: clusters + repeats in {took:.2f} s "
          f"({len(clusters)} clusters, {len(repeats)} repeats)")
    return {"tickets": len(items), "seconds": round(took, 3), "clusters": len(clusters),
            "repeats": len(repeats)}


def main() -> None:
    rules = load_rules()
    result = {"hotspot": hotspot(rules), "ten_thousand": ten_thousand(rules)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "clusters_bench.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
