"""The Alembic migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from core.db.models import Base
from core.db.session import alembic_config, make_engine, migrate


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_migrated_schema_matches_models(db_url: str) -> None:
    migrate(db_url)
    assert _diff(db_url) == []
    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    assert _revision(db_url) == head


def test_migrate_twice_is_a_no_op(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, name, status, queue, spec, n_trials, timings, "
                    "created_at, updated_at) VALUES ('j1', 'n', 'queued', 'interactive', "
                    "'{}', 1, '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
        migrate(db_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
        tables = set(inspect(engine).get_table_names())
        assert tables == {
            "alembic_version",
            "jobs",
            "candidates",
            "latencies",
            "api_keys",
            "uploads",
            "batches",
            "datasets",
            "deleted_jobs",
        }
    finally:
        engine.dispose()
    assert _diff(db_url) == []


def test_migrate_creates_the_sqlite_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'prunesearch.db'}"
    migrate(url)
    assert (tmp_path / "a" / "b" / "prunesearch.db").is_file()
    assert _diff(url) == []


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert int(conn.execute(text("PRAGMA busy_timeout")).scalar() or 0) >= 10_000
    finally:
        engine.dispose()


def test_concurrent_migrations_all_succeed(db_url: str) -> None:
    """Several processes starting at once (API, workers) must not race to create tables."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.map(migrate, [db_url] * 4)
    assert _diff(db_url) == []
