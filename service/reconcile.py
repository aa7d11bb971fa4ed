"""The reconciler: the database says what must run; put back in Redis what Redis lost.

Redis holds the queue, the database holds the truth. When Redis restarts
without its data (or loses some of it), every unfinished job's tasks are
compared with its rows and requeued where nothing will otherwise run them:

* ``queued`` / ``preparing`` jobs whose ``prepare`` is gone: the whole search
  is queued again (``prepare`` re-enters ``preparing``). A job younger than
  :data:`FRESH_S` is left alone: the request that created it may be queueing
  it at this moment (the row is committed first).
* ``searching`` jobs: each trial slot with no record in Redis and no
  candidate in the database (never started), or whose candidate is still
  ``running`` but whose Optuna trial was failed as stale (no heartbeat for
  ``GRACE_S``: its worker is gone), is queued again, with a ``finalize``
  after them.
* ``finalizing`` jobs whose ``finalize`` is gone: it is queued again.

A slot whose trial is still running somewhere is left alone, so nothing is
counted twice; a requeued slot that finds its earlier run finished does
nothing (``workers.steps.trial._resume_slot``). One pass runs at a time (a
Redis lock held while it runs), in each API process :data:`FIRST_PASS_S` after it starts (a
restart is when something is most likely lost) and every :data:`INTERVAL_S`
after that. Each pass leaves what it did under :data:`LAST_PASS` in Redis
(:func:`last_pass`), so that an operator or a test can see that it runs.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import repo
from core.db.models import Candidate, CandidateStatus, Job, JobStatus
from core.errors import QueueUnavailable
from core.queue import enqueue_job, missing_tasks, requeue, task_ids
from search.study import storage, study_name

log = logging.getLogger(__name__)
INTERVAL_S = 30
FIRST_PASS_S = 5
FRESH_S = 60
LOCK = "prunesearch:reconcile"
LAST_PASS = "prunesearch:reconcile:last"
LAST_PASS_TTL_S = 24 * 3600


@dataclass
class Report:
    """What one pass did: how many unfinished jobs it checked, and job id -> what it requeued."""

    checked: int = 0
    requeued: dict[str, str] = field(default_factory=dict)


def _stale_numbers(job_id: str, optuna_url: str) -> set[int]:
    """Trial numbers of the job's study that are no longer running (failed as stale)."""
    try:
        study = optuna.load_study(study_name=study_name(job_id), storage=storage(optuna_url))
    except KeyError:
        return set()
    fail_stale_trials(study)
    return {t.number for t in study.get_trials(deepcopy=False) if t.state != TrialState.RUNNING}


def _orphan_slots(session: Session, job: Job, missing: set[str], optuna_url: str) -> list[int]:
    _, trial_ids, _ = task_ids(job.id, job.n_trials)
    rows = session.scalars(select(Candidate).where(Candidate.job_id == job.id)).all()
    by_slot: dict[int, list[Candidate]] = {}
    for c in rows:
        if c.task is not None:
            by_slot.setdefault(c.task, []).append(c)
    stale: set[int] | None = None
    slots = []
    for i, rq_id in enumerate(trial_ids):
        if rq_id not in missing:
            continue
        cands = by_slot.get(i, [])
        if any(c.status in repo.FINISHED_CANDIDATES for c in cands):
            continue
        running = [c for c in cands if c.status == CandidateStatus.running]
        if running:
            stale = _stale_numbers(job.id, optuna_url) if stale is None else stale
            if not all(c.trial_number in stale for c in running):
                continue  # still beating: its worker is alive and will finish it
        slots.append(i)
    return slots


def _age_s(job: Job) -> float:
    created = job.created_at  # SQLite hands it back without its zone: it is UTC
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return (datetime.now(UTC) - created).total_seconds()


def reconcile(session: Session, redis: Redis, optuna_url: str) -> Report:
    """One pass over every unfinished job (see the module docstring)."""
    report = Report()
    active = [JobStatus.queued, JobStatus.preparing, JobStatus.searching, JobStatus.finalizing]
    jobs = session.scalars(select(Job).where(Job.status.in_(active))).all()
    report.checked = len(jobs)
    for job in jobs:
        missing = missing_tasks(redis, job.id, job.n_trials)
        prepare_id, _, finalize_id = task_ids(job.id, job.n_trials)
        early = job.status in (JobStatus.queued, JobStatus.preparing)
        if early and prepare_id in missing and _age_s(job) > FRESH_S:
            enqueue_job(redis, job.id, job.n_trials, job.queue)
            report.requeued[job.id] = "the whole search"
        elif job.status == JobStatus.searching:
            slots = _orphan_slots(session, job, missing, optuna_url)
            if slots or finalize_id in missing:
                requeue(redis, job.id, job.n_trials, job.queue, slots)
                report.requeued[job.id] = f"trial slots {slots} and finalize"
        elif job.status == JobStatus.finalizing and finalize_id in missing:
            requeue(redis, job.id, job.n_trials, job.queue, [])
            report.requeued[job.id] = "finalize"
    for job_id, what in report.requeued.items():
        log.warning("reconciler: job %s had lost tasks; requeued %s", job_id, what)
    return report


def locked_pass(session: Session, redis: Redis, optuna_url: str) -> Report | None:
    """:func:`reconcile` under a Redis lock; None when another process holds it.

    The lock is released when the pass ends (it expires after
    :data:`INTERVAL_S` if its holder dies mid-pass), so an API restarted
    after a kill makes its first pass at once instead of waiting out the
    dead process's lock.
    """
    try:
        lock = redis.lock(LOCK, timeout=INTERVAL_S, blocking=False)
        if not lock.acquire():
            return None
        try:
            report = reconcile(session, redis, optuna_url)
        finally:
            lock.release()
        done = {"at": datetime.now(UTC).isoformat(), **asdict(report)}
        redis.set(LAST_PASS, json.dumps(done), ex=LAST_PASS_TTL_S)
        return report
    except (RedisError, OSError, QueueUnavailable):
        return None  # Redis is down: the next pass, after it is back, does the work


def last_pass(redis: Redis) -> dict[str, Any] | None:
    """What the latest pass of any process did (``at``, ``checked``, ``requeued``), if any."""
    raw = redis.get(LAST_PASS)
    return None if raw is None else dict(json.loads(raw))


class Reconciler(threading.Thread):
    """Runs :func:`locked_pass` soon after start, then every :data:`INTERVAL_S`, in the API."""

    def __init__(self, make_session: object, redis: Redis, optuna_url: str) -> None:
        super().__init__(name="reconciler", daemon=True)
        self._make_session = make_session
        self._redis, self._url = redis, optuna_url
        self.stopped = threading.Event()

    def run(self) -> None:
        wait = FIRST_PASS_S
        while not self.stopped.wait(wait):
            wait = INTERVAL_S
            try:
                with self._make_session() as session:  # type: ignore[operator]
                    locked_pass(session, self._redis, self._url)
            except Exception:
                log.exception("reconciler pass failed; retrying in %d s", INTERVAL_S)
