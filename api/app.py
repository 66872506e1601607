"""The HTTP API: voice-note uploads, jobs, tickets, health and metrics.

Routes are thin: intake is `pipeline.jobs.accept_upload`, reads go to the `Store`,
hand-off to workers is the dispatcher (`workers.runtime`). Without
``MINYIN_REDIS_URL`` the same process runs the jobs in threads (embedded mode).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, review
from api.auth import Caller, RateLimits, require, upload_rate
from api.errors import (
    COMMON_ERRORS,
    ApiError,
    ErrorBody,
    error_response,
    require_time_zones,
)
from api.metrics import StoreCollector
from asr.profiles import available_profiles
from pipeline.audio import AudioError, sniff_format, write_playable_wav
from pipeline.blobs import BlobStore
from pipeline.config import Settings, get_settings
from pipeline.jobs import INTAKE_STATUS, JobContext, accept_upload, blob_store
from pipeline.language_model import current_lm_spec
from pipeline.models import current_spec
from pipeline.process import VoicePipeline
from pipeline.store import ApiKey, Job, Store, TicketRow
from workers.runtime import Dispatcher, Maintenance, make_dispatcher

log = logging.getLogger(__name__)

UPLOAD_PATH = "/v1/voice-notes"
STATIC_DIR = Path(__file__).resolve().parent / "static"
# multipart framing and the small form fields on top of the audio itself
_FORM_OVERHEAD = 64 * 1024
_MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "mp4": "audio/mp4", "3gp": "audio/3gpp",
         "amr": "audio/amr", "ogg": "audio/ogg", "webm": "audio/webm", "flac": "audio/flac",
         "aac": "audio/aac", "silk": "audio/silk", "caf": "audio/x-caf",
         "aiff": "audio/aiff", "mkv": "audio/x-matroska", "asf": "audio/x-ms-wma"}


# --------------------------------------------------------------------------- models


class JobOut(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    queue: str
    status_url: str
    ticket_id: str | None = Field(None, description="set once the job is done")
    ticket_url: str | None = None
    failure_code: str | None = None
    failure_reason: str | None = None
    attempts: int
    client_ref: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    audio_seconds: float | None = None
    processing_seconds: float | None = None


class UploadOut(JobOut):
    duplicate: bool = Field(description="true: this upload matched an existing job "
                                        "(same client_ref, or the same audio resent)")


class TicketList(BaseModel):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class KeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Literal["submitter", "staff", "admin"]


class KeyOut(BaseModel):
    id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    key: str | None = Field(None, description="the secret; shown only once, on creation")


def job_out(job: Job) -> dict[str, Any]:
    return JobOut(
        job_id=job.id, status=job.status, queue=job.queue,  # type: ignore[arg-type]
        status_url=f"/v1/jobs/{job.id}", ticket_id=job.ticket_id,
        ticket_url=f"/v1/tickets/{job.ticket_id}" if job.ticket_id else None,
        failure_code=job.failure_code, failure_reason=job.failure_reason,
        attempts=job.attempts, client_ref=job.client_ref, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
        audio_seconds=job.audio_seconds, processing_seconds=job.processing_seconds,
    ).model_dump(mode="json")


def key_out(row: ApiKey, plain: str | None = None) -> KeyOut:
    return KeyOut(id=row.id, name=row.name, role=row.role, prefix=row.key_prefix,
                  created_at=row.created_at, revoked_at=row.revoked_at, key=plain)


# --------------------------------------------------------------------------- upload size


class BodyTooLarge(Exception):
    pass


class UploadSizeLimit:
    """Refuses an upload body over the limit before it is spooled to disk: at once by
    its Content-Length, or, for a chunked body, as soon as the count passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes + _FORM_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, "too_large", self._message(int(declared)),
                                      headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0
        refused: str | None = None

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = self._message(seen, at_least=True)
                    raise BodyTooLarge(refused)
            return message

        async def guarded_send(message: Message) -> None:
            # FastAPI turns any error while it parses a form into its own 400; the
            # answer to a body over the limit is ours to give
            if refused is None:
                await send(message)
            elif message["type"] == "http.response.start":
                await error_response(413, "too_large", refused,
                                     headers={"Connection": "close"})(scope, receive, send)

        await self.app(scope, counted, guarded_send)

    def _message(self, size: int, at_least: bool = False) -> str:
        limit_mb = (self.max_bytes - _FORM_OVERHEAD) / 1024 / 1024
        got = f"{'over ' if at_least else ''}{size / 1024 / 1024:.1f} MB"
        return f"the upload is {got}; the limit is {limit_mb:.0f} MB"


# --------------------------------------------------------------------------- page headers

# The review page loads only its own files; it may not be framed (clickjacking) and
# plays audio from this origin.
PAGE_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; "
     b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class PageHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/review"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *PAGE_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


# --------------------------------------------------------------------------- app


def create_app(settings: Settings | None = None, *, dispatcher: Dispatcher | None = None,
               maintenance: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.from_settings(settings, migrate=True)
        blobs = blob_store(settings)
        nonlocal dispatcher
        if dispatcher is None:
            ctx = None if settings.redis_url else JobContext(
                settings=settings, store=store, blobs=blobs,
                pipeline=VoicePipeline(settings))
            dispatcher = make_dispatcher(settings, ctx, store)
        app.state.settings = settings
        app.state.store = store
        app.state.blobs = blobs
        app.state.dispatcher = dispatcher
        app.state.rate_limits = RateLimits(settings)
        dispatcher.start()
        upkeep = Maintenance(settings, store, dispatcher) if maintenance else None
        if upkeep is not None:
            upkeep.start()
        # the store's gauges per app (tests run several apps in one process); the
        # process-wide metrics (histograms of the pipeline) stay in the default REGISTRY
        app.state.registry = CollectorRegistry(auto_describe=True)
        app.state.registry.register(StoreCollector(store, dispatcher))
        try:
            yield
        finally:
            if upkeep is not None:
                upkeep.stop()
            dispatcher.stop()
            store.dispose()

    app = FastAPI(
        title="minyin (民音)",
        version="1",
        summary="Citizens' voice complaints to structured tickets",
        description="Upload a voice note, follow its job, read the ticket; staff review, "
        "correct and approve tickets (the routes tagged *review*, which the staff page "
        "at [/review](/review/) uses). Every route but /healthz, /readyz, sign-in and this "
        "documentation needs `Authorization: Bearer <API key>` (`minyin keys create`) or "
        "the review page's session cookie, whose writes also need the `X-CSRF-Token` "
        "header. Errors are `{\"error\": {\"code\", \"message\"}}`.",
        lifespan=lifespan,
        responses=COMMON_ERRORS,
    )
    errors.install(app)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "too_large", str(exc), headers={"Connection": "close"})

    app.add_middleware(UploadSizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(PageHeaders)

    def store_of(request: Request) -> Store:
        return request.app.state.store

    def blobs_of(request: Request) -> BlobStore:
        return request.app.state.blobs

    def own_job(request: Request, job_id: str, caller: Caller) -> Job:
        job = store_of(request).get_job(job_id)
        # another submitter's job is "not found": its existence is not theirs to learn
        if job is None or (not caller.at_least("staff") and job.submitter_id != caller.key_id):
            raise ApiError(404, "not_found", f"no job {job_id}")
        return job

    def own_ticket(request: Request, ticket_id: str, caller: Caller) -> TicketRow:
        store = store_of(request)
        row = store.get_ticket_row(ticket_id)
        if row is not None and not caller.at_least("staff"):
            job = store.get_job(row.job_id) if row.job_id else None
            if job is None or job.submitter_id != caller.key_id:
                row = None
        if row is None:
            raise ApiError(404, "not_found", f"no ticket {ticket_id}")
        return row

    def ticket_doc(row: TicketRow, caller: Caller) -> dict[str, Any]:
        # staff call citizens back: they see the number; a submitter sees it masked
        return row.document if caller.at_least("staff") else row.ticket.public_dict()

    # -- the staff review page and its API --------------------------------------------

    app.include_router(review.router)
    app.mount("/review", StaticFiles(directory=STATIC_DIR / "review", html=True),
              name="review")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/review/")

    # -- health ---------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], summary="The process is up (no auth)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}},
             summary="Model loaded, store and broker reachable (no auth)")
    def readyz(request: Request) -> JSONResponse:
        checks: dict[str, Any] = {}
        ok = True
        try:
            store_of(request).ping()
            checks["store"] = "ok"
        except Exception as e:
            ok, checks["store"] = False, f"unreachable: {type(e).__name__}"
        workers = request.app.state.dispatcher.readiness()
        ok = ok and bool(workers.pop("ready"))
        checks.update(workers)
        return JSONResponse({"status": "ready" if ok else "not_ready", **checks},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse,
             summary="Prometheus metrics (staff key)")
    def metrics(request: Request,
                _: Annotated[Caller, Depends(require("staff"))]) -> Response:
        body = generate_latest(REGISTRY) + generate_latest(request.app.state.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # -- voice notes and jobs -------------------------------------------------------

    @app.post(
        UPLOAD_PATH, status_code=202, tags=["voice notes"], response_model=UploadOut,
        summary="Upload a voice note; answers once the audio is safely stored",
        responses={200: {"model": UploadOut, "description": "an existing job (duplicate)"},
                   400: {"model": ErrorBody}, 413: {"model": ErrorBody},
                   415: {"model": ErrorBody}, 422: {"model": ErrorBody},
                   503: {"model": ErrorBody}},
    )
    async def upload(
        request: Request,
        audio: Annotated[UploadFile, File(description="the voice note (AMR, M4A, MP3, "
                                                      "OGG/Opus, WAV, SILK, ...)")],
        caller: Annotated[Caller, Depends(upload_rate)],
        phone: Annotated[str | None, Form(max_length=32, pattern=r"^[0-9+\-() ]{3,32}$")] = None,
        lat: Annotated[float | None, Form(ge=-90, le=90)] = None,
        lon: Annotated[float | None, Form(ge=-180, le=180)] = None,
        address: Annotated[str | None, Form(max_length=500)] = None,
        dialect: Annotated[str | None, Form(max_length=64)] = None,
        client_ref: Annotated[str | None, Form(max_length=128)] = None,
    ) -> JSONResponse:
        if (lat is None) != (lon is None):
            raise ApiError(422, "invalid_request", "give both lat and lon, or neither")
        # only installed profiles by name: load_profile also takes paths, which a client
        # must not be able to point at files on the server
        if dialect and dialect not in available_profiles():
            raise ApiError(422, "unknown_dialect",
                           f"no dialect profile '{dialect}'; known: "
                           f"{', '.join(available_profiles())}")
        settings_: Settings = request.app.state.settings
        try:
            accepted = await run_in_threadpool(
                accept_upload, store_of(request), blobs_of(request), settings_, audio.file,
                filename=audio.filename, submitter_id=caller.key_id, client_ref=client_ref,
                queue="voice", dialect=dialect, phone=phone, lat=lat, lon=lon,
                address=address,
            )
        except AudioError as e:
            status = INTAKE_STATUS.get(e.code, 422)
            code = {"too_long": "audio_too_long", "not_audio": "not_audio"}.get(
                e.code, e.code if status != 422 else f"unreadable_audio.{e.code}")
            raise ApiError(status, code, str(e)) from None
        except OSError as e:  # disk full, store directory unwritable
            log.exception("upload could not be stored")
            raise ApiError(503, "unavailable", f"the audio could not be stored ({e})",
                           headers={"Retry-After": "30"}) from None
        job = accepted.job
        if accepted.created:
            # the job is stored: a broker that is down now only delays it (the sweep)
            await run_in_threadpool(request.app.state.dispatcher.submit, job)
            job = store_of(request).get_job(job.id) or job
        body = {**job_out(job), "duplicate": not accepted.created}
        return JSONResponse(body, status_code=202 if accepted.created else 200,
                            headers={"Location": body["status_url"]})

    @app.get("/v1/jobs/{job_id}", tags=["voice notes"], response_model=JobOut,
             responses={404: {"model": ErrorBody}}, summary="A job's state")
    def get_job(request: Request, job_id: str,
                caller: Annotated[Caller, Depends(require("submitter"))]) -> dict[str, Any]:
        return job_out(own_job(request, job_id, caller))

    # -- tickets --------------------------------------------------------------------

    @app.get("/v1/tickets", tags=["tickets"], response_model=TicketList,
             summary="Tickets, newest first (a submitter sees its own)")
    def list_tickets(
        request: Request,
        caller: Annotated[Caller, Depends(require("submitter"))],
        status: Literal["new", "in_review", "reviewed"] | None = None,
        category: Annotated[str | None, Query(max_length=64,
                                              description="code or prefix")] = None,
        urgency: Literal["normal", "urgent"] | None = None,
        needs_review: bool | None = None,
        source: Literal["voice_note", "hotline"] | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        require_time_zones(created_from=created_from, created_to=created_to)
        page = store_of(request).list_tickets(
            status=status, category=category, urgency=urgency, needs_review=needs_review,
            source=source, created_from=created_from, created_to=created_to, limit=limit,
            offset=offset,
            submitter_id=None if caller.at_least("staff") else caller.key_id,
        )
        return {"items": [ticket_doc(r, caller) for r in page.items], "total": page.total,
                "limit": page.limit, "offset": page.offset, "next_offset": page.next_offset}

    @app.get("/v1/tickets/{ticket_id}", tags=["tickets"],
             responses={404: {"model": ErrorBody}}, summary="One ticket")
    def get_ticket(request: Request, ticket_id: str,
                   caller: Annotated[Caller, Depends(require("submitter"))]
                   ) -> dict[str, Any]:
        return ticket_doc(own_ticket(request, ticket_id, caller), caller)

    @app.get("/v1/tickets/{ticket_id}/audio", tags=["tickets"], response_class=FileResponse,
             responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
             summary="The audio (staff): the original, or a WAV any browser plays")
    def ticket_audio(
        request: Request, ticket_id: str, caller: Annotated[Caller, Depends(require("staff"))],
        format: Annotated[Literal["original", "wav"], Query(
            description="original: the bytes as received; wav: 16 kHz PCM, every "
                        "channel, seekable (browsers play no AMR or SILK)")] = "original",
    ) -> FileResponse:
        row = own_ticket(request, ticket_id, caller)
        job = store_of(request).get_job(row.job_id) if row.job_id else None
        blobs = blobs_of(request)
        if job is None or not blobs.exists(job.audio_sha256):
            raise ApiError(404, "not_found", f"ticket {ticket_id} has no stored audio")
        path = blobs.path(job.audio_sha256)
        if format == "wav":
            settings_: Settings = request.app.state.settings
            wav = settings_.data_dir / "renditions" / f"{job.audio_sha256}.wav"
            if not wav.exists():
                try:
                    write_playable_wav(path, wav)
                except AudioError as e:
                    raise ApiError(422, f"unreadable_audio.{e.code}", str(e)) from None
            return FileResponse(wav, media_type="audio/wav",
                                filename=f"{ticket_id}.wav", content_disposition_type="inline")
        with path.open("rb") as fh:
            fmt = sniff_format(fh.read(64 * 1024))
        name = job.audio_filename or f"{ticket_id}.{fmt or 'bin'}"
        return FileResponse(path, media_type=_MIME.get(fmt or "", "application/octet-stream"),
                            filename=name)

    # -- admin ----------------------------------------------------------------------

    @app.post("/v1/keys", tags=["admin"], status_code=201, response_model=KeyOut,
              summary="Create an API key (the secret is in this answer only)")
    def create_key(request: Request, body: KeyIn,
                   _: Annotated[Caller, Depends(require("admin"))]) -> KeyOut:
        plain, row = store_of(request).create_api_key(body.name, body.role)
        return key_out(row, plain)

    @app.get("/v1/keys", tags=["admin"], response_model=list[KeyOut], summary="API keys")
    def list_keys(request: Request,
                  _: Annotated[Caller, Depends(require("admin"))]) -> list[KeyOut]:
        return [key_out(r) for r in store_of(request).list_api_keys()]

    @app.delete("/v1/keys/{key_id}", tags=["admin"], status_code=204,
                responses={404: {"model": ErrorBody}}, summary="Revoke an API key")
    def revoke_key(request: Request, key_id: str,
                   _: Annotated[Caller, Depends(require("admin"))]) -> Response:
        if not store_of(request).revoke_api_key(key_id):
            raise ApiError(404, "not_found", f"no active key {key_id}")
        return Response(status_code=204)

    @app.get("/v1/models", tags=["admin"], summary="The model the workers load")
    def models(request: Request,
               _: Annotated[Caller, Depends(require("admin"))]) -> dict[str, Any]:
        s: Settings = request.app.state.settings
        # the registry's current model (minyin models promote), else MINYIN_MODEL
        return {"model": current_spec(store_of(request), s), "default_model": s.model,
                # the character LM for rescoring and correction (minyin lm promote)
                "language_model": current_lm_spec(store_of(request), s),
                "default_language_model": s.lm,
                "device": s.device, "compute_type": s.compute_type,
                "batch_size": s.batch_size, "beam_size": s.beam_size,
                "dialects": available_profiles()}

    return app
