"""API keys (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.auth import Caller, require
from api.deps import StoreDep
from api.errors import ApiError, ErrorBody
from pipeline.store import ApiKey

router = APIRouter(tags=["admin"])
_admin = require("admin")


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


def key_out(row: ApiKey, plain: str | None = None) -> KeyOut:
    return KeyOut(id=row.id, name=row.name, role=row.role, prefix=row.key_prefix,
                  created_at=row.created_at, revoked_at=row.revoked_at, key=plain)


@router.post("/v1/keys", status_code=201, response_model=KeyOut,
             summary="Create an API key (the secret is in this answer only)")
def create_key(body: KeyIn, store: StoreDep,
               _: Annotated[Caller, Depends(_admin)]) -> KeyOut:
    plain, row = store.create_api_key(body.name, body.role)
    return key_out(row, plain)


@router.get("/v1/keys", response_model=list[KeyOut], summary="API keys")
def list_keys(store: StoreDep, _: Annotated[Caller, Depends(_admin)]) -> list[KeyOut]:
    return [key_out(r) for r in store.list_api_keys()]


@router.delete("/v1/keys/{key_id}", status_code=204, responses={404: {"model": ErrorBody}},
               summary="Revoke an API key")
def revoke_key(key_id: str, store: StoreDep, _: Annotated[Caller, Depends(_admin)]) -> Response:
    if not store.revoke_api_key(key_id):
        raise ApiError(404, "not_found", f"no active key {key_id}")
    return Response(status_code=204)
