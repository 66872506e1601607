"""`minyin clusters FILE.jsonl`: typed messages in, one JSON line per 一类事 out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def clusters_command(
    file: Annotated[Path, typer.Argument(help="JSONL: {id, title, text} + time, phone, "
                                              "user, address, likes", exists=True,
                                         dir_okay=False)],
    repeats: Annotated[bool, typer.Option(
        "--repeats", help="also print one line per 重复件 (type: repeat)")] = False,
) -> None:
    """Build each message into a ticket and print its 一类事 clusters, hottest first:
    cluster_id, members (the input ids), category, place, heat, description."""
    from pipeline.clusters import analyse, build_items, cluster_line, read_records
    from pipeline.tickets import load_rules

    rules = load_rules()
    try:
        items = [item for item, _ in build_items(read_records(file), rules)]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    clusters, found = analyse(items, rules.rules.repeats)
    out = sys.stdout
    for cluster in clusters:
        out.write(json.dumps(cluster_line(cluster), ensure_ascii=False) + "\n")
    if repeats:
        for rid, rep in sorted(found.items()):
            out.write(json.dumps({"type": "repeat", "id": rid, "duplicate_of": rep.first,
                                  "repeat_count": rep.n}, ensure_ascii=False) + "\n")
