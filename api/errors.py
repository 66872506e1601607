"""One error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

``code`` is machine-readable and stable; ``message`` is for people. FastAPI's own
validation errors and Starlette's 404/405 are reshaped into it too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers


def require_time_zones(**values: datetime | None) -> None:
    """Query datetimes must say their zone: a naive one would be read as UTC silently."""
    for name, value in values.items():
        if value is not None and value.tzinfo is None:
            raise ApiError(422, "invalid_request",
                           f"{name} needs a time zone, e.g. 2026-11-23T08:00:00+08:00")


def error_response(status: int, code: str, message: str, *, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status,
                        headers=headers)


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden",
                 404: "not_found", 405: "method_not_allowed", 413: "too_large",
                 415: "unsupported_media_type", 422: "invalid_request",
                 429: "rate_limited", 503: "unavailable"}

# responses every route may give, for the OpenAPI document
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    403: {"model": ErrorBody, "description": "the key's role may not do this"},
    429: {"model": ErrorBody, "description": "the key exceeded its rate"},
}


def single_query_values(request: Request) -> None:
    """No query parameter here is a list, and FastAPI would silently keep the last of a
    repeated one (``?category=a&category=b``): say so instead, naming it. Open311's
    routes read their parameters themselves and answer in the spec's shape."""
    if request.url.path.startswith("/open311/"):
        return
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen:
            raise ApiError(422, "invalid_request", f"query.{name}: given more than once",
                           details=[{"field": f"query.{name}",
                                     "problem": "given more than once"}])
        seen.add(name)


def allowed_methods(request: Request) -> str:
    """Every method some route of this path takes: Starlette's 405 names only the first
    route that matched the path, and a path's methods are often in several routes. Each
    method is tried against the routes (FastAPI nests included routers)."""
    methods = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            methods.append(method)
    return ", ".join(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, details=exc.details,
                              headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)),
             "problem": err.get("msg", "")}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
        return error_response(422, "invalid_request", summary or "invalid request",
                              details=problems)
