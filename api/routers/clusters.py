"""一类事 clusters: the list (hottest first), one cluster with its members and history,
and the staff's merge and split (each kept in the history with who did it). Staff and
admins only; the review page calls these (and the 重复件 routes in api.review)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field, StringConstraints

from api.auth import Caller, require
from api.deps import StoreDep
from api.errors import ApiError, ErrorBody
from api.review import repeat_error
from pipeline import store_clusters as sc
from pipeline.fields import DB_INT_MAX

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
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
) -> dict[str, Any]:
    page = sc.list_clusters(store, status=status, category=category, town=town,
                            min_size=min_size, limit=limit, offset=offset)
    end = offset + len(page.items)
    return {"items": [c.as_dict() for c in page.items], "total": page.total, "limit": limit,
            "offset": offset, "next_offset": end if end < page.total else None}


ClusterId = Annotated[str, Path(min_length=1, max_length=64)]
_Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _cluster_doc(store: StoreDep, cluster_id: str) -> dict[str, Any]:
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


@router.get("/v1/clusters/{cluster_id}")
def get_cluster(cluster_id: ClusterId, store: StoreDep,
                caller: Annotated[Caller, Depends(_staff)]) -> dict[str, Any]:
    return _cluster_doc(store, cluster_id)


class MergeBody(BaseModel):
    model_config = {"extra": "forbid"}

    clusters: list[_Id] = Field(min_length=1, max_length=50,
                                json_schema_extra={"uniqueItems": True},
                                description="the clusters whose members join this one "
                                            "(not itself); they are kept as 'merged'")


class SplitBody(BaseModel):
    model_config = {"extra": "forbid"}

    tickets: list[Annotated[str, StringConstraints(min_length=1, max_length=32)]] = Field(
        min_length=1, max_length=500, json_schema_extra={"uniqueItems": True},
        description="members to take out of the cluster")
    new_cluster: bool = Field(True, description="whether they form a cluster of their own "
                                                "when they have enough callers; false: "
                                                "they stay out of any")


_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such cluster or ticket"},
    409: {"model": ErrorBody, "description": "conflict: a cluster is no longer active, "
                                             "or a ticket is not a member"},
    422: {"model": ErrorBody, "description": "invalid_request, the field named"},
}


@router.post("/v1/clusters/{cluster_id}/merge", responses=_WRITE_ERRORS,
             summary="Merge other clusters into this one (kept in the history)")
def merge_clusters(cluster_id: ClusterId, body: MergeBody, store: StoreDep,
                   caller: Annotated[Caller, Depends(_staff)]) -> dict[str, Any]:
    """Their members join this cluster and are pinned there (the pipeline does not move
    them); the merged clusters keep their history with status 'merged'. Answers this
    cluster as GET does."""
    if sc.get_cluster(store, cluster_id) is None:  # an unknown cluster before the body
        raise ApiError(404, "not_found", f"no cluster {cluster_id}")
    for n, other in enumerate(body.clusters):
        if other == cluster_id:
            raise ApiError(422, "invalid_request", "a cluster cannot merge with itself",
                           details=[{"field": f"clusters.{n}",
                                     "problem": "the cluster being merged into"}])
        if other in body.clusters[:n]:
            raise ApiError(422, "invalid_request", f"{other} is named twice",
                           details=[{"field": f"clusters.{n}", "problem": "named twice"}])
    try:
        sc.merge_clusters(store, cluster_id, list(body.clusters), author=caller.author)
    except LookupError as e:
        raise ApiError(404, "not_found", str(e)) from None
    except sc.RepeatEditError as e:
        raise repeat_error(e) from None
    return _cluster_doc(store, cluster_id)


@router.post("/v1/clusters/{cluster_id}/split", responses=_WRITE_ERRORS,
             summary="Take tickets out of a cluster (kept in the history)")
def split_cluster(cluster_id: ClusterId, body: SplitBody, store: StoreDep,
                  caller: Annotated[Caller, Depends(_staff)]) -> dict[str, Any]:
    """The tickets leave the cluster and are pinned out of it. With `new_cluster` and
    enough distinct callers among them they form a new cluster. Answers ``cluster``
    (this one, as GET gives it; 'dissolved' when none is left) and ``new_cluster``
    (or null)."""
    if len(set(body.tickets)) != len(body.tickets):
        raise ApiError(422, "invalid_request", "a ticket is named twice",
                       details=[{"field": "tickets", "problem": "names a ticket twice"}])
    try:
        new_id = sc.split_cluster(store, cluster_id, list(body.tickets), author=caller.author,
                                  form_new=body.new_cluster)
    except LookupError as e:
        raise ApiError(404, "not_found", str(e)) from None
    except sc.RepeatEditError as e:
        raise repeat_error(e) from None
    return {"cluster": _cluster_doc(store, cluster_id),
            "new_cluster": _cluster_doc(store, new_id) if new_id else None}
