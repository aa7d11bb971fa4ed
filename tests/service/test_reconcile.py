"""The reconciler queues what Redis lost, never what a request is queueing right now."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from service.db import repo
from service.db.models import JobStatus, utcnow
from service.db.spec import JobSpec
from service.queue import enqueue_job, missing_tasks, redis_from_url, task_ids
from service.reconcile import FRESH_S, reconcile

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
