"""Open311 GeoReport v2 (https://wiki.open311.org/GeoReport_v2) over the tickets.

Services are the taxonomy's leaves; a service request is a ticket. The format is the
path's suffix (``.json`` or ``.xml``). Errors take the spec's shape, not this API's:
``[{"code": 404, "description": "..."}]`` or ``<errors><error><code/><description/>``.
Every route needs an API key: ``api_key`` (query, or form field on POST), the
``X-Api-Key`` header, or ``Authorization: Bearer``. A submitter key sees its own
requests; staff see all. POST creates the ticket through the typed-message path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.errors import ApiError
from pipeline.messages import TypedMessage, accept_message
from pipeline.store import Store, TicketRow, utcnow
from pipeline.tickets import load_rules
from pipeline.tickets.exports import (
    open311_created,
    open311_definition,
    open311_errors,
    open311_request,
    open311_services,
    open311_xml,
    open311_xml_object,
)

PREFIX = "/open311/v2"
router = APIRouter(prefix=PREFIX, tags=["open311"])

Format = Literal["json", "xml"]
DEFAULT_DAYS = 90  # the spec: without dates, the last 90 days
MAX_REQUESTS = 1000  # the spec: at most 1000 requests per answer
_XML = "text/xml; charset=utf-8"
_ATTRIBUTE = re.compile(r"^attribute\[([^\]]+)\](\[\])?$")


class Open311Error(Exception):
    """An error answered in the spec's shape (see `open311_error_response`)."""

    def __init__(self, status: int, description: str, fmt: str = "json",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.fmt, self.headers = status, description, fmt, headers


def open311_error_response(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Open311Error)
    errors = open311_errors([(exc.status, exc.description)])
    if exc.fmt == "xml":
        return Response(open311_xml("errors", "error", errors), status_code=exc.status,
                        media_type=_XML, headers=exc.headers)
    return JSONResponse(errors, status_code=exc.status, headers=exc.headers)


def _format(fmt: str) -> Format:
    if fmt not in ("json", "xml"):
        raise Open311Error(404, f"no format '{fmt}': use .json or .xml")
    return fmt  # type: ignore[return-value]


def _answer(fmt: Format, records: Sequence[Mapping[str, Any]], root: str, item: str,
            status: int = 200) -> Response:
    if fmt == "xml":
        return Response(open311_xml(root, item, records), status_code=status, media_type=_XML)
    return JSONResponse(list(records), status_code=status)


def _caller(request: Request, fmt: Format, form_key: str | None = None) -> Caller:
    """The key's caller, from api_key, X-Api-Key or Authorization: Bearer."""
    key = (form_key or request.query_params.get("api_key") or request.headers.get("x-api-key")
           or "")
    auth = request.headers.get("authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:]
    if not key.strip():
        raise Open311Error(401, "an api_key is required (parameter api_key, the X-Api-Key "
                           "header, or Authorization: Bearer)", fmt)
    store: Store = request.app.state.store
    row = store.verify_api_key(key.strip())
    if row is None:
        raise Open311Error(401, "unknown or revoked api_key", fmt)
    caller = Caller(key_id=row.id, name=row.name, role=row.role)
    limits = request.app.state.rate_limits
    try:
        limits.check(limits.general, "api", caller.key_id)
    except ApiError as e:
        raise Open311Error(e.status, e.message, fmt, e.headers) from None
    return caller


def _when(name: str, value: str | None, fmt: Format) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Open311Error(400, f"{name}: not an ISO 8601 date-time ({value!r})", fmt) from None
    if when.tzinfo is None:
        raise Open311Error(400, f"{name} needs a time zone, e.g. 2026-11-23T08:00:00+08:00",
                           fmt)
    return when


def _request_record(row: TicketRow) -> dict[str, Any]:
    return open311_request(row.ticket, review_status=row.status, updated_at=row.updated_at,
                           rules=load_rules())


# --------------------------------------------------------------------------- services


@router.get("/services.{fmt}", summary="Service list: the taxonomy's leaves")
def services(request: Request, fmt: str) -> Response:
    f = _format(fmt)
    _caller(request, f)
    return _answer(f, open311_services(load_rules()), "services", "service")


@router.get("/services/{service_code}.{fmt}",
            summary="Service definition (the attributes to fill in; none here)")
def service_definition(request: Request, service_code: str, fmt: str) -> Response:
    f = _format(fmt)
    _caller(request, f)
    try:
        rule = load_rules().category(service_code)
    except KeyError:
        raise Open311Error(404, f"no service_code '{service_code}'", f) from None
    definition = open311_definition(rule)
    if f == "xml":
        return Response(open311_xml_object("service_definition", definition), media_type=_XML)
    return JSONResponse(definition)


# --------------------------------------------------------------------------- requests


@router.get("/requests.{fmt}", summary="Service requests (tickets): filters as the spec's")
def list_requests(request: Request, fmt: str) -> Response:
    f = _format(fmt)
    caller = _caller(request, f)
    q = request.query_params
    store: Store = request.app.state.store
    mine = None if caller.at_least("staff") else caller.key_id
    ids = [i for i in (q.get("service_request_id") or "").split(",") if i.strip()]
    if ids:
        # the spec: with service_request_id every other filter is ignored
        rows = store.find_tickets(ids=[i.strip() for i in ids], submitter_id=mine,
                                  limit=MAX_REQUESTS)
    else:
        codes = [c.strip() for c in (q.get("service_code") or "").split(",") if c.strip()]
        statuses: list[str] | None = None
        wanted = [s.strip() for s in (q.get("status") or "").split(",") if s.strip()]
        bad = [s for s in wanted if s not in ("open", "closed")]
        if bad:
            raise Open311Error(400, f"status: '{bad[0]}' is neither open nor closed", f)
        if wanted and set(wanted) != {"open", "closed"}:
            statuses = ["reviewed"] if wanted == ["closed"] else ["new", "in_review"]
        end = _when("end_date", q.get("end_date"), f)
        start = _when("start_date", q.get("start_date"), f)
        if start is None:
            start = (end or utcnow()) - timedelta(days=DEFAULT_DAYS)
        if end is not None and end < start:
            raise Open311Error(400, "end_date is before start_date", f)
        rows = store.find_tickets(
            categories=codes or None, statuses=statuses, created_from=start,
            # end_date is inclusive in the spec; the store's range is [from, to)
            created_to=end + timedelta(microseconds=1) if end is not None else None,
            submitter_id=mine, limit=MAX_REQUESTS)
    return _answer(f, [_request_record(r) for r in rows], "service_requests", "request")


@router.get("/requests/{service_request_id}.{fmt}", summary="One service request")
def get_request(request: Request, service_request_id: str, fmt: str) -> Response:
    f = _format(fmt)
    caller = _caller(request, f)
    store: Store = request.app.state.store
    rows = store.find_tickets(ids=[service_request_id], limit=1,
                              submitter_id=None if caller.at_least("staff") else caller.key_id)
    if not rows:
        raise Open311Error(404, f"no service request '{service_request_id}'", f)
    return _answer(f, [_request_record(rows[0])], "service_requests", "request")


class Open311RequestIn(BaseModel):
    """POST requests.json's arguments (api_key is taken before this)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    jurisdiction_id: str | None = None
    service_code: str = Field(min_length=1, max_length=64)
    lat: float | None = Field(None, ge=-90, le=90)
    long: float | None = Field(None, ge=-180, le=180)
    address_string: str | None = Field(None, max_length=500)
    address_id: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=200)
    device_id: str | None = Field(None, max_length=200)
    account_id: str | None = Field(None, max_length=200)
    first_name: str | None = Field(None, max_length=100)
    last_name: str | None = Field(None, max_length=100)
    phone: str | None = Field(None, max_length=32)
    description: str | None = Field(None, max_length=4000)
    media_url: str | None = Field(None, max_length=2000)
    attribute: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _located(self) -> Open311RequestIn:
        if (self.lat is None) != (self.long is None):
            raise ValueError("lat and long come together")
        if self.lat is None and not self.address_string and not self.address_id:
            raise ValueError("a location is required: lat and long, address_string or "
                             "address_id")
        return self


def _problem(e: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """The first problem as 'field: what is wrong'."""
    first = e.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    field = ".".join((names or {}).get(p, p) for p in loc)
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{field}: {msg}" if field else msg


def _flatten(items: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Form fields -> arguments; attribute[CODE] (and attribute[CODE][]) into one dict."""
    out: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for key, value in items:
        m = _ATTRIBUTE.match(key)
        if m:
            if m.group(2):
                attributes.setdefault(m.group(1), []).append(value)
            else:
                attributes[m.group(1)] = value
        else:
            out[key] = value
    if attributes:
        out["attribute"] = attributes
    return out


async def _arguments(request: Request, fmt: Format) -> dict[str, Any]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError as e:
            raise Open311Error(400, f"the body is not JSON: {e}", fmt) from None
        if not isinstance(data, dict):
            raise Open311Error(400, "the JSON body must be an object", fmt)
        # the same flat names as the form ("attribute[CODE]"), or "attribute": {...}
        flat = _flatten([(k, v) for k, v in data.items() if k != "attribute"])
        if isinstance(data.get("attribute"), dict):
            flat["attribute"] = {**flat.get("attribute", {}), **data["attribute"]}
        return flat
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data", ""):
        form = await request.form()
        return _flatten(list(form.multi_items()))
    raise Open311Error(415, f"send application/x-www-form-urlencoded or JSON, not {kind}", fmt)


@router.post(
    "/requests.{fmt}", summary="Create a service request (a ticket, as a typed message)",
    openapi_extra={"requestBody": {"content": {
        "application/x-www-form-urlencoded": {"schema": Open311RequestIn.model_json_schema()},
        "application/json": {"schema": Open311RequestIn.model_json_schema()}}}},
)
async def post_request(request: Request, fmt: str) -> Response:
    f = _format(fmt)
    args = await _arguments(request, f)
    form_key = args.pop("api_key", None)
    caller = _caller(request, f, form_key=form_key if isinstance(form_key, str) else None)
    try:
        body = Open311RequestIn.model_validate(args)
    except ValidationError as e:
        raise Open311Error(400, _problem(e), f) from None
    rules = load_rules()
    try:
        rule = rules.category(body.service_code)
    except KeyError:
        raise Open311Error(400, f"service_code: no service '{body.service_code}' "
                           f"(GET {PREFIX}/services.{f} lists them)", f) from None
    address = body.address_string or (f"address_id:{body.address_id}" if body.address_id
                                      else None)
    try:
        msg = TypedMessage(title=rule.label, text=body.description or rule.label,
                           phone=body.phone, address=address, lat=body.lat, lon=body.long,
                           user=body.account_id)
    except ValidationError as e:  # the message's own limits, in Open311's names
        raise Open311Error(400, _problem(e, {"text": "description", "lon": "long",
                                             "address": "address_string"}), f) from None
    ticket, _ = await run_in_threadpool(accept_message, request.app.state.store, msg,
                                        submitter_id=caller.key_id, rules=rules,
                                        category=rule.code)
    created = open311_created(ticket, account_id=body.account_id, rules=rules)
    return _answer(f, [created], "service_requests", "request", status=201)
