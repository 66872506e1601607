"""The OpenAPI document, completed with what FastAPI cannot see from the signatures.

Every answer the app can give is in it (checked by the fuzz test, tests/test_fuzz.py):
400 for a body that does not parse, 404 for a path naming something that does not
exist, errors as JSON whatever the route's own media type (``/metrics`` is text), and
Open311's routes in the spec's formats (JSON or XML, errors in its own shape)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api.routers.open311 import PREFIX as OPEN311

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_OPEN311_ERROR = {
    "application/json": {"schema": {"type": "array", "items": {
        "type": "object", "required": ["code", "description"],
        "properties": {"code": {"type": "integer"}, "description": {"type": "string"}}}}},
    "text/xml": {"schema": {"type": "string"}},
}
_OPEN311_OK = {"application/json": {"schema": {}}, "text/xml": {"schema": {"type": "string"}}}
_METHODS = {"get", "put", "post", "delete", "patch"}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    for path, item in document.get("paths", {}).items():
        open311 = path.startswith(OPEN311)
        for method, op in item.items():
            if method not in _METHODS:
                continue
            responses = op.setdefault("responses", {})
            if "requestBody" in op:
                responses.setdefault("400", {"description": "the body does not parse "
                                             "(not JSON, not UTF-8, a broken form)"})
            if "{" in path:
                responses.setdefault("404", {"description": "no such resource (or one "
                                             "this key may not see)"})
            if open311:
                # the spec's own errors: a missing api_key, a bad parameter, no such code
                for code, what in (("400", "a parameter the spec refuses"),
                                   ("401", "no api_key, or an unknown one"),
                                   ("404", "no such service, request or format")):
                    responses.setdefault(code, {"description": what})
            for code, response in responses.items():
                if code[0] in "45":
                    response["content"] = _OPEN311_ERROR if open311 else _ERROR
                elif open311 and code[0] == "2":
                    response["content"] = _OPEN311_OK
    return document


def install(app: FastAPI) -> None:
    build = app.openapi  # FastAPI's own, which caches its document in app.openapi_schema

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            complete(build())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
