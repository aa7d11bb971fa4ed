"""Fixtures of the service tests: both database backends and a real Redis.

``db_url`` runs a test once on SQLite (a file under ``tmp_path``) and once on
PostgreSQL (a database created for this test session and dropped after it;
each test gets an empty schema). PostgreSQL is required: when it cannot be
reached or started the PostgreSQL variants fail, unless
``PRUNESEARCH_TEST_POSTGRES=off`` says explicitly to leave them out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis import Redis
from sqlalchemy.orm import Session

from core.db.session import dispose_all, migrate, session_factory
from tests.postgres import BACKENDS, fresh_database, libpq, skip_if_off
from tests.support import redis_server

REDIS_TEST_DB = 15
# The smallest job the API accepts and no worker needs to run: tests that only submit share it.
SPEC: dict[str, Any] = {
    "name": "tiny-lenet",
    "model": {"arch": "lenet5", "pretrain_epochs": 0},
    "dataset": {"name": "synthetic"},
    "target": {"flops_ratio": 0.5},
    "search": {"n_trials": 2},
}


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a fresh, uniquely named PostgreSQL database for this test session."""
    with fresh_database() as url:
        yield url


def _empty_schema(url: str) -> None:
    """Drop everything a test created, so the next test starts from an empty database."""
    dispose_all()
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty (not yet migrated) database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'prunesearch.db'}"
        dispose_all()
        return
    skip_if_off()
    url: str = request.getfixturevalue("postgres_database")
    _empty_schema(url)
    yield url
    _empty_schema(url)


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    """A session on a migrated database."""
    migrate(db_url)
    with session_factory(db_url)() as s:
        yield s


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the session: the local one, or one started for the tests."""
    try:
        with redis_server(tmp_path_factory.mktemp("redis")) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    """A Redis URL on a database of its own, empty before and after the test."""
    url = f"{redis_base_url}/{REDIS_TEST_DB}"
    client = Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A client of the test's own Redis database (``redis_url``)."""
    client = Redis.from_url(redis_url)
    yield client
    client.close()


def add_key(database_url: str, owner: str) -> dict[str, str]:
    """Authorization headers of a new API key for ``owner`` (the schema must be migrated)."""
    from core.db import keys

    with session_factory(database_url)() as s:
        _, new = keys.create_key(s, owner)
    return {"Authorization": f"Bearer {new.plain}"}


@contextlib.contextmanager
def keyed_client(settings: Any, owner: str = "alice") -> Iterator[Any]:
    """A TestClient of a fresh app that sends an API key of ``owner`` on every request."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    with TestClient(create_app(settings)) as client:
        client.headers.update(add_key(settings.database_url, owner))
        yield client
