"""A task of a cancelled or deleted job stops, and DELETE waits for it.

Real processes (``prunesearch serve``, ``prunesearch worker``) on a
redis-server of the test's own, so that nothing else queued on the shared
Redis meets these workers. A job is cancelled while its ``prepare`` trains
the baseline: ``DELETE`` answers 409 while that task runs, the task stops
within seconds of the cancel, and once ``DELETE`` succeeds nothing of the
job comes back (no baseline file, no Optuna study, no RQ record, no retry).
A task whose job row vanishes under it (a server without the 409) stops the
same way and removes what it wrote. The first runs on SQLite and PostgreSQL (our
tables and the Optuna storage), the second on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
import redis

from core.db import repo
from core.db.session import session_factory, session_scope
from search.study import storage, study_name
from tests.chaos.test_redis_restart import RedisProcess, own_redis
from tests.chaos.test_worker_death import Stack
from tests.integration.conftest import SQLITE_ONLY, tiny_spec
from tests.postgres import Databases

__all__ = ["own_redis"]

STOP_BOUND_S = 30.0  # a cancelled prepare stops within this (it polls every second)
SETTLE_S = 8.0  # how long the test watches for anything coming back


@contextmanager
def stack_on(
    tmp_path: Path, server: RedisProcess, dbs: Databases, workers: tuple[str, ...]
) -> Iterator[Stack]:
    """The API and ``workers`` on a Redis of their own, stopped afterwards."""
    stack = Stack(tmp_path, f"{server.url}/0", dbs)
    try:
        stack.wait_ready()
        for name in workers:
            stack.worker(name)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def solo(tmp_path: Path, own_redis: RedisProcess, dbs: Databases) -> Iterator[Stack]:
    with stack_on(tmp_path, own_redis, dbs, ("a",)) as stack:
        yield stack


def _long_prepare(name: str) -> dict[str, Any]:
    """A job whose ``prepare`` trains for minutes: a cancel lands inside it."""
    spec = tiny_spec(name, n_trials=4).model_dump(mode="json")
    spec["model"] = {"arch": "resnet20", "pretrain_epochs": 200}
    return spec


def _wait_training(stack: Stack, job_id: str) -> None:
    """Until the job is ``preparing`` and its task runs in a work-horse."""
    deadline = time.monotonic() + 120
    while (
        stack.api.get(f"/v1/jobs/{job_id}").json()["status"] != "preparing"
        or stack.horse_of("a") is None
    ):
        assert time.monotonic() < deadline, stack.log_text()
        time.sleep(0.2)
    time.sleep(2)  # well inside the training


def _wait_idle(stack: Stack) -> None:
    deadline = time.monotonic() + STOP_BOUND_S
    while stack.horse_of("a") is not None:
        assert time.monotonic() < deadline, f"the task did not stop\n{stack.log_text()}"
        time.sleep(0.2)


def _leftovers(stack: Stack, job_id: str) -> dict[str, Any]:
    """Whatever of the job still exists: files, study, RQ keys."""
    settings = stack.settings()
    job_dir = settings.artifact_dir / job_id if settings.artifact_dir else None
    try:
        optuna.load_study(study_name=study_name(job_id), storage=storage(settings.optuna_url))
        study = True
    except KeyError:
        study = False
    client = redis.Redis.from_url(stack.env["PRUNESEARCH_REDIS_URL"], decode_responses=True)
    keys = sorted(k for k in client.keys("*") if job_id in k)
    ids = set(client.zrange("rq:registry:failed:interactive", 0, -1))
    return {
        "files": sorted(p.name for p in job_dir.iterdir()) if job_dir and job_dir.exists() else [],
        "study": study,
        "rq_keys": keys,
        "failed": sorted(i for i in ids if job_id in i),
    }


def test_delete_waits_for_the_running_task_of_a_cancelled_job(solo: Stack) -> None:
    job_id = solo.api.post("/v1/jobs", json=_long_prepare("cancel-delete")).json()["id"]
    _wait_training(solo, job_id)

    cancelled_at = time.monotonic()
    assert solo.api.post(f"/v1/jobs/{job_id}/cancel").json()["job"]["status"] == "cancelled"
    early = solo.api.delete(f"/v1/jobs/{job_id}")
    assert early.status_code == 409, early.text
    assert "still running" in early.json()["detail"], early.text
    assert "prepare" in early.json()["detail"], early.text

    while (late := solo.api.delete(f"/v1/jobs/{job_id}")).status_code == 409:
        assert time.monotonic() - cancelled_at < STOP_BOUND_S, f"{late.text}\n{solo.log_text()}"
        time.sleep(0.5)
    assert late.status_code == 204, late.text
    stopped_s = time.monotonic() - cancelled_at
    _wait_idle(solo)
    time.sleep(SETTLE_S)  # anything the task or RQ would write again has had its chance

    assert solo.api.get(f"/v1/jobs/{job_id}").status_code == 404
    assert _leftovers(solo, job_id) == {"files": [], "study": False, "rq_keys": [], "failed": []}
    log = (solo.logs / "a.log").read_text()
    assert "Traceback" not in log, log
    print(f"\ncancel mid-prepare: the task stopped and DELETE succeeded {stopped_s:.1f} s later")


@SQLITE_ONLY
def test_a_task_whose_job_row_vanishes_stops_and_removes_what_it_wrote(solo: Stack) -> None:
    job_id = solo.api.post("/v1/jobs", json=_long_prepare("vanish")).json()["id"]
    _wait_training(solo, job_id)

    with session_scope(session_factory(solo.dbs.database_url)) as s:  # behind the API's back
        repo.delete_job(s, job_id)
    _wait_idle(solo)
    time.sleep(SETTLE_S)

    left = _leftovers(solo, job_id)
    assert left["files"] == [] and left["study"] is False, left
    assert left["failed"] == [], left  # it ended quietly: no failure, so no RQ retry
    log = (solo.logs / "a.log").read_text()
    # The only tracebacks are the worker's notes that it could not prefetch a gone job's data.
    assert log.count("Traceback") == log.count("could not prefetch"), log
    assert "prepare of job" in log and "stopped: the job was deleted" in log, log
