"""Removing an ended job for good: queue records, Optuna study, artifacts, rows.

Shared by ``DELETE /v1/jobs/{id}`` and ``DELETE /v1/batches/{id}``; the
callers check that the job has ended, and :func:`ensure_stopped` that no
task of it still runs: a cancelled job's running task stops by itself within
seconds, and deleting under it would let it write again what was removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable

from redis import Redis
from sqlalchemy.orm import Session

from core.db import repo
from core.db.models import Job
from core.errors import TasksStillRunning
from core.queue import delete_tasks, running_tasks
from core.settings import Settings
from search import delete_study


def ensure_stopped(redis: Redis, jobs: Iterable[Job]) -> None:
    """Raise :class:`TasksStillRunning` for the first job with a task still in a worker."""
    for job in jobs:
        running = running_tasks(redis, job.id, job.n_trials)
        if running:
            raise TasksStillRunning(job.id, running)


def purge_job(session: Session, redis: Redis, settings: Settings, job: Job) -> None:
    """Delete everything of an ended job; its rows go last, so a failure leaves it listed."""
    ensure_stopped(redis, [job])
    delete_tasks(redis, job.id, job.n_trials)
    delete_study(job.id, settings.optuna_url)
    shutil.rmtree(settings.artifacts / job.id, ignore_errors=True)
    repo.delete_job(session, job.id)
