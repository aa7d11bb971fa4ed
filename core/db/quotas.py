"""What one owner holds in the queue: the figures the per-owner quotas are checked against."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import TERMINAL, Candidate, Job, JobStatus
from core.db.repo import FINISHED_CANDIDATES

ACTIVE = tuple(s for s in JobStatus if s not in TERMINAL)


@dataclass(frozen=True)
class Load:
    """An owner's unfinished work.

    Attributes:
        jobs: Jobs that have not ended (queued, preparing, searching, finalizing).
        trials: Trials of those jobs not finished yet (queued or running): each is a
            task in Redis and a candidate to come.
    """

    jobs: int
    trials: int


def owner_load(session: Session, owner: str) -> Load:
    """The owner's :class:`Load`, in two queries whatever the number of jobs."""
    active = (Job.owner == owner, Job.status.in_(ACTIVE))
    jobs, trials = session.execute(
        select(func.count(), func.coalesce(func.sum(Job.n_trials), 0)).where(*active)
    ).one()
    finished = session.scalar(
        select(func.count())
        .select_from(Candidate)
        .join(Job, Candidate.job_id == Job.id)
        .where(*active, Candidate.status.in_(list(FINISHED_CANDIDATES)))
    )
    return Load(jobs=int(jobs), trials=max(0, int(trials) - int(finished or 0)))
