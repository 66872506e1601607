"""`minyin clusters FILE.jsonl`: typed messages in, 一类事 clusters out.

Each line is a typed message (`{"id", "title", "text"}` plus optional `time`, `phone`,
`user`, `address`, `likes`); each is built into a ticket by the same builder as
`POST /v1/messages` (`pipeline.messages.ticket_from_message`), then the 重复件 and
一类事 logic of `pipeline.tickets.repeats` runs over all of them. Members are the
input ids; the output is the same for any input order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.messages import TypedMessage, ticket_from_message
from pipeline.ticket_schema import Ticket
from pipeline.tickets.repeats import (
    Cluster,
    Repeat,
    RepeatItem,
    RepeatRules,
    caller_key,
    find_clusters,
    find_repeats,
    item_from_ticket,
)
from pipeline.tickets.rules import TicketRules, load_rules

# the platforms' naive times are China time
CHINA = timezone(timedelta(hours=8))
_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class MessageRecord:
    id: str
    message: TypedMessage
    time: datetime | None
    caller: str | None
    likes: int = 0
    line: int = 0


def parse_time(value: Any, where: str) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: time: expected an ISO date-time string")
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{where}: time: not an ISO date-time: {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=CHINA)


def record_from_dict(data: Any, where: str) -> MessageRecord:
    """One input line; errors name `where` (file:line) and the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object")
    ident = data.get("id")
    if not isinstance(ident, (str, int)) or str(ident).strip() == "":
        raise ValueError(f"{where}: id: required (a string or number)")
    when = parse_time(data.get("time"), where)
    likes = data.get("likes") or 0
    if not isinstance(likes, int) or likes < 0:
        raise ValueError(f"{where}: likes: expected a non-negative integer")
    phone, user = data.get("phone"), data.get("user")
    try:
        message = TypedMessage(
            title=data.get("title") or "", text=data.get("text") or "",
            phone=str(phone) if phone is not None else None,
            address=data.get("address"),
            user=str(user) if user is not None else None,
            submitted_at=when,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "message"
        raise ValueError(f"{where}: {field}: {first['msg']}") from None
    return MessageRecord(id=str(ident), message=message, time=when,
                         caller=caller_key(message.phone, message.user), likes=likes)


def read_records(path: str | Path) -> Iterator[MessageRecord]:
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON: {exc.msg}") from None
            yield record_from_dict(data, where)


def build_items(records: Iterable[MessageRecord], rules: TicketRules | None = None
                ) -> list[tuple[RepeatItem, Ticket]]:
    """Each record built into a ticket, and the ticket as the matcher sees it (its
    id is the input id). A record without a time sorts first."""
    rules = rules or load_rules()
    repeat_rules = rules.rules.repeats
    out = []
    seen: set[str] = set()
    for rec in records:
        if rec.id in seen:
            raise ValueError(f"id {rec.id!r} appears twice")
        seen.add(rec.id)
        ticket = ticket_from_message(rec.message, rules=rules, now=rec.time or _EPOCH)
        item = item_from_ticket(ticket, repeat_rules, caller=rec.caller,
                                likes=rec.likes, time=rec.time or _EPOCH)
        out.append((_renamed(item, rec.id), ticket))
    return out


def _renamed(item: RepeatItem, ident: str) -> RepeatItem:
    from dataclasses import replace

    return replace(item, id=ident)


def analyse(items: Iterable[RepeatItem], rules: RepeatRules, *,
            as_of: datetime | None = None) -> tuple[list[Cluster], dict[str, Repeat]]:
    """(clusters hottest first, repeat id -> its first) over the items."""
    items = list(items)
    return find_clusters(items, rules, as_of=as_of), find_repeats(items, rules)


def cluster_line(cluster: Cluster) -> dict[str, Any]:
    """One output line of `minyin clusters`."""
    return {
        "cluster_id": cluster.id,
        "members": cluster.members,
        "category": cluster.category,
        "label": cluster.label,
        "place": {"county": cluster.county, "town": cluster.town, "village": cluster.village},
        "callers": cluster.callers,
        "repeats": cluster.repeats,
        "heat": cluster.heat,
        "description": cluster.description,
    }


# --------------------------------------------------------------------------------------
# Scores against a gold fixture (tests/data/gold_tickets.jsonl, bench/clusters.py)
# --------------------------------------------------------------------------------------


def repeat_groups(repeats: dict[str, Repeat] | dict[str, str]) -> list[set[str]]:
    """Each first ticket with its repeats."""
    groups: dict[str, set[str]] = {}
    for rid, first in repeats.items():
        head = first.first if isinstance(first, Repeat) else first
        groups.setdefault(head, {head}).add(rid)
    return list(groups.values())


def _pairs(groups: Iterable[set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for g in groups for a in g for b in g if a < b}


def pairwise_scores(predicted: Iterable[set[str]], gold: Iterable[set[str]]
                    ) -> tuple[float, float]:
    """(precision, recall) over pairs of tickets put in one group."""
    p, g = _pairs(predicted), _pairs(gold)
    precision = len(p & g) / len(p) if p else 1.0
    recall = len(p & g) / len(g) if g else 1.0
    return precision, recall


def bcubed(predicted: Iterable[Iterable[str]], gold: Iterable[Iterable[str]]
           ) -> tuple[float, float, float]:
    """B-cubed (precision, recall, F1) over every ticket in a predicted or a gold
    cluster; a ticket outside one side's clusters is a singleton there."""
    pred = {t: i for i, c in enumerate(predicted) for t in c}
    true = {t: i for i, c in enumerate(gold) for t in c}
    items = sorted(set(pred) | set(true))
    if not items:
        return 1.0, 1.0, 1.0

    def members(assign: dict[str, int], t: str) -> set[str]:
        return {u for u in items if u in assign and assign[u] == assign[t]} if t in assign \
            else {t}

    by_pred = {t: members(pred, t) for t in items}
    by_true = {t: members(true, t) for t in items}
    precision = sum(len(by_pred[t] & by_true[t]) / len(by_pred[t]) for t in items) / len(items)
    recall = sum(len(by_pred[t] & by_true[t]) / len(by_true[t]) for t in items) / len(items)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
