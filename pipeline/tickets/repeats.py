"""Repeated complaints (重复件) and 一类事 clusters: pure logic, no store.

重复件: the same caller (normalised phone, or a typed message's user id) on the same
matter: the same leaf category (or a shared problem object), a compatible place and
similar words, within `duplicate_window_days` of the first ticket or while the first
is still open. The repeat points at the *first* ticket (never at another repeat).

一类事: tickets of at least `cluster_min_callers` distinct callers in one county and
area (the first of `cluster_areas` a ticket has: town, else village, landmark, road;
names that hold a shorter one are that one), about one matter (the one object a ticket
names, else its leaf category; an object's home category counts as the object), each
within `cluster_window_days` of the group's latest ticket. Blocking by (county, area,
matter) keeps it linear (10,000 tickets in well under a second) and never joins two
counties or two matters.

Determinism: everything is decided over the tickets sorted by (time, id), so any
input order gives the same clusters; a cluster's id comes from its earliest member.

Heat (documented in the README): callers + repeat_weight * repeats + urgent_weight *
urgent members + likes_weight * likes, times 0.5 ** (days since the latest member /
heat_half_life_days) as of `as_of` (default: the newest ticket given).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.ticket_schema import Ticket, normalise_phone
from pipeline.tickets.common import DATA_DIR


class ProblemObject(BaseModel):
    """A thing complaints are about (路灯), named by any of its terms."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    terms: list[str] = Field(min_length=1)
    # the leaf whose tickets are about this object even when they do not name it
    category: str | None = None


class RepeatRules(BaseModel):
    """The `repeats:` section of ticket_rules.yaml."""

    model_config = ConfigDict(extra="forbid")

    duplicate_window_days: float = Field(30, gt=0)
    duplicate_while_open: bool = True
    # overlap of the two texts' character bigrams (of the shorter text)
    duplicate_min_similarity: float = Field(0.2, ge=0, le=1)
    # neither ticket names a place: only near-identical words make a repeat
    duplicate_unplaced_similarity: float = Field(0.6, ge=0, le=1)
    cluster_window_days: float = Field(30, gt=0)
    cluster_min_callers: int = Field(3, ge=2)
    # where a cluster lives: the first of these place parts a ticket has
    cluster_areas: list[Literal["town", "village", "landmark", "road"]] = Field(
        default_factory=lambda: ["town", "village", "landmark", "road"], min_length=1)
    # catch-all categories never make a cluster by category alone
    cluster_exclude_categories: list[str] = Field(default_factory=lambda: ["other"])
    repeat_weight: float = Field(0.5, ge=0)
    urgent_weight: float = Field(1.0, ge=0)
    likes_weight: float = Field(0.1, ge=0)
    heat_half_life_days: float = Field(14, gt=0)
    objects: list[ProblemObject] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_objects(self) -> RepeatRules:
        names = [o.name for o in self.objects]
        if len(set(names)) != len(names):
            raise ValueError("repeats.objects: names must be unique")
        return self

    def home_objects(self) -> dict[str, str]:
        """Leaf category -> the object it is about (the first object naming it)."""
        out: dict[str, str] = {}
        for o in self.objects:
            if o.category:
                out.setdefault(o.category, o.name)
        return out

    def object_pattern(self) -> re.Pattern[str] | None:
        return _object_pattern(tuple((o.name, tuple(o.terms)) for o in self.objects))


def repeat_rules(path: str | Path | None = None) -> RepeatRules:
    """The `repeats:` section of a ticket_rules.yaml (default: the package's), alone:
    `load_rules().rules.repeats` is the same, with the rest of the rules."""
    path = Path(path) if path else DATA_DIR / "ticket_rules.yaml"
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    try:
        return RepeatRules.model_validate(data.get("repeats") or {})
    except ValidationError as exc:
        raise ValueError(f"{path}: repeats: {exc}") from exc


_ObjectSpec = tuple[tuple[str, tuple[str, ...]], ...]
_PATTERNS: dict[_ObjectSpec, tuple[re.Pattern[str], dict[str, str]]] = {}


def _object_pattern(spec: _ObjectSpec) -> re.Pattern[str] | None:
    if not spec:
        return None
    if spec not in _PATTERNS:
        by_term = {t: name for name, terms in spec for t in terms}
        # longest first, so 红绿灯 is taken whole before any shorter 灯 term can match
        alternatives = sorted(by_term, key=len, reverse=True)
        _PATTERNS[spec] = (re.compile("|".join(map(re.escape, alternatives))), by_term)
    return _PATTERNS[spec][0]


def find_objects(text: str, rules: RepeatRules) -> frozenset[str]:
    """The problem objects a text names (non-overlapping, longest term wins)."""
    pattern = rules.object_pattern()
    if pattern is None or not text:
        return frozenset()
    by_term = _PATTERNS[tuple((o.name, tuple(o.terms)) for o in rules.objects)][1]
    return frozenset(by_term[m.group(0)] for m in pattern.finditer(text))


# --------------------------------------------------------------------------------------
# What the matcher needs of a ticket
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepeatItem:
    """One ticket as the matcher sees it."""

    id: str
    time: datetime  # aware; submission time where known
    caller: str | None  # "p:<phone>" or "u:<user id>"; None: anonymous
    category: str
    county: str | None = None
    town: str | None = None
    village: str | None = None
    road: str | None = None
    landmark: str | None = None
    objects: frozenset[str] = frozenset()
    text: str = ""
    label: str = ""  # the category's label, for descriptions
    urgent: bool = False
    likes: int = 0
    open: bool = False  # not approved/closed yet (store only)

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.time, self.id)


def caller_key(phone: str | None = None, user: str | None = None) -> str | None:
    """The same caller: the same normalised phone, else the same client/user id."""
    if phone:
        digits = normalise_phone(phone)
        if digits:
            return f"p:{digits}"
    if user and user.strip():
        return f"u:{user.strip()}"
    return None


def item_from_ticket(ticket: Ticket, rules: RepeatRules, *, caller: str | None = None,
                     user: str | None = None, is_open: bool = False, likes: int = 0,
                     time: datetime | None = None) -> RepeatItem:
    """`caller` overrides the key from the ticket's phone (or `user`)."""
    loc = ticket.location
    text = ticket.transcript.text
    return RepeatItem(
        id=ticket.id,
        time=time or ticket.submitted_at or ticket.created_at,
        caller=caller or caller_key(ticket.submitter.phone, user),
        category=ticket.category.code,
        county=loc.district,
        town=loc.street,
        village=loc.village,
        road=loc.road,
        landmark=loc.landmark,
        objects=find_objects(f"{ticket.title or ''} {text}", rules),
        text=text,
        label=ticket.category.label,
        urgent=ticket.urgency.level == "urgent",
        likes=likes,
        open=is_open,
    )


# --------------------------------------------------------------------------------------
# 重复件
# --------------------------------------------------------------------------------------

_HAN_OR_WORD = re.compile(r"[\u4e00-\u9fff0-9A-Za-z]+")
_FILLERS = re.compile(r"喂|你好|您好|那个|就是|这个|然后|嗯|呃|啊|哎|我想|反映|一下|麻烦|谢谢")


def bigrams(text: str) -> frozenset[str]:
    runs = _HAN_OR_WORD.findall(_FILLERS.sub(" ", text))
    return frozenset(r[i:i + 2] for r in runs for i in range(len(r) - 1))


def similarity(a: str | frozenset[str], b: str | frozenset[str]) -> float:
    """Share of the smaller text's character bigrams the other has (0..1)."""
    x = bigrams(a) if isinstance(a, str) else a
    y = bigrams(b) if isinstance(b, str) else b
    if not x or not y:
        return 0.0
    return len(x & y) / min(len(x), len(y))


def place_relation(a: RepeatItem, b: RepeatItem) -> bool | None:
    """False: the places differ; True: they agree on a known part; None: nothing known
    in common (one or both unplaced)."""
    shared = False
    for part in ("county", "town", "village", "road", "landmark"):
        x, y = getattr(a, part), getattr(b, part)
        if x and y:
            # one name inside the other is the same place heard with a stray character
            # (白马嵩溪村 / 嵩溪村, 前二村村 / 前二村); 深一村 / 深二村 are two
            if x not in y and y not in x:
                return False
            shared = True
    return True if shared else None


def same_matter(a: RepeatItem, b: RepeatItem, rules: RepeatRules, *,
                sim: float | None = None) -> bool:
    """Same leaf category (or a shared object), compatible place, similar words (or,
    with a place in common, the same leaf and object)."""
    if a.category != b.category and not (a.objects & b.objects):
        return False
    place = place_relation(a, b)
    if place is False:
        return False
    if place and a.category == b.category and a.objects & b.objects:
        return True  # one caller, one place, one leaf, one object: the same matter
    sim = similarity(a.text, b.text) if sim is None else sim
    need = rules.duplicate_min_similarity if place else rules.duplicate_unplaced_similarity
    return sim >= need


def in_repeat_window(first: RepeatItem, new: RepeatItem, rules: RepeatRules) -> bool:
    # no order check: the store's first is whatever came in first, even when a
    # recording reaches it after a later one (batches replay old calls)
    if abs(new.time - first.time) <= timedelta(days=rules.duplicate_window_days):
        return True
    return rules.duplicate_while_open and first.open


def find_first(new: RepeatItem, earlier: Iterable[RepeatItem], rules: RepeatRules
               ) -> RepeatItem | None:
    """The first ticket `new` repeats, among `earlier` first tickets (not repeats) of
    any caller; the most recent matching first wins."""
    if new.caller is None:
        return None
    words = bigrams(new.text)
    best: RepeatItem | None = None
    for first in earlier:
        if first.caller != new.caller or first.id == new.id:
            continue
        if not in_repeat_window(first, new, rules):
            continue
        if not same_matter(first, new, rules, sim=similarity(bigrams(first.text), words)):
            continue
        if best is None or first.order > best.order:
            best = first
    return best


@dataclass(frozen=True)
class Repeat:
    first: str  # the first ticket's id
    n: int  # 1 = the first repeat


def find_repeats(items: Iterable[RepeatItem], rules: RepeatRules) -> dict[str, Repeat]:
    """Repeat id -> (first id, its number), over tickets in (time, id) order."""
    firsts: dict[str, list[RepeatItem]] = defaultdict(list)  # caller -> first tickets
    counts: Counter[str] = Counter()
    out: dict[str, Repeat] = {}
    for item in sorted(items, key=lambda i: i.order):
        if item.caller is None:
            continue
        first = find_first(item, firsts[item.caller], rules)
        if first is None:
            firsts[item.caller].append(item)
            continue
        counts[first.id] += 1
        out[item.id] = Repeat(first.id, counts[first.id])
    return out


# --------------------------------------------------------------------------------------
# 一类事
# --------------------------------------------------------------------------------------


@dataclass
class Cluster:
    id: str
    members: list[str]  # ticket ids in (time, id) order
    category: str  # the most common leaf among members (ties: the smaller code)
    label: str
    object: str | None
    county: str | None
    town: str | None
    village: str | None  # only when every placed member shares it
    callers: int
    repeats: int
    urgent: int
    first_at: datetime
    last_at: datetime
    heat: float = 0.0
    description: str = ""
    categories: list[str] = field(default_factory=list)
    spot: str | None = None  # the landmark or road of a cluster without town or village

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def place(self) -> str:
        return "".join(p for p in (self.town or self.county or "", self.village or "",
                                   "" if self.town or self.village else self.spot or "") if p)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.id, "members": list(self.members), "category": self.category,
            "label": self.label, "object": self.object,
            "place": {"county": self.county, "town": self.town, "village": self.village},
            "callers": self.callers, "repeats": self.repeats, "urgent": self.urgent,
            "heat": self.heat, "description": self.description,
            "first_at": self.first_at.isoformat(), "last_at": self.last_at.isoformat(),
        }


def cluster_id_for(earliest_member: str) -> str:
    """A cluster is named after its earliest member: 'K-' + that ticket's id."""
    return f"K-{earliest_member}"


def _area(item: RepeatItem, rules: RepeatRules) -> tuple[str, str] | None:
    """The block a ticket clusters in: its county and the first place part it has of
    `cluster_areas` (town, else village, ...); None: no place, no cluster."""
    for part in rules.cluster_areas:
        value = getattr(item, part)
        if value:
            return (item.county or "", f"{part}:{value}")
    return None


def matter_key(item: RepeatItem, rules: RepeatRules) -> str | None:
    """What a ticket clusters by: the one object it names (路灯), else its leaf category
    (a category that is an object's home counts as that object), else None (a
    catch-all category). Two objects named ("路灯和红绿灯都坏了"): the category."""
    if len(item.objects) == 1:
        return f"obj:{next(iter(item.objects))}"
    if item.category in rules.cluster_exclude_categories:
        return None
    home = rules.home_objects().get(item.category)
    return f"obj:{home}" if home else f"cat:{item.category}"


MIN_AREA_CHARS = 3


def village_towns(items: Iterable[RepeatItem]) -> dict[tuple[str | None, str], str]:
    """(county, village) -> the town most tickets name with that village (ties: the
    smaller name): a ticket that names only its village still clusters in its town."""
    seen: dict[tuple[str | None, str], Counter[str]] = defaultdict(Counter)
    for item in items:
        if item.town and item.village:
            seen[(item.county, item.village)][item.town] += 1
    return {k: min(c, key=lambda t: (-c[t], t)) for k, c in seen.items()}


def canonical_areas(areas: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """Each area -> the shortest area of the same county and kind whose name it holds
    (伊景园滨河苑 and A市伊景园滨河苑 -> 滨河苑 when all three occur; 人管郑宅镇 -> 郑宅镇),
    names of at least MIN_AREA_CHARS characters; 深一村 and 深二村 stay two. The parser
    leaves stray characters at a name's edges; this undoes that without a gazetteer."""
    by_kind: dict[tuple[str, str], set[str]] = defaultdict(set)
    for county, area in set(areas):
        kind, _, name = area.partition(":")
        by_kind[(county, kind)].add(name)
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for (county, kind), names in by_kind.items():
        ordered = sorted(names, key=lambda n: (len(n), n))
        for name in ordered:
            home = next((short for short in ordered
                         if len(short) >= MIN_AREA_CHARS and len(short) < len(name)
                         and short in name), name)
            out[(county, f"{kind}:{name}")] = (county, f"{kind}:{home}")
    return out


def group_candidates(items: Sequence[RepeatItem], rules: RepeatRules) -> list[list[RepeatItem]]:
    """Groups of tickets in one area with one matter key, each ticket within the
    window of its group's latest one; before the caller count decides which are
    clusters. A 红绿灯 complaint the classifier called a street light still joins the
    红绿灯 group: the object it names comes first."""
    window = timedelta(days=rules.cluster_window_days)
    keyed: list[tuple[tuple[str, str], str, RepeatItem]] = []
    towns = village_towns(items)
    for item in items:
        if not item.town and item.village and (item.county, item.village) in towns:
            # the village lies in the town other tickets name with it
            item = replace(item, town=towns[(item.county, item.village)])
        area, key = _area(item, rules), matter_key(item, rules)
        if area is not None and key is not None:
            keyed.append((area, key, item))
    canonical = canonical_areas(area for area, _, _ in keyed)
    blocks: dict[tuple[str, str, str], list[RepeatItem]] = defaultdict(list)
    for area, key, item in keyed:
        blocks[(*canonical[area], key)].append(item)
    groups: list[list[RepeatItem]] = []
    for block in sorted(blocks):
        current: list[RepeatItem] = []
        for item in sorted(blocks[block], key=lambda i: i.order):
            if current and item.time - current[-1].time > window:
                groups.append(current)
                current = []
            current.append(item)
        groups.append(current)
    return groups


def heat_of(callers: int, repeats: int, urgent: int, likes: int, last_at: datetime,
            as_of: datetime, rules: RepeatRules) -> float:
    age_days = max(0.0, (as_of - last_at).total_seconds() / 86400)
    base = (callers + rules.repeat_weight * repeats + rules.urgent_weight * urgent
            + rules.likes_weight * likes)
    return round(base * 0.5 ** (age_days / rules.heat_half_life_days), 3)


def make_cluster(members: Sequence[RepeatItem], rules: RepeatRules, *,
                 as_of: datetime | None = None, cluster_id: str | None = None) -> Cluster:
    """The cluster of these member tickets (any order)."""
    members = sorted(members, key=lambda i: i.order)
    callers = {m.caller or f"anon:{m.id}" for m in members}
    cats = Counter(m.category for m in members)
    category = min(cats, key=lambda c: (-cats[c], c))
    label = next((m.label for m in members if m.category == category and m.label), category)
    objs = Counter(o for m in members for o in m.objects)
    obj = min(objs, key=lambda o: (-objs[o], o)) if objs else None
    towns = Counter(m.town for m in members if m.town)
    counties = Counter(m.county for m in members if m.county)
    villages = {m.village for m in members if m.village}
    village = next(iter(villages)) if len(villages) == 1 else None
    spots = Counter(m.landmark or m.road for m in members if m.landmark or m.road)
    last_at = members[-1].time
    urgent = sum(m.urgent for m in members)
    likes = sum(m.likes for m in members)
    cluster = Cluster(
        id=cluster_id or cluster_id_for(members[0].id),
        members=[m.id for m in members],
        category=category,
        label=label,
        object=obj,
        county=min(counties, key=lambda c: (-counties[c], c)) if counties else None,
        town=min(towns, key=lambda t: (-towns[t], t)) if towns else None,
        village=village,
        callers=len(callers),
        repeats=len(members) - len(callers),
        urgent=urgent,
        first_at=members[0].time,
        last_at=last_at,
        categories=sorted(cats),
        spot=min(spots, key=lambda p: (-spots[p], p)) if spots else None,
    )
    cluster.heat = heat_of(cluster.callers, cluster.repeats, urgent, likes, last_at,
                           as_of or last_at, rules)
    cluster.description = describe(cluster)
    return cluster


def describe(cluster: Cluster) -> str:
    """One line: '浦阳街道 路灯照明 5人反映' (+ '，重复来电2次', '，含紧急1件')."""
    what = cluster.label if cluster.object is None or cluster.object in cluster.label \
        else f"{cluster.label}（{cluster.object}）"
    line = f"{cluster.place or '未知地点'} {what} {cluster.callers}人反映"
    if cluster.repeats:
        line += f"，重复来电{cluster.repeats}次"
    if cluster.urgent:
        line += f"，含紧急{cluster.urgent}件"
    return line


def find_clusters(items: Iterable[RepeatItem], rules: RepeatRules, *,
                  as_of: datetime | None = None) -> list[Cluster]:
    """一类事 clusters, hottest first (then by id): only groups with enough callers."""
    items = sorted(items, key=lambda i: i.order)
    if not items:
        return []
    as_of = as_of or items[-1].time
    out = []
    for group in group_candidates(items, rules):
        if len({m.caller or f"anon:{m.id}" for m in group}) >= rules.cluster_min_callers:
            out.append(make_cluster(group, rules, as_of=as_of))
    out.sort(key=lambda c: (-c.heat, c.id))
    return out


def with_place(item: RepeatItem, place: Mapping[str, str | None]) -> RepeatItem:
    """The item with place parts replaced (gold places, a staff correction)."""
    return replace(item, **{k: place.get(k) for k in
                            ("county", "town", "village", "road", "landmark") if k in place})
