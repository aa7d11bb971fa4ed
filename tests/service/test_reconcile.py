"""The reconciler queues what Redis lost, never what a request is queueing right now.

One pass at a time (:func:`reconcile`), then the background thread the API
runs (:class:`Reconciler`): that it runs at all, soon after start and then
on its interval, and what it touches.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from core.db import repo
from core.db.models import JobStatus, utcnow
from core.db.session import session_factory
from core.queue import enqueue_job, missing_tasks, redis_from_url, task_ids
from core.spec import JobSpec
from service import reconcile as reconcile_module
from service.reconcile import FRESH_S, Reconciler, last_pass, reconcile

SPEC = JobSpec.model_validate(
    {"name": "r", "dataset": {"name": "synthetic"}, "target": {"flops_ratio": 0.5}}
)


def _age(session: Session, job_id: str, seconds: float) -> None:
    job = repo.get_job(session, job_id)
    job.created_at = utcnow() - timedelta(seconds=seconds)
    session.commit()


def test_a_queued_job_is_requeued_only_once_it_is_not_fresh(
    session: Session, redis_url: str, tmp_path: Path
) -> None:
    redis, optuna_url = redis_from_url(redis_url), f"sqlite:///{tmp_path / 'optuna.db'}"
    job = repo.create_job(session, SPEC, "overnight")  # committed, its tasks not queued yet
    assert reconcile(session, redis, optuna_url).requeued == {}  # its request may be queueing it
    prepare_id, trials, finalize_id = task_ids(job.id, job.n_trials)
    assert missing_tasks(redis, job.id, job.n_trials) == {prepare_id, *trials, finalize_id}

    _age(session, job.id, FRESH_S + 1)  # its request is long gone and queued nothing
    assert reconcile(session, redis, optuna_url).requeued == {job.id: "the whole search"}
    assert missing_tasks(redis, job.id, job.n_trials) == set()
    assert reconcile(session, redis, optuna_url).requeued == {}  # nothing lost any more


def test_jobs_whose_tasks_are_in_redis_or_that_ended_are_left_alone(
    session: Session, redis_url: str, tmp_path: Path
) -> None:
    redis, optuna_url = redis_from_url(redis_url), f"sqlite:///{tmp_path / 'optuna.db'}"
    queued = repo.create_job(session, SPEC, "interactive")
    enqueue_job(redis, queued.id, queued.n_trials, "interactive")
    ended = repo.create_job(session, SPEC, "interactive")
    repo.transition(session, ended.id, JobStatus.cancelled, allowed_from={JobStatus.queued})
    for job in (queued, ended):
        _age(session, job.id, FRESH_S + 1)
    keys = sorted(redis.keys("*"))
    assert reconcile(session, redis, optuna_url).requeued == {}
    assert sorted(redis.keys("*")) == keys


def test_the_background_pass_runs_requeues_what_was_lost_and_leaves_the_rest(
    session: Session, db_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread the API starts: its first pass comes soon, later ones every INTERVAL_S."""
    monkeypatch.setattr(reconcile_module, "FIRST_PASS_S", 0.1)
    monkeypatch.setattr(reconcile_module, "INTERVAL_S", 1)
    redis, optuna_url = redis_from_url(redis_url), f"sqlite:///{tmp_path / 'optuna.db'}"
    lost = repo.create_job(session, SPEC, "overnight")  # its tasks never reached Redis
    healthy = repo.create_job(session, SPEC, "interactive")
    enqueue_job(redis, healthy.id, healthy.n_trials, "interactive")
    ended = repo.create_job(session, SPEC, "interactive")  # cancelled: nothing to run
    repo.transition(session, ended.id, JobStatus.cancelled, allowed_from={JobStatus.queued})
    for job in (lost, healthy, ended):
        _age(session, job.id, FRESH_S + 1)
    fresh = repo.create_job(session, SPEC, "interactive")  # its request may be queueing it
    before = {j.id: sorted(redis.keys(f"*{j.id}*")) for j in (healthy, ended, fresh)}

    thread = Reconciler(session_factory(db_url), redis, optuna_url)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while (last := last_pass(redis)) is None or lost.id not in last["requeued"]:
            assert thread.is_alive() and time.monotonic() < deadline, last
            time.sleep(0.1)
        assert last["requeued"] == {lost.id: "the whole search"}
        assert missing_tasks(redis, lost.id, lost.n_trials) == set()
        first_at = last["at"]
        while (last := last_pass(redis)) is None or last["at"] == first_at:  # and it goes on
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert last["requeued"] == {} and last["checked"] == 3  # lost, healthy and fresh
    finally:
        thread.stopped.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert {j.id: sorted(redis.keys(f"*{j.id}*")) for j in (healthy, ended, fresh)} == before
