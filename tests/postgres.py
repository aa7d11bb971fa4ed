"""PostgreSQL for the tests: reach (or start) the server, make fresh databases, drop them.

One place for what the service tests' ``db_url`` and the end-to-end, chaos and
schemathesis stacks need. The server is ``PRUNESEARCH_TEST_POSTGRES_URL`` (default
the local one, trust auth). When it does not answer, the local cluster is started
(``pg_ctlcluster``); when that fails too the test fails, naming what is missing.
``PRUNESEARCH_TEST_POSTGRES=off`` is the only way to leave the PostgreSQL variants
out, and they are then reported as skipped, never passed.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from tests.support import start_postgres_cluster

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def libpq(url: str) -> str:
    """The plain libpq form of a SQLAlchemy URL (psycopg does not take ``+psycopg``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_error(url: str) -> str | None:
    """Why ``url`` cannot be reached, or None when it answers."""
    try:
        with psycopg.connect(libpq(url), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip()


def skip_if_off() -> None:
    if os.environ.get("PRUNESEARCH_TEST_POSTGRES", "").lower() == "off":
        pytest.skip("PostgreSQL variant turned off (PRUNESEARCH_TEST_POSTGRES=off)")


def admin_url() -> str:
    """The server's admin URL, once it answers: started if need be, else the test fails."""
    admin = os.environ.get("PRUNESEARCH_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    error = postgres_error(admin)
    if error is not None:
        start_error = start_postgres_cluster()
        deadline = time.monotonic() + 20
        while error is not None and start_error is None and time.monotonic() < deadline:
            time.sleep(0.5)
            error = postgres_error(admin)
        if error is not None:
            pytest.fail(
                f"PostgreSQL is not reachable at {admin} ({error}); starting it failed: "
                f"{start_error or 'it started but still does not answer'}. Set "
                "PRUNESEARCH_TEST_POSTGRES_URL to a reachable server, or "
                "PRUNESEARCH_TEST_POSTGRES=off to run the SQLite variants only."
            )
    return admin


@contextlib.contextmanager
def fresh_database(tag: str = "test") -> Iterator[str]:
    """URL of a new, uniquely named, empty database on the test server, dropped afterwards
    (``WITH (FORCE)``: connections a killed process left behind do not keep it)."""
    admin = admin_url()
    name = f"prunesearch_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        from core.db.session import dispose_all

        dispose_all()
        with psycopg.connect(libpq(admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Databases:
    """Where a stack keeps our tables and its Optuna studies."""

    backend: str
    database_url: str
    optuna_url: str

    def env(self) -> dict[str, str]:
        """The settings a stack's processes read (``core.settings.Settings``)."""
        return {
            "PRUNESEARCH_DATABASE_URL": self.database_url,
            "PRUNESEARCH_OPTUNA_URL": self.optuna_url,
        }


@contextlib.contextmanager
def databases(backend: str, home: Path) -> Iterator[Databases]:
    """Both databases of a stack on ``backend``.

    SQLite: the files the settings default to under ``home``. PostgreSQL: one new database
    for our tables and another for the Optuna storage, both dropped afterwards.
    """
    if backend == "sqlite":
        root = home.resolve()
        yield Databases(
            backend, f"sqlite:///{root / 'prunesearch.db'}", f"sqlite:///{root / 'optuna.db'}"
        )
        return
    skip_if_off()
    with fresh_database("tables") as tables, fresh_database("optuna") as optuna:
        yield Databases(backend, tables, optuna)
