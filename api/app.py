"""The HTTP API: voice-note and message intake, jobs, tickets, Open311, health, admin.

`create_app` wires the parts: the lifespan (store, blobs, dispatcher, upkeep),
middleware, error handlers and one router per resource (`api/routers/`). Routes are
thin: intake is `pipeline.jobs.accept_upload` / `pipeline.messages.accept_message`,
reads go to the `Store`, hand-off to workers is the dispatcher (`workers.runtime`).
Without ``MINYIN_REDIS_URL`` the same process runs the jobs in threads (embedded mode).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from api import errors, openapi, review
from api.auth import RateLimits
from api.errors import COMMON_ERRORS, error_response
from api.metrics import StoreCollector
from api.middleware import PAGE_HEADERS, UPLOAD_PATH, BodyTooLarge, PageHeaders, UploadSizeLimit
from api.routers import (
    clusters,
    health,
    jobs,
    keys,
    messages,
    models,
    open311,
    tickets,
    voice_notes,
)
from api.routers.jobs import JobOut, job_out
from api.routers.keys import KeyIn, KeyOut, key_out
from api.routers.tickets import TicketList
from api.routers.voice_notes import UploadOut
from pipeline.config import Settings, get_settings
from pipeline.jobs import JobContext, blob_store
from pipeline.process import VoicePipeline
from pipeline.store import Store
from workers.runtime import Dispatcher, Maintenance, make_dispatcher

STATIC_DIR = Path(__file__).resolve().parent / "static"

__all__ = [  # what api.app exported before the routers existed
    "PAGE_HEADERS", "STATIC_DIR", "UPLOAD_PATH", "BodyTooLarge", "JobOut", "KeyIn",
    "KeyOut", "PageHeaders", "TicketList", "UploadOut", "UploadSizeLimit", "create_app",
    "job_out", "key_out",
]

DESCRIPTION = (
    "Upload a voice note or send a typed message, follow its job, read the ticket (as "
    "JSON, as a 12345 work order, or through Open311 GeoReport v2 under /open311/v2); "
    "staff review, correct and approve tickets (the routes tagged *review*, which the "
    "staff page at [/review](/review/) uses). Every route but /healthz, /readyz, sign-in "
    "and this documentation needs `Authorization: Bearer <API key>` (`minyin keys "
    "create`) or the review page's session cookie, whose writes also need the "
    "`X-CSRF-Token` header. Errors are `{\"error\": {\"code\", \"message\"}}` "
    "(Open311's routes answer in the spec's own error shape)."
)


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

    app = FastAPI(title="minyin (民音)", version="1",
                  summary="Citizens' voice complaints to structured tickets",
                  description=DESCRIPTION, lifespan=lifespan, responses=COMMON_ERRORS,
                  dependencies=[Depends(errors.single_query_values)])
    errors.install(app)
    app.add_exception_handler(open311.Open311Error, open311.open311_error_response)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "too_large", str(exc), headers={"Connection": "close"})

    app.add_middleware(UploadSizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(PageHeaders)

    # the staff review page and its API
    app.include_router(review.router)
    app.include_router(clusters.router)
    app.mount("/review", StaticFiles(directory=STATIC_DIR / "review", html=True),
              name="review")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/review/")

    for module in (health, voice_notes, jobs, messages, tickets, keys, models, open311):
        app.include_router(module.router)
    openapi.install(app)
    return app
