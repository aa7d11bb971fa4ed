"""FastAPI dependencies: settings, a database session, the Redis connection, the owner.

Each is a small function so that a test can replace it with
``app.dependency_overrides``; the settings default to the ones the app was
created with (``app.state.settings``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from sqlalchemy.orm import Session

from core.auth import digest
from core.db import keys
from core.db.models import LOCAL_OWNER
from core.db.session import session_factory
from core.queue import redis_from_url
from core.settings import Settings
from service.ratelimit import retry_after


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with.

    ``async`` (it never blocks) so that FastAPI runs it on the event loop: a
    sync dependency costs every request a hop through the thread pool.
    """
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """A session per request; the repositories commit, anything left over is rolled back."""
    with session_factory(settings.database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@functools.cache
def _redis(url: str) -> Redis:
    # One client (and connection pool) per URL for the life of the process.
    return redis_from_url(url)


async def get_redis(settings: SettingsDep) -> Redis:
    """The Redis connection RQ jobs are queued on (a client object: nothing blocks here)."""
    return _redis(settings.redis_url)


RedisDep = Annotated[Redis, Depends(get_redis)]


_bearer = HTTPBearer(auto_error=False, description="An API key from `prunesearch keys create`.")


def get_owner(
    settings: SettingsDep,
    session: SessionDep,
    redis: RedisDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Who is asking: the owner of the Bearer key, or ``local`` when auth is off.

    Raises 401 (with ``WWW-Authenticate: Bearer``) for a missing, malformed,
    unknown or revoked key; the reason is the same for all of them. Each key
    may make ``rate_limit`` requests in any sliding minute; beyond that, 429
    with ``Retry-After`` (:mod:`service.ratelimit`).
    """
    if settings.auth == "none":
        owner, subject = LOCAL_OWNER, LOCAL_OWNER
    else:
        owner = None
        if credentials is not None and credentials.scheme.lower() == "bearer":
            owner = keys.owner_of(session, credentials.credentials)
        if owner is None:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="a valid API key is required (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        assert credentials is not None  # owner_of found the key
        subject = digest(credentials.credentials)[:16]
    if settings.rate_limit > 0:
        wait = retry_after(redis, subject, settings.rate_limit)
        if wait is not None:
            raise HTTPException(
                status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                detail=f"rate limit of {settings.rate_limit} requests in any minute reached "
                f"(PRUNESEARCH_RATE_LIMIT); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
    assert owner is not None
    return owner


OwnerDep = Annotated[str, Depends(get_owner)]
