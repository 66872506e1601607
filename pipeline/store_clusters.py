"""The store's side of 重复件 and 一类事: tables, the live-path hook, and what the review
page calls (list, read, merge, split, link, unlink), each change kept in the history.

Live path (`Store.finish_job`, `Store.save_message_ticket`), inside the ticket's own
transaction and after the job's UPDATE took the write lock:

    ticket, event = before_save(s, ticket, caller=..., now=now)   # duplicate_of, cluster_id
    ... the ticket row is added and flushed ...
    after_save(s, ticket, now=now)           # matter row, first ticket, cluster, events

A repeat's event is ``ticket.repeated`` (its document carries ``duplicate_of``) instead
of ``ticket.created``: the complaint system updates the first ticket, it does not
dispatch a new one. The first ticket's document gets the new ``repeat_count`` (a
revision, no event). A cluster that forms or grows gets a ``cluster.updated`` event
(ticket_id: the cluster's anchor, its earliest member at forming; revision: the
cluster's version, so each change has its own event id). ``cluster_id`` is set on the
new ticket at build time and on earlier members by a revision of their document.
PostgreSQL: an advisory lock per caller and per area serialises concurrent workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from pipeline.store import (
    WAITING_STATUSES,
    Base,
    OutboxEvent,
    Store,
    TicketRow,
    _check_page,
    utcnow,
)
from pipeline.ticket_schema import Ticket
from pipeline.tickets.repeats import (
    RepeatItem,
    RepeatRules,
    _area,
    cluster_id_for,
    find_first,
    group_candidates,
    item_from_ticket,
    make_cluster,
    matter_key,
)

EVENT_TICKET_REPEATED = "ticket.repeated"
EVENT_CLUSTER_UPDATED = "cluster.updated"
CLUSTER_STATUSES = ("active", "merged", "dissolved")
PIPELINE = "pipeline"


class ClusterRow(Base):
    __tablename__ = "clusters"
    __table_args__ = (Index("ix_clusters_list", "status", "heat"),
                      Index("ix_clusters_place", "town", "category"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    anchor_ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(200))
    object: Mapped[str | None] = mapped_column(String(64))
    county: Mapped[str | None] = mapped_column(String(64))
    town: Mapped[str | None] = mapped_column(String(64))
    village: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    callers: Mapped[int] = mapped_column(Integer)
    repeats: Mapped[int] = mapped_column(Integer)
    urgent: Mapped[int] = mapped_column(Integer)
    heat: Mapped[float] = mapped_column(Float)
    description: Mapped[str] = mapped_column(Text)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    version: Mapped[int] = mapped_column(Integer, default=0)
    merged_into: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.id, "status": self.status, "category": self.category,
            "label": self.label, "object": self.object,
            "place": {"county": self.county, "town": self.town, "village": self.village},
            "size": self.size, "callers": self.callers, "repeats": self.repeats,
            "urgent": self.urgent, "heat": self.heat, "description": self.description,
            "first_at": self.first_at.isoformat(), "last_at": self.last_at.isoformat(),
            "version": self.version, "merged_into": self.merged_into,
        }


class TicketMatter(Base):
    """A ticket as the matcher sees it (what `RepeatItem` holds), kept for later tickets."""

    __tablename__ = "ticket_matters"
    __table_args__ = (Index("ix_ticket_matters_caller", "caller", "at"),
                      Index("ix_ticket_matters_block", "area", "matter", "at"),
                      Index("ix_ticket_matters_cluster", "cluster_id"),
                      Index("ix_ticket_matters_first", "duplicate_of"))

    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"),
                                           primary_key=True)
    caller: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime]
    category: Mapped[str] = mapped_column(String(64))
    county: Mapped[str | None] = mapped_column(String(64))
    town: Mapped[str | None] = mapped_column(String(64))
    village: Mapped[str | None] = mapped_column(String(64))
    road: Mapped[str | None] = mapped_column(String(100))
    landmark: Mapped[str | None] = mapped_column(String(100))
    objects: Mapped[list[Any]] = mapped_column(JSON, default=list)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    urgent: Mapped[bool] = mapped_column(Boolean)
    area: Mapped[str | None] = mapped_column(String(200))
    matter: Mapped[str | None] = mapped_column(String(100))
    duplicate_of: Mapped[str | None] = mapped_column(String(32))
    repeat_count: Mapped[int] = mapped_column(Integer, default=0)
    cluster_id: Mapped[str | None] = mapped_column(ForeignKey("clusters.id"))
    # staff put it in or took it out of a cluster: the pipeline leaves it alone
    cluster_pinned: Mapped[bool] = mapped_column(Boolean, default=False)

    def item(self, *, is_open: bool = False) -> RepeatItem:
        return RepeatItem(id=self.ticket_id, time=self.at, caller=self.caller,
                          category=self.category, county=self.county, town=self.town,
                          village=self.village, road=self.road, landmark=self.landmark,
                          objects=frozenset(self.objects or ()), text=self.text,
                          label=self.label, urgent=self.urgent, open=is_open)


class RepeatHistory(Base):
    """One change of a duplicate link or a cluster: who, when, what."""

    __tablename__ = "repeat_history"
    __table_args__ = (Index("ix_repeat_history_cluster", "cluster_id", "id"),
                      Index("ix_repeat_history_ticket", "ticket_id", "id"))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    # duplicate.link / duplicate.unlink / cluster.form / cluster.grow / cluster.merge /
    # cluster.split / cluster.leave (one per ticket a split took out: its own page shows it)
    action: Mapped[str] = mapped_column(String(32))
    author: Mapped[str] = mapped_column(String(200))
    cluster_id: Mapped[str | None] = mapped_column(String(64))
    ticket_id: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def _rules() -> RepeatRules:
    from pipeline.tickets.rules import load_rules

    return load_rules().rules.repeats


def _area_key(item: RepeatItem, rules: RepeatRules) -> str | None:
    area = _area(item, rules)
    return "|".join(area) if area else None


def _lock(s: Session, key: str) -> None:
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"repeats:{key}"))))


def _set_document(s: Session, ticket_id: str, now: datetime, **fields: Any) -> None:
    """A pipeline revision of a stored ticket's document (the version counter bumps)."""
    row = s.get(TicketRow, ticket_id)
    if row is None:
        return
    doc = dict(row.document)
    if all(doc.get(k) == v for k, v in fields.items()):
        return
    doc.update(fields)
    row.document = doc
    row.updated_at = now


# --------------------------------------------------------------------------------------
# The live path
# --------------------------------------------------------------------------------------


@dataclass
class Prepared:
    ticket: Ticket
    event_type: str  # ticket.created or ticket.repeated
    item: RepeatItem
    rules: RepeatRules


def before_save(s: Session, ticket: Ticket, *, caller: str | None = None,
                rules: RepeatRules | None = None) -> Prepared:
    """The ticket with `duplicate_of` / `repeat_count` / `cluster_id` as the store's
    earlier tickets decide, and the event type its ticket row gets."""
    rules = rules or _rules()
    item = item_from_ticket(ticket, rules, caller=caller)
    if item.caller:
        _lock(s, item.caller)
    area = _area_key(item, rules)
    if area:
        _lock(s, area)
    update: dict[str, Any] = {}
    event = "ticket.created"
    if item.caller:
        rows = s.execute(
            select(TicketMatter, TicketRow.status)
            .join(TicketRow, TicketRow.id == TicketMatter.ticket_id)
            .where(TicketMatter.caller == item.caller, TicketMatter.duplicate_of.is_(None),
                   TicketMatter.ticket_id != ticket.id)).all()
        earlier = [m.item(is_open=status in WAITING_STATUSES) for m, status in rows]
        first = find_first(item, earlier, rules)
        if first is not None:
            n = (s.scalar(select(func.count()).select_from(TicketMatter)
                          .where(TicketMatter.duplicate_of == first.id)) or 0) + 1
            update.update(duplicate_of=first.id, repeat_count=n)
            event = EVENT_TICKET_REPEATED
    cluster = _cluster_for(s, item, rules)
    if cluster is not None:
        update["cluster_id"] = cluster
    if update:
        ticket = ticket.model_copy(update=update)
    return Prepared(ticket=ticket, event_type=event, item=item, rules=rules)


def _block(s: Session, item: RepeatItem, rules: RepeatRules) -> list[TicketMatter]:
    area, matter = _area_key(item, rules), matter_key(item, rules)
    if area is None or matter is None:
        return []
    window = timedelta(days=rules.cluster_window_days)
    # the whole county's tickets of this matter: group_candidates joins areas whose names
    # hold one another and villages to their towns, as `minyin clusters` does
    return list(s.scalars(select(TicketMatter).where(
        TicketMatter.area.startswith(f"{item.county or ''}|", autoescape=True),
        TicketMatter.matter == matter,
        TicketMatter.at >= item.time - window * 2, TicketMatter.at <= item.time + window)))


def _group_of(s: Session, item: RepeatItem, rules: RepeatRules
              ) -> tuple[list[RepeatItem], dict[str, TicketMatter]]:
    rows = {m.ticket_id: m for m in _block(s, item, rules) if m.ticket_id != item.id}
    items = [m.item() for m in rows.values()
             if not (m.cluster_pinned and m.cluster_id is None)] + [item]
    for group in group_candidates(items, rules):
        if any(g.id == item.id for g in group):
            return group, rows
    return [item], rows


def _cluster_for(s: Session, item: RepeatItem, rules: RepeatRules) -> str | None:
    group, rows = _group_of(s, item, rules)
    callers = {g.caller or f"anon:{g.id}" for g in group}
    if len(callers) < rules.cluster_min_callers:
        return None
    existing = Counter(rows[g.id].cluster_id for g in group
                       if g.id in rows and rows[g.id].cluster_id)
    if existing:
        return min(existing, key=lambda c: (-existing[c], c))
    return cluster_id_for(group[0].id)


def after_save(s: Session, prepared: Prepared, *, now: datetime) -> None:
    """The matter row, the first ticket's repeat count, and the cluster (rows, member
    documents, history, cluster.updated), once the ticket row is flushed."""
    ticket, item, rules = prepared.ticket, prepared.item, prepared.rules
    s.add(TicketMatter(
        ticket_id=ticket.id, caller=item.caller, at=item.time, category=item.category,
        county=item.county, town=item.town, village=item.village, road=item.road,
        landmark=item.landmark, objects=sorted(item.objects), text=item.text,
        label=item.label, urgent=item.urgent, area=_area_key(item, rules),
        matter=matter_key(item, rules), duplicate_of=ticket.duplicate_of,
        repeat_count=ticket.repeat_count, cluster_id=None, cluster_pinned=False))
    s.flush()
    if ticket.duplicate_of:
        first = s.get(TicketMatter, ticket.duplicate_of)
        if first is not None:
            first.repeat_count = ticket.repeat_count
        _set_document(s, ticket.duplicate_of, now, repeat_count=ticket.repeat_count)
        _history(s, "duplicate.link", PIPELINE, now, ticket_id=ticket.id,
                 detail={"first": ticket.duplicate_of, "repeat_count": ticket.repeat_count})
    if ticket.cluster_id:
        group, _ = _group_of(s, item, rules)
        members = [g.id for g in group]
        _assign(s, ticket.cluster_id, members, now, author=PIPELINE, anchor=group[0].id)


def _assign(s: Session, cluster_id: str, ticket_ids: list[str], now: datetime, *,
            author: str, anchor: str, pinned: bool = False, action: str | None = None,
            first_version: int = 0) -> None:
    """Put tickets in a cluster (creating it, its versions counted from `first_version`),
    recount it, and publish the change."""
    cluster = s.get(ClusterRow, cluster_id)
    added = []
    for tid in ticket_ids:
        m = s.get(TicketMatter, tid)
        if m is None or m.cluster_id == cluster_id:
            continue
        if m.cluster_pinned and not pinned:
            continue
        if cluster is None:
            cluster = ClusterRow(id=cluster_id, status="active", anchor_ticket_id=anchor,
                                 category="", label="", size=0, callers=0, repeats=0,
                                 urgent=0, heat=0.0, description="", first_at=m.at,
                                 last_at=m.at, version=first_version, created_at=now,
                                 updated_at=now)
            s.add(cluster)
            s.flush()
        m.cluster_id, m.cluster_pinned = cluster_id, m.cluster_pinned or pinned
        _set_document(s, tid, now, cluster_id=cluster_id)
        added.append(tid)
    if cluster is None or not added:
        return
    s.flush()
    act = action or ("cluster.form" if cluster.version == 0 else "cluster.grow")
    _recount(s, cluster, now)
    _history(s, act, author, now, cluster_id=cluster_id, detail={"added": added})


def _recount(s: Session, cluster: ClusterRow, now: datetime) -> None:
    """Counts, heat and description from the members as they are; version + 1 and a
    cluster.updated event (no members left: dissolved)."""
    members = list(s.scalars(select(TicketMatter).where(TicketMatter.cluster_id == cluster.id)))
    if members:
        c = make_cluster([m.item() for m in members], _rules(), as_of=max(m.at for m in members),
                         cluster_id=cluster.id)
        cluster.category, cluster.label, cluster.object = c.category, c.label, c.object
        cluster.county, cluster.town, cluster.village = c.county, c.town, c.village
        cluster.size, cluster.callers, cluster.repeats = c.size, c.callers, c.repeats
        cluster.urgent, cluster.heat, cluster.description = c.urgent, c.heat, c.description
        cluster.first_at, cluster.last_at = c.first_at, c.last_at
    elif cluster.status == "active":
        cluster.status, cluster.size, cluster.callers = "dissolved", 0, 0
    cluster.version += 1
    cluster.updated_at = now
    s.flush()
    anchor = s.get(TicketRow, cluster.anchor_ticket_id)
    if anchor is None:
        return
    doc = cluster.as_dict()
    doc["members"] = sorted(m.ticket_id for m in members)
    s.add(OutboxEvent(ticket_id=cluster.anchor_ticket_id, revision=cluster.version,
                      event_type=EVENT_CLUSTER_UPDATED,
                      payload={"ticket": anchor.document, "cluster": doc},
                      created_at=now, next_attempt_at=now, attempts=0))


def _history(s: Session, action: str, author: str, now: datetime, *,
             cluster_id: str | None = None, ticket_id: str | None = None,
             detail: dict[str, Any] | None = None) -> None:
    s.add(RepeatHistory(action=action, author=author, cluster_id=cluster_id,
                        ticket_id=ticket_id, detail=detail or {}, created_at=now))


# --------------------------------------------------------------------------------------
# What the review page and the API read and change
# --------------------------------------------------------------------------------------


class RepeatEditError(ValueError):
    """A staff change the store refuses: `field` names what is wrong; `conflict` says the
    current state forbids it (HTTP 409) rather than the request itself (422)."""

    def __init__(self, message: str, *, field: str, conflict: bool = True) -> None:
        super().__init__(message)
        self.field, self.conflict = field, conflict


@dataclass
class ClusterPage:
    items: list[ClusterRow]
    total: int
    limit: int
    offset: int


@dataclass
class ClusterDetail:
    cluster: ClusterRow
    members: list[TicketMatter]
    history: list[RepeatHistory]


def list_clusters(store: Store, *, status: str | None = "active", category: str | None = None,
                  town: str | None = None, min_size: int = 1, limit: int = 50,
                  offset: int = 0) -> ClusterPage:
    """Clusters hottest first (id breaks ties)."""
    _check_page(limit, offset)
    if status is not None and status not in CLUSTER_STATUSES:
        raise ValueError(f"status must be one of {CLUSTER_STATUSES}")
    conditions: list[Any] = [ClusterRow.size >= min_size]
    if status is not None:
        conditions.append(ClusterRow.status == status)
    if category is not None:
        conditions.append(ClusterRow.category == category)
    if town is not None:
        conditions.append(ClusterRow.town == town)
    with store.session() as s:
        total = s.scalar(select(func.count()).select_from(ClusterRow).where(*conditions))
        items = list(s.scalars(select(ClusterRow).where(*conditions)
                               .order_by(ClusterRow.heat.desc(), ClusterRow.id)
                               .limit(limit).offset(offset)))
    return ClusterPage(items=items, total=int(total or 0), limit=limit, offset=offset)


def get_cluster(store: Store, cluster_id: str) -> ClusterDetail | None:
    with store.session() as s:
        cluster = s.get(ClusterRow, cluster_id)
        if cluster is None:
            return None
        members = list(s.scalars(select(TicketMatter).where(TicketMatter.cluster_id == cluster_id)
                                 .order_by(TicketMatter.at, TicketMatter.ticket_id)))
        history = list(s.scalars(select(RepeatHistory)
                                 .where(RepeatHistory.cluster_id == cluster_id)
                                 .order_by(RepeatHistory.id)))
    return ClusterDetail(cluster, members, history)


def ticket_repeats(store: Store, ticket_id: str) -> tuple[TicketMatter | None, list[str]]:
    """A ticket's matter row and the ids of its repeats (for the review page)."""
    with store.session() as s:
        row = s.get(TicketMatter, ticket_id)
        repeats = list(s.scalars(select(TicketMatter.ticket_id)
                                 .where(TicketMatter.duplicate_of == ticket_id)
                                 .order_by(TicketMatter.at)))
    return row, repeats


def merge_clusters(store: Store, target: str, sources: list[str], *, author: str,
                   now: datetime | None = None) -> None:
    """Staff: the sources' members join `target`; the sources are kept as 'merged'."""
    now = now or utcnow()
    with store.session() as s:
        into = s.get(ClusterRow, target)
        if into is None:
            raise LookupError(f"no cluster {target}")
        if into.status != "active":
            raise RepeatEditError(f"cluster {target} is {into.status}"
                                  + (f" into {into.merged_into}" if into.merged_into else ""),
                                  field="cluster_id")
        for n, source in enumerate(sources):
            if source == target:
                continue
            src = s.get(ClusterRow, source)
            if src is None:
                raise LookupError(f"no cluster {source}")
            if src.status != "active":
                raise RepeatEditError(f"cluster {source} is {src.status}", field=f"clusters.{n}")
            ids = list(s.scalars(select(TicketMatter.ticket_id)
                                 .where(TicketMatter.cluster_id == source)))
            _assign(s, target, ids, now, author=author, anchor=into.anchor_ticket_id,
                    pinned=True, action="cluster.merge")
            src.status, src.merged_into = "merged", target
            _recount(s, src, now)
            _history(s, "cluster.merge", author, now, cluster_id=source,
                     detail={"into": target, "tickets": ids})


def split_cluster(store: Store, cluster_id: str, ticket_ids: list[str], *, author: str,
                  now: datetime | None = None, form_new: bool = True) -> str | None:
    """Staff: take these tickets out of the cluster. Three callers or more among them
    make a new cluster (its id from its earliest member, returned) unless `form_new` is
    false; fewer stay out. Either way they are pinned: the pipeline does not put them
    back."""
    now = now or utcnow()
    with store.session() as s:
        cluster = s.get(ClusterRow, cluster_id)
        if cluster is None:
            raise LookupError(f"no cluster {cluster_id}")
        moved = [s.get(TicketMatter, t) for t in ticket_ids]
        for n, m in enumerate(moved):
            if m is None:
                raise LookupError(f"no ticket {ticket_ids[n]}")
            if m.cluster_id != cluster_id:
                raise RepeatEditError(f"every ticket must be a member of {cluster_id}; "
                                      f"{ticket_ids[n]} is not", field=f"tickets.{n}")
        for m in moved:
            assert m is not None
            m.cluster_id, m.cluster_pinned = None, True
            _set_document(s, m.ticket_id, now, cluster_id=None)
        s.flush()
        _recount(s, cluster, now)
        _history(s, "cluster.split", author, now, cluster_id=cluster_id,
                 detail={"tickets": sorted(ticket_ids)})
        items = sorted((m.item() for m in moved if m is not None), key=lambda i: i.order)
        new_id: str | None = None
        if form_new and len({i.caller or i.id for i in items}) >= _rules().cluster_min_callers:
            # the earliest member's id may name a cluster already (the one being split,
            # or one merged or dissolved earlier): a new cluster gets a new id
            base = new_id = cluster_id_for(items[0].id)
            n = 2
            while s.get(ClusterRow, new_id) is not None:
                new_id, n = f"{base}-{n}", n + 1
            # its events go out under the same anchor ticket: their revisions go on from
            # those of the anchor's earlier cluster (the outbox key is ticket, revision, type)
            last = s.scalar(select(func.max(OutboxEvent.revision)).where(
                OutboxEvent.ticket_id == items[0].id,
                OutboxEvent.event_type == EVENT_CLUSTER_UPDATED)) or 0
            _assign(s, new_id, [i.id for i in items], now, author=author, anchor=items[0].id,
                    pinned=True, action="cluster.split", first_version=last)
        for i in items:
            _history(s, "cluster.leave", author, now, ticket_id=i.id,
                     detail={"from": cluster_id, "into": new_id})
        return new_id


def link_duplicate(store: Store, ticket_id: str, first_id: str, *, author: str,
                   now: datetime | None = None) -> int:
    """Staff: `ticket_id` repeats `first_id` (which must not be a repeat itself);
    returns its repeat number."""
    now = now or utcnow()
    with store.session() as s:
        m, first = s.get(TicketMatter, ticket_id), s.get(TicketMatter, first_id)
        if m is None or first is None:
            raise LookupError(f"no ticket {ticket_id if m is None else first_id}")
        if ticket_id == first_id:
            raise RepeatEditError("a ticket cannot repeat itself", field="first",
                                  conflict=False)
        if first.duplicate_of:
            raise RepeatEditError(f"{first_id} is itself a repeat; link to its first ticket "
                                  f"{first.duplicate_of}", field="first")
        if m.duplicate_of == first_id:
            return m.repeat_count  # already so: a retried request changes nothing
        if m.duplicate_of:
            raise RepeatEditError(f"{ticket_id} already repeats {m.duplicate_of}; unmark it "
                                  "first", field="ticket_id")
        own = s.scalar(select(func.count()).select_from(TicketMatter)
                       .where(TicketMatter.duplicate_of == ticket_id)) or 0
        if own:
            raise RepeatEditError(f"{ticket_id} has {own} repeat(s) of its own; link those to "
                                  f"{first_id} first", field="ticket_id")
        n = (s.scalar(select(func.count()).select_from(TicketMatter)
                      .where(TicketMatter.duplicate_of == first_id)) or 0) + 1
        m.duplicate_of, m.repeat_count, first.repeat_count = first_id, n, n
        _set_document(s, ticket_id, now, duplicate_of=first_id, repeat_count=n)
        _set_document(s, first_id, now, repeat_count=n)
        _history(s, "duplicate.link", author, now, ticket_id=ticket_id,
                 detail={"first": first_id, "repeat_count": n})
        return n


def unlink_duplicate(store: Store, ticket_id: str, *, author: str,
                     now: datetime | None = None) -> None:
    """Staff: the ticket is not a repeat after all; the first's count goes down."""
    now = now or utcnow()
    with store.session() as s:
        m = s.get(TicketMatter, ticket_id)
        if m is None:
            raise LookupError(f"no ticket {ticket_id}")
        if m.duplicate_of is None:
            raise RepeatEditError(f"{ticket_id} is not a repeat", field="ticket_id")
        first_id = m.duplicate_of
        m.duplicate_of, m.repeat_count = None, 0
        _set_document(s, ticket_id, now, duplicate_of=None, repeat_count=0)
        s.flush()
        n = s.scalar(select(func.count()).select_from(TicketMatter)
                     .where(TicketMatter.duplicate_of == first_id)) or 0
        first = s.get(TicketMatter, first_id)
        if first is not None:
            first.repeat_count = n
        _set_document(s, first_id, now, repeat_count=n)
        _history(s, "duplicate.unlink", author, now, ticket_id=ticket_id,
                 detail={"first": first_id})


def ticket_history(store: Store, ticket_id: str) -> list[RepeatHistory]:
    with store.session() as s:
        return list(s.scalars(select(RepeatHistory).where(RepeatHistory.ticket_id == ticket_id)
                              .order_by(RepeatHistory.id)))


def _history_dict(h: RepeatHistory) -> dict[str, Any]:
    return {"id": h.id, "action": h.action, "author": h.author, "at": h.created_at.isoformat(),
            "ticket_id": h.ticket_id, "cluster_id": h.cluster_id, "detail": h.detail}


def repeat_panel(store: Store, ticket_id: str, *, member_limit: int = 200
                 ) -> dict[str, Any] | None:
    """What the review page shows beside a ticket, in one read: the first ticket it
    repeats, its own repeats, its cluster (counts, heat, description, members) and the
    history of all three. None for a ticket the matcher never saw (stored before it)."""
    with store.session() as s:
        m = s.get(TicketMatter, ticket_id)
        if m is None:
            return None
        repeats = list(s.scalars(select(TicketMatter).where(TicketMatter.duplicate_of == ticket_id)
                                 .order_by(TicketMatter.at, TicketMatter.ticket_id)))
        cluster = s.get(ClusterRow, m.cluster_id) if m.cluster_id else None
        members: list[TicketMatter] = []
        if cluster is not None:
            members = list(s.scalars(
                select(TicketMatter).where(TicketMatter.cluster_id == cluster.id)
                .order_by(TicketMatter.at, TicketMatter.ticket_id).limit(member_limit)))
        ids = {m.ticket_id, *(r.ticket_id for r in repeats), *(x.ticket_id for x in members)}
        if m.duplicate_of:
            ids.add(m.duplicate_of)
        rows = {r.id: r for r in s.scalars(select(TicketRow).where(TicketRow.id.in_(ids)))}

        def brief(tid: str, at: datetime | None = None) -> dict[str, Any]:
            row = rows.get(tid)
            doc = row.document if row is not None else {}
            return {"ticket_id": tid, "at": (at or (row.created_at if row else None)),
                    "summary": doc.get("summary"), "title": doc.get("title"),
                    "status": row.status if row is not None else None}

        # its own rows, the repeats' links and unlinks to it, and its cluster's rows
        who = [RepeatHistory.ticket_id == ticket_id,
               RepeatHistory.ticket_id.in_([r.ticket_id for r in repeats]),
               RepeatHistory.detail["first"].as_string() == ticket_id]
        if cluster is not None:
            who.append(RepeatHistory.cluster_id == cluster.id)
        history = list(s.scalars(select(RepeatHistory).where(or_(*who))
                                 .order_by(RepeatHistory.id.desc()).limit(200)))
        out: dict[str, Any] = {
            "duplicate_of": brief(m.duplicate_of) if m.duplicate_of else None,
            "repeat_count": m.repeat_count,
            "repeats": [brief(r.ticket_id, r.at) for r in repeats],
            "cluster": None,
            "cluster_pinned": m.cluster_pinned,
            "history": [_history_dict(h) for h in history],
        }
        if cluster is not None:
            doc = cluster.as_dict()
            doc["members"] = [{**brief(x.ticket_id, x.at), "duplicate_of": x.duplicate_of,
                               "pinned": x.cluster_pinned} for x in members]
            doc["members_shown"] = len(members)
            out["cluster"] = doc
    for item in (out["duplicate_of"], *out["repeats"],
                 *((out["cluster"] or {}).get("members") or ())):
        if item and isinstance(item.get("at"), datetime):
            item["at"] = item["at"].isoformat()
    return out
