"""Staff review: sign-in sessions, the review queue, corrections, approval, history.

The review page (``/review``, static files in ``api/static/review``) uses only these
routes, and they are the public API: a script with a staff key does the same things
with ``Authorization: Bearer`` instead of the cookie (and needs no CSRF token).

Revisions: a ticket starts at revision 1 (the machine's). Every save that changes
something and every approval makes revision + 1; a save or approval names the
revision it started from, and another revision answers 409 ``revision_conflict``
(optimistic locking: two reviewers never overwrite each other). Approval publishes
the ticket on the complaint queue as ``ticket.revised`` with its revision number and
the same ticket id, so consumers update the ticket they hold.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Caller,
    require,
    verify_password,
)
from api.errors import ApiError, ErrorBody, require_time_zones
from pipeline import store_clusters as sc
from pipeline.config import Settings
from pipeline.fields import DB_INT_MAX, IsoDateTime
from pipeline.review import ReviewError, TicketEdit, apply_edit, char_diff
from pipeline.store import (
    TICKET_STATUSES,
    WAITING_STATUSES,
    Revised,
    RevisionConflict,
    Store,
    TicketRow,
    spoken_dialects,
    utcnow,
)
from pipeline.ticket_schema import KINDS
from pipeline.tickets import load_rules

router = APIRouter()
staff = require("staff")
# the queue's dialect filter: a variety (pipeline.store.STAFF_DIALECTS), or unreadable
DialectFilter = Literal["mandarin", "cantonese", "wu", "min", "hakka", "southwestern",
                        "other", "unknown", "unreadable"]

FIELD_LABELS = {"kind": "类型", "category": "分类", "urgency": "紧急程度", "summary": "摘要",
                "location.text": "地点", "location.province": "省", "location.city": "市",
                "location.district": "区县", "location.street": "街道/乡镇"}


# --------------------------------------------------------------------------- schemas


class SignInPassword(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SignInKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: str = Field(min_length=1, max_length=200,
                         description="a staff or admin key, instead of a password")


# one or the other, as the document says (anyOf): a body with both, or neither, is a 422
SignIn = SignInPassword | SignInKey


class SessionUser(BaseModel):
    name: str
    display_name: str
    role: Literal["staff", "admin"]
    kind: Literal["user", "key"]
    dialects: list[str] = Field(default_factory=list, description=(
        "the varieties this user declared (`minyin users create --dialects`); empty: "
        "none declared, Mandarin only; the queue puts tickets in theirs first"))


class SessionOut(BaseModel):
    user: SessionUser
    csrf_token: str = Field(description=f"send it in {CSRF_HEADER} with every write "
                                        "made with the session cookie")
    expires_at: datetime


class QueueItem(BaseModel):
    id: str
    created_at: datetime
    source: str
    kind: str
    category: dict[str, str]
    urgency: str
    confidence: float | None
    low_confidence_segments: int
    duration_s: float | None = Field(description="null for a typed message")
    summary: str
    status: str
    revision: int
    updated_by: str | None
    review_flags: list[str]
    variety: str = Field("mandarin", description="the caller's speech (transcript.variety)")
    readable: bool = Field(True, description="false: the machine text is not a transcript "
                                             "(a person who speaks the variety must listen)")


class QueueOut(BaseModel):
    items: list[QueueItem]
    total: int
    counts: dict[str, int] = Field(description="per status, plus 'urgent' (waiting and "
                                               "urgent), under the filters but the status")
    limit: int
    offset: int
    next_offset: int | None


class ReviewView(BaseModel):
    ticket: dict[str, Any] = Field(description="the ticket, staff form (phone included)")
    revision: int
    status: Literal["new", "in_review", "reviewed"]
    confidence: float | None
    updated_at: datetime
    updated_by: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    low_confidence_below: float = Field(description="segments under this are marked")
    audio_url: str | None = Field(description="a browser-playable WAV of the recording "
                                              "(null for a typed message)")
    repeats: dict[str, Any] | None = Field(None, description=(
        "重复件 and 一类事: `duplicate_of` (the first ticket, or null), `repeat_count`, "
        "`repeats` (tickets that repeat this one), `cluster` (id, status, size, callers, "
        "heat, description, place, members; or null), `history` (links, unlinks, merges "
        "and splits, newest first: who, when, what); null for a ticket stored before "
        "repeats were matched"))
    changed: bool | None = Field(None, description="on a save: whether anything changed "
                                                   "(nothing changed: no new revision)")
    published_revision: int | None = Field(None, description="on approval: the revision "
                                                             "put on the complaint queue")


class ChangeOut(BaseModel):
    target_kind: Literal["segment", "field"]
    target: str
    label: str
    before: Any
    after: Any
    diff: list[tuple[Literal["equal", "delete", "insert"], str]]


class RevisionOut(BaseModel):
    revision: int
    action: Literal["save", "approve"]
    author: str
    created_at: datetime
    comment: str | None
    changes: list[ChangeOut]


class CategoryOut(BaseModel):
    code: str
    label: str
    group: str  # level 1
    path: list[str]  # level 1, 2 and 3 labels
    department: str
    time_limit_days: int


class TaxonomyOut(BaseModel):
    kinds: list[str]
    urgency_levels: list[str]
    categories: list[CategoryOut]


# --------------------------------------------------------------------------- helpers


def _declared_dialects(request: Request, caller: Caller) -> list[str]:
    """A signed-in user's declared varieties; a key declares none."""
    if not caller.user:
        return []
    user = _store(request).get_staff_user(caller.name)
    return list(user.dialects or []) if user is not None else []


def _store(request: Request) -> Store:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def view(row: TicketRow, settings: Settings, store: Store | None = None,
         **extra: Any) -> ReviewView:
    # the page needs one call: the repeats panel comes along when the store is given
    repeats = sc.repeat_panel(store, row.id) if store is not None else None
    audio = row.document.get("audio")
    return ReviewView(
        ticket=row.document, revision=row.revision, status=row.status,  # type: ignore[arg-type]
        confidence=row.confidence, updated_at=row.updated_at, updated_by=row.updated_by,
        reviewed_by=row.reviewed_by, reviewed_at=row.reviewed_at,
        low_confidence_below=settings.review_confidence_below,
        audio_url=f"/v1/tickets/{row.id}/audio?format=wav" if audio else None,
        repeats=repeats, **extra)


def _conflict(e: RevisionConflict) -> ApiError:
    return ApiError(409, "revision_conflict",
                    f"{e.updated_by or 'someone'} saved this ticket (now revision {e.current}) "
                    f"after you opened revision {e.expected}; reload it and make your "
                    "change again",
                    details={"current_revision": e.current, "updated_by": e.updated_by,
                             "updated_at": e.updated_at.isoformat() if e.updated_at else None})


def _revise(request: Request, ticket_id: str, body: TicketEdit, caller: Caller,
            action: Literal["save", "approve"]) -> Revised:
    now = utcnow()
    edit = partial(apply_edit, edit=body, author=caller.author,
                   approve=action == "approve", now=now)
    try:
        return _store(request).revise_ticket(
            ticket_id, base_revision=body.revision, author=caller.author, action=action,
            edit=edit, comment=body.comment, now=now)
    except LookupError:
        raise ApiError(404, "not_found", f"no ticket {ticket_id}") from None
    except RevisionConflict as e:
        raise _conflict(e) from None
    except ReviewError as e:
        raise ApiError(422, e.code, e.message,
                       details=[{"field": e.field, "problem": e.message}]) from None


def _label(target_kind: str, target: str) -> str:
    if target_kind == "segment":
        return f"第 {int(target) + 1} 段"
    return FIELD_LABELS.get(target, target)


def _set_session_cookie(request: Request, response: Response, token: str,
                        settings: Settings) -> None:
    secure = (settings.cookie_secure if settings.cookie_secure is not None
              else request.url.scheme == "https")
    response.set_cookie(SESSION_COOKIE, token, max_age=int(settings.session_hours * 3600),
                        path="/", httponly=True, samesite="strict", secure=secure)


# --------------------------------------------------------------------------- sessions


@router.post("/v1/session", tags=["review"], response_model=SessionOut,
             responses={401: {"model": ErrorBody},
                        403: {"model": ErrorBody}, 429: {"model": ErrorBody}},
             summary="Sign in to the review page (sets the session cookie)")
def sign_in(request: Request, body: SignIn) -> JSONResponse:
    """A staff user's name and password, or a staff key. The answer sets the
    ``minyin_session`` cookie (HttpOnly, SameSite=Strict) and gives the CSRF token."""
    store, settings = _store(request), _settings(request)
    limits = request.app.state.rate_limits
    client = request.client.host if request.client else "unknown"
    limits.check(limits.logins, "login-address", client)
    ttl = timedelta(hours=settings.session_hours)
    if isinstance(body, SignInPassword):
        limits.check(limits.logins, "login-user", body.username.lower())
        user = store.get_staff_user(body.username)
        ok = verify_password(user.password_hash if user else None, body.password)
        if user is None or not ok or user.disabled_at is not None:
            raise ApiError(401, "bad_credentials", "wrong username or password")
        token, session = store.create_session(user_id=user.id, ttl=ttl)
        store.update_staff_user(user.username, last_login_at=utcnow())
        who = SessionUser(name=user.username, display_name=user.display_name,
                          role=user.role, kind="user",  # type: ignore[arg-type]
                          dialects=list(user.dialects or []))
    else:
        key = store.verify_api_key(body.api_key.strip())
        if key is None:
            raise ApiError(401, "bad_credentials", "unknown or revoked API key")
        if key.role not in ("staff", "admin"):
            raise ApiError(403, "forbidden", f"the review page is for staff; this key has "
                           f"the '{key.role}' role")
        token, session = store.create_session(key_id=key.id, ttl=ttl)
        who = SessionUser(name=key.name, display_name=key.name, role=key.role,  # type: ignore[arg-type]
                          kind="key")
    out = SessionOut(user=who, csrf_token=session.csrf_token, expires_at=session.expires_at)
    response = JSONResponse(out.model_dump(mode="json"))
    _set_session_cookie(request, response, token, settings)
    return response


@router.get("/v1/session", tags=["review"], response_model=SessionOut,
            responses={401: {"model": ErrorBody},
                       404: {"model": ErrorBody, "description": "no_session: the call "
                             "came with an API key, not a session cookie"}},
            summary="Who is signed in with this cookie, and the CSRF token")
def current_session(request: Request,
                    caller: Annotated[Caller, Depends(staff)]) -> SessionOut:
    session = getattr(request.state, "session", None)
    if session is None:
        raise ApiError(404, "no_session", "no session: this call authenticated with an "
                       "API key, not a session cookie")
    return SessionOut(
        user=SessionUser(name=caller.name, display_name=caller.display_name or caller.name,
                         role=caller.role, kind="user" if caller.user else "key",  # type: ignore[arg-type]
                         dialects=_declared_dialects(request, caller)),
        csrf_token=session.csrf_token, expires_at=session.expires_at)


@router.delete("/v1/session", tags=["review"], status_code=204,
               summary="Sign out (ends the session; the cookie is cleared)")
def sign_out(request: Request) -> Response:
    # no CSRF check: signing someone out is all a forged request could do here
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        _store(request).delete_session(token)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# --------------------------------------------------------------------------- the queue


@router.get("/v1/taxonomy", tags=["review"], response_model=TaxonomyOut,
            summary="Kinds, urgency levels and the categories a ticket may have")
def taxonomy(_: Annotated[Caller, Depends(require("submitter"))]) -> TaxonomyOut:
    rules = load_rules()
    return TaxonomyOut(kinds=list(KINDS), urgency_levels=["normal", "urgent"],
                       categories=[CategoryOut(code=c.code, label=c.label, group=c.group,
                                               path=list(c.path), department=c.department,
                                               time_limit_days=c.time_limit_days)
                                   for c in rules.categories])


@router.get("/v1/review/queue", tags=["review"], response_model=QueueOut,
            summary="Tickets for review: in the reviewer's dialects first, then urgent, "
                    "then least confident, then oldest")
def review_queue(
    request: Request,
    caller: Annotated[Caller, Depends(staff)],
    status: Literal["waiting", "new", "in_review", "reviewed", "all"] = "waiting",
    category: Annotated[str | None, Query(max_length=64, description="code or prefix")] = None,
    urgency: Literal["normal", "urgent"] | None = None,
    source: Literal["voice_note", "hotline", "message"] | None = None,
    created_from: IsoDateTime | None = None,
    created_to: IsoDateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 25,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
    dialect: Annotated[DialectFilter | None, Query(
        description="only tickets in this variety (one stored without it is mandarin), "
                    "or `unreadable`: those whose machine text cannot be read")] = None,
) -> QueueOut:
    """Before the rest of the order, for a signed-in user: tickets in a variety they
    declared (other than Mandarin) first, then the readable ones, and last those not
    readable in a variety they do not speak (a user with none declared speaks
    Mandarin). A ticket whose machine text cannot be read, in a variety another
    enabled user speaks, is left out of this user's queue unless `dialect` asks for
    it; a key's queue lists everything."""
    require_time_zones(created_from=created_from, created_to=created_to)
    statuses = {"waiting": WAITING_STATUSES, "all": TICKET_STATUSES}.get(status, (status,))
    settings = _settings(request)
    page, counts = _store(request).review_queue(
        statuses=statuses, category=category, urgency=urgency, source=source,
        created_from=created_from, created_to=created_to, limit=limit, offset=offset,
        dialect=dialect, speaks=spoken_dialects(_declared_dialects(request, caller)),
        route=bool(caller.user))
    items = []
    for row in page.items:
        doc = row.document
        segments = doc["transcript"]["segments"]
        items.append(QueueItem(
            id=row.id, created_at=row.created_at, source=row.source, kind=row.kind,
            category={"code": doc["category"]["code"], "label": doc["category"]["label"]},
            urgency=row.urgency, confidence=row.confidence,
            low_confidence_segments=sum(
                1 for s in segments
                if s["confidence"] < settings.review_confidence_below and s["text"]),
            duration_s=(doc.get("audio") or {}).get("duration_s"), summary=doc["summary"],
            status=row.status, revision=row.revision, updated_by=row.updated_by,
            review_flags=doc["review"]["flags"],
            variety=row.variety or "mandarin", readable=row.readable is not False))
    return QueueOut(items=items, total=page.total, counts=counts, limit=page.limit,
                    offset=page.offset, next_offset=page.next_offset)


# --------------------------------------------------------------------------- one ticket


@router.get("/v1/tickets/{ticket_id}/review", tags=["review"], response_model=ReviewView,
            responses={404: {"model": ErrorBody}},
            summary="A ticket as a reviewer sees it: document, revision, status")
def review_ticket(request: Request, ticket_id: str,
                  _: Annotated[Caller, Depends(staff)]) -> ReviewView:
    row = _store(request).get_ticket_row(ticket_id)
    if row is None:
        raise ApiError(404, "not_found", f"no ticket {ticket_id}")
    return view(row, _settings(request), _store(request))


_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such ticket"},
    409: {"model": ErrorBody, "description": "revision_conflict: the ticket was saved by "
                                             "someone else after the given revision"},
    422: {"model": ErrorBody, "description": "empty_text, text_too_long, unknown_category, "
                                             "unknown_segment or invalid_request"},
}


@router.patch("/v1/tickets/{ticket_id}", tags=["review"], response_model=ReviewView,
              responses=_WRITE_ERRORS, summary="Save corrections (a new revision)")
def save_ticket(request: Request, ticket_id: str, body: TicketEdit,
                caller: Annotated[Caller, Depends(staff)]) -> ReviewView:
    """Segment texts and ticket fields; `revision` is the one the reviewer started
    from. A save that changes nothing makes no revision (`changed: false`)."""
    revised = _revise(request, ticket_id, body, caller, "save")
    return view(revised.row, _settings(request), _store(request),
                changed=revised.revision is not None)


@router.post("/v1/tickets/{ticket_id}/approve", tags=["review"], response_model=ReviewView,
             responses=_WRITE_ERRORS,
             summary="Approve (with any last corrections) and publish the revised ticket")
def approve_ticket(request: Request, ticket_id: str, body: TicketEdit,
                   caller: Annotated[Caller, Depends(staff)]) -> ReviewView:
    """Marks the ticket reviewed and puts it on the complaint queue as
    ``ticket.revised`` with its new revision (same ticket id)."""
    revised = _revise(request, ticket_id, body, caller, "approve")
    return view(revised.row, _settings(request), _store(request),
                changed=bool(revised.changes),
                published_revision=revised.row.revision)


@router.get("/v1/tickets/{ticket_id}/revisions", tags=["review"],
            response_model=list[RevisionOut], responses={404: {"model": ErrorBody}},
            summary="Staff revisions, newest first, with before/after and differences")
def ticket_revisions(request: Request, ticket_id: str,
                     _: Annotated[Caller, Depends(staff)]) -> list[RevisionOut]:
    store = _store(request)
    if store.get_ticket_row(ticket_id) is None:
        raise ApiError(404, "not_found", f"no ticket {ticket_id}")
    return [
        RevisionOut(
            revision=entry.revision.revision, action=entry.revision.action,  # type: ignore[arg-type]
            author=entry.revision.author, created_at=entry.revision.created_at,
            comment=entry.revision.comment,
            changes=[ChangeOut(target_kind=c.target_kind, target=c.target,  # type: ignore[arg-type]
                               label=_label(c.target_kind, c.target), before=c.before,
                               after=c.after, diff=char_diff(c.before, c.after))
                     for c in entry.corrections])
        for entry in store.ticket_history(ticket_id)
    ]


# --------------------------------------------------------------------------- 重复件


class DuplicateOf(BaseModel):
    model_config = {"extra": "forbid"}

    first: str = Field(min_length=1, max_length=32, description="the first ticket's id: "
                                                                "the one this ticket repeats")


def repeat_error(e: sc.RepeatEditError) -> ApiError:
    """The store refused a staff change of repeats or clusters: 409 when the current
    state forbids it, 422 when the request is wrong; the field is named either way."""
    status, code = (409, "conflict") if e.conflict else (422, "invalid_request")
    return ApiError(status, code, str(e), details=[{"field": e.field, "problem": str(e)}])


_REPEAT_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such ticket"},
    409: {"model": ErrorBody, "description": "conflict: the first ticket is itself a repeat, "
                                             "this one repeats another or has repeats of "
                                             "its own, or it is not a repeat"},
    422: {"model": ErrorBody, "description": "invalid_request (a ticket repeating itself)"},
}


def _repeat_view(request: Request, ticket_id: str) -> ReviewView:
    row = _store(request).get_ticket_row(ticket_id)
    if row is None:
        raise ApiError(404, "not_found", f"no ticket {ticket_id}")
    return view(row, _settings(request), _store(request))


@router.put("/v1/tickets/{ticket_id}/duplicate-of", tags=["review"],
            response_model=ReviewView, responses=_REPEAT_ERRORS,
            summary="Mark the ticket as a repeat (重复件) of another (kept in the history)")
def mark_duplicate(request: Request, ticket_id: str, body: DuplicateOf,
                   caller: Annotated[Caller, Depends(staff)]) -> ReviewView:
    """The first ticket's `repeat_count` and this ticket's `duplicate_of` change in their
    documents (no new revision); marking it again as the same is a no-op."""
    try:
        sc.link_duplicate(_store(request), ticket_id, body.first, author=caller.author)
    except LookupError as e:
        raise ApiError(404, "not_found", str(e)) from None
    except sc.RepeatEditError as e:
        raise repeat_error(e) from None
    return _repeat_view(request, ticket_id)


@router.delete("/v1/tickets/{ticket_id}/duplicate-of", tags=["review"],
               response_model=ReviewView, responses=_REPEAT_ERRORS,
               summary="The ticket is not a repeat after all (kept in the history)")
def unmark_duplicate(request: Request, ticket_id: str,
                     caller: Annotated[Caller, Depends(staff)]) -> ReviewView:
    try:
        sc.unlink_duplicate(_store(request), ticket_id, author=caller.author)
    except LookupError as e:
        raise ApiError(404, "not_found", str(e)) from None
    except sc.RepeatEditError as e:
        raise repeat_error(e) from None
    return _repeat_view(request, ticket_id)
