"""Removing an ended job for good: queue records, Optuna study, artifacts, rows.

Shared by ``DELETE /v1/jobs/{id}`` and ``DELETE /v1/batches/{id}``; the
callers check that the job has ended, so no worker is still writing to it.
"""

from __future__ import annotations

import shutil

from redis import Redis
from sqlalchemy.orm import Session

from search import delete_study
from service.db import repo
from service.db.models import Job
from service.queue import delete_tasks
from service.settings import Settings


def purge_job(session: Session, redis: Redis, settings: Settings, job: Job) -> None:
    """Delete everything of an ended job; its rows go last, so a failure leaves it listed."""
    delete_tasks(redis, job.id, job.n_trials)
    delete_study(job.id, settings.optuna_url)
    shutil.rmtree(settings.artifacts / job.id, ignore_errors=True)
    repo.delete_job(session, job.id)
