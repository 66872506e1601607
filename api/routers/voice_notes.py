"""Voice-note uploads: the audio is checked and stored, then a job is handed on."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from api.auth import Caller, upload_rate
from api.deps import BlobsDep, SettingsDep, StoreDep
from api.errors import ApiError, ErrorBody
from api.middleware import UPLOAD_PATH
from api.routers.jobs import JobOut, job_out
from asr.profiles import available_profiles
from pipeline.audio import AudioError
from pipeline.jobs import INTAKE_STATUS, accept_upload

log = logging.getLogger(__name__)
router = APIRouter(tags=["voice notes"])


class UploadOut(JobOut):
    duplicate: bool = Field(description="true: this upload matched an existing job "
                                        "(same client_ref, or the same audio resent)")


@router.post(
    UPLOAD_PATH, status_code=202, response_model=UploadOut,
    summary="Upload a voice note; answers once the audio is safely stored",
    responses={200: {"model": UploadOut, "description": "an existing job (duplicate)"},
               400: {"model": ErrorBody}, 413: {"model": ErrorBody},
               415: {"model": ErrorBody}, 422: {"model": ErrorBody},
               503: {"model": ErrorBody}},
)
async def upload(
    request: Request,
    store: StoreDep,
    blobs: BlobsDep,
    settings: SettingsDep,
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
    try:
        accepted = await run_in_threadpool(
            accept_upload, store, blobs, settings, audio.file,
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
        job = store.get_job(job.id) or job
    body = {**job_out(job), "duplicate": not accepted.created}
    return JSONResponse(body, status_code=202 if accepted.created else 200,
                        headers={"Location": body["status_url"]})
