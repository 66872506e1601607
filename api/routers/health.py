"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from api.auth import Caller, require
from api.deps import StoreDep
from api.errors import ErrorBody

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up (no auth)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody}},
            summary="Model loaded, store and broker reachable (no auth)")
def readyz(request: Request, store: StoreDep) -> JSONResponse:
    checks: dict[str, Any] = {}
    ok = True
    try:
        store.ping()
        checks["store"] = "ok"
    except Exception as e:
        ok, checks["store"] = False, f"unreachable: {type(e).__name__}"
    workers = request.app.state.dispatcher.readiness()
    ok = ok and bool(workers.pop("ready"))
    checks.update(workers)
    return JSONResponse({"status": "ready" if ok else "not_ready", **checks},
                        status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (staff key)")
def metrics(request: Request, _: Annotated[Caller, Depends(require("staff"))]) -> Response:
    body = generate_latest(REGISTRY) + generate_latest(request.app.state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
