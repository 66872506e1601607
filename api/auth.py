"""API keys (``Authorization: Bearer mny_...``), roles and per-key rate limits.

Roles: ``submitter`` uploads and reads its own jobs and tickets; ``staff`` reads all,
listens to audio and corrects; ``admin`` may do everything, keys and models included.
Rates are counted per key with `limits` (moving window): in memory in embedded mode,
in Redis when it is configured so that several API processes share one count. A rate
store that is down lets requests through (logged): availability beats throttling.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from api.errors import ApiError
from pipeline.config import Settings
from pipeline.store import ApiKey, Store

log = logging.getLogger(__name__)

ROLE_RANK = {"submitter": 0, "staff": 1, "admin": 2}

bearer = HTTPBearer(auto_error=False, description="an API key from `minyin keys create`")


@dataclass(frozen=True)
class Caller:
    key_id: str
    name: str
    role: str

    def at_least(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        storage: Storage
        if settings.redis_url:
            storage = RedisStorage(settings.redis_url,
                                   key_prefix=f"{settings.redis_prefix}:rate",
                                   socket_timeout=1, socket_connect_timeout=1)
        else:
            storage = MemoryStorage()
        self.limiter = MovingWindowRateLimiter(storage)
        self.general = parse_many(settings.rate_limit)
        self.uploads = parse_many(settings.upload_rate_limit)

    def check(self, items: list[RateLimitItem], scope: str, key_id: str) -> None:
        for item in items:
            try:
                allowed = self.limiter.hit(item, scope, key_id)
            except Exception as e:  # rate store away: let it through
                log.warning("rate limit check failed (%s); allowing", e)
                return
            if not allowed:
                stats = self.limiter.get_window_stats(item, scope, key_id)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                raise ApiError(429, "rate_limited",
                               f"this key may make {item} requests ({scope}); "
                               f"retry in {retry} s",
                               headers={"Retry-After": str(retry)})


def _store(request: Request) -> Store:
    return request.app.state.store


def _limits(request: Request) -> RateLimits:
    return request.app.state.rate_limits


def authenticate(request: Request,
                 creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
                 ) -> Caller:
    if creds is None or not creds.credentials:
        raise ApiError(401, "unauthorized", "an API key is required: "
                       "'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    row: ApiKey | None = _store(request).verify_api_key(creds.credentials.strip())
    if row is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key",
                       headers={"WWW-Authenticate": "Bearer"})
    caller = Caller(key_id=row.id, name=row.name, role=row.role)
    _limits(request).check(_limits(request).general, "api", caller.key_id)
    return caller


def require(role: str) -> Callable[..., Caller]:
    """A dependency: the caller, if its role is `role` or above; 403 otherwise."""

    def dependency(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if not caller.at_least(role):
            raise ApiError(403, "forbidden",
                           f"this needs the '{role}' role; the key has '{caller.role}'")
        return caller

    dependency.__name__ = f"require_{role}"
    return dependency


_submitter = require("submitter")


def upload_rate(request: Request, caller: Annotated[Caller, Depends(_submitter)]) -> Caller:
    limits = _limits(request)
    limits.check(limits.uploads, "uploads", caller.key_id)
    return caller
