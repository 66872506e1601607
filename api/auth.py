"""API keys (``Authorization: Bearer mny_...``), staff sessions, roles and rate limits.

Two ways in, both giving a `Caller`:
- an API key in the Authorization header (apps, scripts, the hotline back end);
- the review page's session cookie (``minyin_session``: HttpOnly, SameSite=Strict, made
  by ``POST /v1/session`` from a staff user's password or a staff key). A write through
  the cookie must also carry the session's CSRF token in ``X-CSRF-Token``: a cookie is
  sent by the browser on its own, a header only by our page's script.
Passwords are argon2id hashes (`hash_password`), never stored or logged as given.

Roles: ``submitter`` uploads and reads its own jobs and tickets; ``staff`` reads all,
listens to audio and corrects; ``admin`` may do everything, keys and models included.
Rates are counted per key with `limits` (moving window): in memory in embedded mode,
in Redis when it is configured so that several API processes share one count. A rate
store that is down lets requests through (logged): availability beats throttling.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from api.errors import ApiError
from pipeline.config import Settings
from pipeline.store import ApiKey, StaffUser, Store

log = logging.getLogger(__name__)

ROLE_RANK = {"submitter": 0, "staff": 1, "admin": 2}

SESSION_COOKIE = "minyin_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_PASSWORD_CHARS = 10

bearer = HTTPBearer(auto_error=False, description="an API key from `minyin keys create`")
# argon2id with the library's defaults (RFC 9106's second recommended setting)
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    return _hasher.hash(password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash("not a password of anyone")


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists (no user-name probing by timing)."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and (
            password_hash is not None)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Caller:
    key_id: str  # the API key's id, or the staff user's id for a user's session
    name: str
    role: str
    via: Literal["key", "session"] = "key"
    user: bool = False  # signed in as a staff user (not with a key)
    display_name: str | None = None

    def at_least(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    @property
    def author(self) -> str:
        """How revisions and corrections name this caller."""
        return self.name if self.user else f"key:{self.name}"


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
        self.logins = parse_many(settings.login_rate_limit)

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


def _session_caller(request: Request, token: str) -> Caller:
    found = _store(request).get_session(token)
    if found is None:
        raise ApiError(401, "unauthorized", "the session has ended; sign in again",
                       headers={"WWW-Authenticate": "Bearer"})
    session, who = found
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent, session.csrf_token):
            raise ApiError(403, "csrf_failed", f"a write with the session cookie needs the "
                           f"session's token in the {CSRF_HEADER} header")
    request.state.session = session
    if isinstance(who, StaffUser):
        return Caller(key_id=who.id, name=who.username, role=who.role, via="session",
                      user=True, display_name=who.display_name)
    return Caller(key_id=who.id, name=who.name, role=who.role, via="session")


def authenticate(request: Request,
                 creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
                 ) -> Caller:
    if creds is None or not creds.credentials:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            caller = _session_caller(request, token)
            _limits(request).check(_limits(request).general, "api", caller.key_id)
            return caller
        raise ApiError(401, "unauthorized", "an API key is required: "
                       "'Authorization: Bearer <key>' (or the review page's session)",
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
