"""一类事 clusters: the list (hottest first) and one cluster with its members and history.
Staff and admins only; merging and splitting are store functions the review page calls
(pipeline.store_clusters)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from api.auth import Caller, require
from api.deps import StoreDep
from api.errors import ApiError
from pipeline import store_clusters as sc

router = APIRouter(tags=["clusters"])
_staff = require("staff")


@router.get("/v1/clusters")
def list_clusters(
    store: StoreDep,
    caller: Annotated[Caller, Depends(_staff)],
    status: Annotated[Literal["active", "merged", "dissolved"], Query()] = "active",
    category: Annotated[str | None, Query(max_length=64, description="leaf code")] = None,
    town: Annotated[str | None, Query(max_length=64)] = None,
    min_size: Annotated[int, Query(ge=1, le=100000)] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    page = sc.list_clusters(store, status=status, category=category, town=town,
                            min_size=min_size, limit=limit, offset=offset)
    end = offset + len(page.items)
    return {"items": [c.as_dict() for c in page.items], "total": page.total, "limit": limit,
            "offset": offset, "next_offset": end if end < page.total else None}


@router.get("/v1/clusters/{cluster_id}")
def get_cluster(cluster_id: str, store: StoreDep,
                caller: Annotated[Caller, Depends(_staff)]) -> dict[str, Any]:
    detail = sc.get_cluster(store, cluster_id)
    if detail is None:
        raise ApiError(404, "not_found", f"no cluster {cluster_id}")
    doc = detail.cluster.as_dict()
    doc["members"] = [
        {"ticket_id": m.ticket_id, "at": m.at.isoformat(), "category": m.category,
         "town": m.town, "village": m.village, "duplicate_of": m.duplicate_of,
         "repeat_count": m.repeat_count, "pinned": m.cluster_pinned}
        for m in detail.members]
    doc["history"] = [
        {"action": h.action, "author": h.author, "at": h.created_at.isoformat(),
         "ticket_id": h.ticket_id, "detail": h.detail}
        for h in detail.history]
    return doc
