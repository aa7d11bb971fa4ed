"""FastAPI dependencies: settings, a database session, the Redis connection, the owner.

Each is a small function so that a test can replace it with
``app.dependency_overrides``; the settings default to the ones the app was
created with (``app.state.settings``).

The read path is cheap on purpose (issue 14: dashboards poll): the settings,
the session, the owner and the rate limit are resolved on the event loop, so a
read route costs one hop through the thread pool (its own body), not four.
The owner comes from an in-process cache of API keys (``core.db.keys``: a key
revoked elsewhere works here for at most ``KEY_CACHE_TTL_S`` seconds more);
only a key not seen lately is looked up in the database, in the thread pool.
The rate limit is one ``EVALSHA`` on an asyncio Redis client.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy.orm import Session

from core.auth import digest
from core.db import keys
from core.db.models import LOCAL_OWNER
from core.db.session import read_session_factory, session_factory
from core.queue import redis_from_url
from core.settings import Settings
from service.ratelimit import Admissions


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with.

    ``async`` (it never blocks) so that FastAPI runs it on the event loop: a
    sync dependency costs every request a hop through the thread pool.
    """
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    """A session per request; the repositories commit, anything left over is rolled back.

    Made on the event loop (a session connects only when first used, in the route's
    thread). Closing it returns the connection with a rollback: on the loop for SQLite
    (a library call, no I/O to wait for), in the thread pool for a database server.
    """
    session = session_factory(settings.database_url)()
    try:
        yield session
    finally:
        if session.get_bind().dialect.name == "sqlite":
            session.close()
        else:
            await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_session)]


async def get_read_session(settings: SettingsDep) -> AsyncIterator[Session]:
    """A session for a route that only reads (:func:`core.db.session.read_session_factory`).

    Closed on the event loop: on a database server its connection is in autocommit, so
    handing it back to the pool sends nothing.
    """
    session = read_session_factory(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


ReadSessionDep = Annotated[Session, Depends(get_read_session)]


@functools.cache
def _redis(url: str) -> Redis:
    # One client (and connection pool) per URL for the life of the process.
    return redis_from_url(url)


async def get_redis(settings: SettingsDep) -> Redis:
    """The Redis connection RQ jobs are queued on (a client object: nothing blocks here)."""
    return _redis(settings.redis_url)


RedisDep = Annotated[Redis, Depends(get_redis)]

# One asyncio client per event loop and URL: its connections belong to the loop they
# were made on (uvicorn has one loop; each TestClient has its own).
_ADMISSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Admissions]] = (
    weakref.WeakKeyDictionary()
)


def _admissions(url: str) -> Admissions:
    """The rate limiter of the running loop for the Redis at ``url``."""
    limiters = _ADMISSIONS.setdefault(asyncio.get_running_loop(), {})
    limiter = limiters.get(url)
    if limiter is None:
        client = AsyncRedis.from_url(url, socket_connect_timeout=3, health_check_interval=30)
        limiter = limiters[url] = Admissions(client)
    return limiter


def _owner_from_database(url: str, plain: str) -> str | None:
    with session_factory(url)() as session:
        return keys.owner_of(session, plain)


_bearer = HTTPBearer(auto_error=False, description="An API key from `prunesearch keys create`.")


async def get_owner(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Who is asking: the owner of the Bearer key, or ``local`` when auth is off.

    Raises 401 (with ``WWW-Authenticate: Bearer``) for a missing, malformed,
    unknown or revoked key; the reason is the same for all of them. Each key
    may make ``rate_limit`` requests in any sliding minute; beyond that, 429
    with ``Retry-After`` (:mod:`service.ratelimit`). A key seen valid in the last
    ``keys.KEY_CACHE_TTL_S`` seconds is not looked up again.
    """
    if settings.auth == "none":
        owner, subject = LOCAL_OWNER, LOCAL_OWNER
    else:
        owner = None
        if credentials is not None and credentials.scheme.lower() == "bearer":
            plain = credentials.credentials
            owner = keys.cached_owner(plain)
            if owner is None:
                owner = await run_in_threadpool(_owner_from_database, settings.database_url, plain)
        if owner is None:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="a valid API key is required (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        assert credentials is not None  # owner_of found the key
        subject = rate_subject(credentials.credentials)
    wait = await rate_wait(settings, subject)
    if wait is not None:
        raise HTTPException(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"rate limit of {settings.rate_limit} requests in any minute reached "
            f"(PRUNESEARCH_RATE_LIMIT); retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    assert owner is not None
    return owner


def rate_subject(plain: str) -> str:
    """Whose rate-limit budget a request with API key ``plain`` spends (not the key itself)."""
    return digest(plain)[:16]


async def rate_wait(settings: Settings, subject: str) -> int | None:
    """Count one request of ``subject``; seconds to wait when over the limit, else None."""
    if settings.rate_limit <= 0:
        return None
    return await _admissions(settings.redis_url).retry_after(subject, settings.rate_limit)


OwnerDep = Annotated[str, Depends(get_owner)]
