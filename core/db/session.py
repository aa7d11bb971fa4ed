"""Engines, sessions and schema migration for our tables.

SQLite is the embedded default and several worker processes write the same
file, so its connections use WAL (readers never block the writer), wait for
a lock instead of failing at once (``busy_timeout``) and enforce foreign
keys. pysqlite's own transaction handling is kept on purpose: it opens the
transaction at the first write, so a write never has to upgrade a stale read
snapshot (which fails at once with "database is locked", whatever the
timeout). PostgreSQL gets ``pool_pre_ping`` so a restarted database does not
cost the first request after it.

:func:`migrate` is what every process calls at start-up; it serialises
concurrent callers with a lock (an advisory lock on PostgreSQL, a file lock
beside a SQLite file) so that two processes never race to create a table.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Connections kept open per engine: anyio's thread limit, so that every thread of the API's
# pool can hold one. With SQLAlchemy's default (5, overflow 10) 32 polling clients made it
# open and close a connection on most requests (a SQLite connect runs four PRAGMAs; a
# PostgreSQL one is a login): 14% of the API's CPU in bench/load.py. A pool only grows to
# the concurrency it meets, so a worker still holds one or two.
POOL_SIZE = 40
POOL_OVERFLOW = 20
# Arbitrary but fixed: the key of the PostgreSQL advisory lock held while migrating.
_PG_MIGRATION_LOCK = 0x70727300


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory or other backends."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _ensure_parent(url: URL) -> None:
    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine configured for the backend (see the module docstring).

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///data/prunesearch.db`` or
            ``postgresql+psycopg://user@host/db``.
        **kwargs: Passed to :func:`sqlalchemy.create_engine` (e.g. ``poolclass``).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _ensure_parent(parsed)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_engine(parsed, connect_args=connect_args, **_pooled(kwargs, parsed))
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **_pooled(kwargs, parsed))


def _pooled(kwargs: dict[str, Any], url: URL) -> dict[str, Any]:
    """``kwargs`` with the pool's size (see :data:`POOL_SIZE`), where the pool is a queue.

    Not for another pool asked for, nor an in-memory SQLite (one connection per thread).
    """
    if "poolclass" in kwargs or (url.get_backend_name() == "sqlite" and not _sqlite_file(url)):
        return kwargs
    return {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW, **kwargs}


_FACTORIES: dict[tuple[str, bool], sessionmaker[Session]] = {}  # (url, read only)
_FACTORIES_LOCK = threading.Lock()


def session_factory(url: str) -> sessionmaker[Session]:
    """The session factory of ``url``, created once per process and URL.

    One engine (and so one connection pool) per database is what SQLAlchemy
    expects; creating engines per request would exhaust PostgreSQL's
    connections. ``expire_on_commit`` is off because the repositories commit
    and callers keep using the returned rows (e.g. a task reads ``job.spec``
    after its session has closed).
    """
    with _FACTORIES_LOCK:
        factory = _FACTORIES.get((url, False))
        if factory is None:
            factory = sessionmaker(bind=make_engine(url), expire_on_commit=False)
            _FACTORIES[url, False] = factory
        return factory


def read_session_factory(url: str) -> sessionmaker[Session]:
    """Sessions that only read: on a database server, from their own engine in autocommit.

    In a transaction a PostgreSQL read costs two more round trips (``BEGIN``, and the
    ``ROLLBACK`` when the session closes) and the ping before it a third. In autocommit each
    statement sees its own snapshot, which is what READ COMMITTED, PostgreSQL's default,
    gives each statement inside a transaction too; and closing the session does no I/O, so
    the API closes it on the event loop instead of in a second thread hop. The pool is half
    the thread pool: a read waits for a connection rather than open more (the API's
    PostgreSQL connections stay under ``POOL_SIZE + POOL_OVERFLOW + POOL_SIZE // 2``).
    SQLite: :func:`session_factory`'s own (pysqlite opens no transaction to read).
    """
    with _FACTORIES_LOCK:
        factory = _FACTORIES.get((url, True))
    if factory is not None:
        return factory
    if make_url(url).get_backend_name() == "sqlite":
        factory = session_factory(url)
    else:
        engine = make_engine(
            url, isolation_level="AUTOCOMMIT", pool_size=POOL_SIZE // 2, max_overflow=0
        )
        factory = sessionmaker(bind=engine, expire_on_commit=False)
    with _FACTORIES_LOCK:
        factory = _FACTORIES.setdefault((url, True), factory)
        return factory


def dispose_all(*, close: bool = True) -> None:
    """Drop every cached engine and forget the factories.

    A forked child does this by itself (``close=False``: pooled connections
    must not be shared between processes, and the child must not close the
    parent's sockets either). Tests call it before dropping a database.
    """
    with _FACTORIES_LOCK:
        for factory in _FACTORIES.values():
            bind = factory.kw.get("bind")
            if isinstance(bind, Engine):
                bind.dispose(close=close)
        _FACTORIES.clear()


def _after_fork_in_child() -> None:
    # A forked child (an RQ work horse) must open its own connections; the lock
    # may have been held by another thread of the parent at fork time.
    global _FACTORIES_LOCK
    _FACTORIES_LOCK = threading.Lock()
    dispose_all(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | URL) -> Config:
    """An Alembic config built in code: no ini file has to travel with the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    rendered = make_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(url: str | URL) -> None:
    """Bring the schema at ``url`` to the newest revision (``alembic upgrade head``).

    Safe to call from several processes at once and when already up to date
    (then it only reads the version table). Creates the folder of a SQLite file.
    """
    parsed = make_url(url)
    _ensure_parent(parsed)
    sqlite_file = _sqlite_file(parsed)
    lock: contextlib.AbstractContextManager[None] = (
        _file_lock(sqlite_file.with_name(sqlite_file.name + ".migrate-lock"))
        if sqlite_file is not None
        else contextlib.nullcontext()
    )
    # NullPool: the connection really closes afterwards, releasing any session lock.
    engine = make_engine(parsed, poolclass=NullPool)
    try:
        with lock, engine.connect() as connection:
            is_pg = engine.dialect.name == "postgresql"
            if is_pg:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                connection.commit()
            try:
                config = alembic_config(parsed)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
            finally:
                if is_pg:
                    connection.rollback()
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK}
                    )
                    connection.commit()
    finally:
        engine.dispose()
