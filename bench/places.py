"""Place parsing against a gold file: per-field exact match, empty locations, time.

    .venv/bin/python bench/places.py tests/data/places_gold.jsonl --region 浙江省金华市浦江县

Each line is {"id", "text", "gold": {province, city, district, street, village, road,
landmark}} (null: not said). The text goes through `pipeline.tickets.parse_location`
as the ticket builder calls it, with MINYIN_REGION set to --region. Works on older
checkouts too (run it from their root), which is how the "before" figure is taken.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

FIELDS = ("province", "city", "district", "street", "village", "road", "landmark")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gold", type=Path)
    ap.add_argument("--region", default="", help="MINYIN_REGION for the run ('' = none)")
    ap.add_argument("--show", action="store_true", help="print every miss")
    args = ap.parse_args()
    os.environ["MINYIN_REGION"] = args.region
    sys.path.insert(0, os.getcwd())
    from pipeline.tickets import TicketContext, load_rules, parse_location

    rules = load_rules()
    ctx = TicketContext(audio_sha256=hashlib.sha256(b"bench").hexdigest())
    rows = []
    for n, line in enumerate(args.gold.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{args.gold}:{n}: {e}") from e
    for warm in (rows[0]["text"], "导致万家丽路口"):  # region data, jionlp tables, jieba
        parse_location(warm, ctx, rules)
    exact = dict.fromkeys(FIELDS, 0)
    said = dict.fromkeys(FIELDS, 0)
    said_right = dict.fromkeys(FIELDS, 0)  # right where the gold names something
    empty = all_right = 0
    t0 = time.perf_counter()
    for row in rows:
        loc = parse_location(row["text"], ctx, rules)[0]
        got = {f: getattr(loc, f, None) for f in FIELDS}
        empty += loc.is_empty
        ok = True
        for f in FIELDS:
            said[f] += row["gold"].get(f) is not None
            if got[f] == row["gold"].get(f):
                exact[f] += 1
                said_right[f] += row["gold"].get(f) is not None
            else:
                ok = False
                if args.show:
                    want = row["gold"].get(f)
                    print(f"{row['id']} {f}: got {got[f]!r} want {want!r}  {row['text']}")
        all_right += ok
    ms = (time.perf_counter() - t0) * 1000 / len(rows)
    report = {
        "n": len(rows),
        "region": args.region or None,
        "exact": exact,
        "gold_non_null": said,
        "right_where_said": said_right,
        "all_fields_right": all_right,
        "location_empty": empty,
        "gold_empty": sum(all(v is None for v in r["gold"].values()) for r in rows),
        "ms_per_call": round(ms, 2),
    }
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
