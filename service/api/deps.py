"""FastAPI dependencies: settings, a database session, the Redis connection.

Each is a small function so that a test can replace it with
``app.dependency_overrides``; the settings default to the ones the app was
created with (``app.state.settings``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis
from sqlalchemy.orm import Session

from service.db.session import session_factory
from service.queue import redis_from_url
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
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


def get_redis(settings: SettingsDep) -> Redis:
    """The Redis connection RQ jobs are queued on."""
    return _redis(settings.redis_url)


RedisDep = Annotated[Redis, Depends(get_redis)]
