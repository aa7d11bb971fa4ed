"""A stalled job: ``searching``, yet no trial has finished for far longer than its trials take.

A search that stops moving (its workers gone, a task stuck on something)
otherwise looks exactly like a slow one: the progress bar just stays put.
The rule: a ``searching`` job is *stalled* when the time since its last
finished trial (or, before the first, since the search started) exceeds
``max(stall_floor_s, stall_factor x median trial time)``. The median is
over the job's latest :data:`RECENT` scored trials (complete or failed,
from start to finish); a duplicate's time is a wait for its twin, so it
counts as progress but not as a trial time. The floor keeps jobs of
sub-second trials from being called stalled by a worker's ordinary pause
(a dead worker's task is retried after 50–80 s).

The API's job view, the job list, ``/metrics`` and the dashboard all ask
:func:`job_stall`, so they agree.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from core.db import repo
from core.db.models import CandidateStatus, Job, JobStatus
from core.settings import Settings

RECENT = 51  # finished trials the median is taken over (odd: a true middle)
# A searching job's view changes with time alone (its stall), not only with its writes: the
# ETag of such a view holds the current window of this many seconds (service.api.conditional),
# so a poll rebuilds it at most this often; far below any stall threshold (stall_floor_s).
REFRESH_S = 5.0
TrialTimes = tuple[CandidateStatus, datetime, datetime]  # status, started_at, finished_at


@dataclass(frozen=True)
class Stall:
    """Why a job counts as stalled: how long it has been idle against what it allows."""

    idle_s: float
    threshold_s: float
    median_trial_s: float | None


def window(statuses: Iterable[JobStatus]) -> int | None:
    """The current :data:`REFRESH_S` window when one of ``statuses`` is searching, else None."""
    if any(status == JobStatus.searching for status in statuses):
        return int(time.time() // REFRESH_S)
    return None


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC); PostgreSQL aware ones."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def assess(
    trials: Sequence[TrialTimes],
    search_started: datetime,
    now: datetime,
    factor: float,
    floor_s: float,
) -> Stall | None:
    """The stall of a searching job whose recent finished trials are ``trials``, or None."""
    last = max([_utc(search_started), *(_utc(end) for _, _, end in trials)])
    idle_s = (_utc(now) - last).total_seconds()
    took = [
        (_utc(end) - _utc(start)).total_seconds()
        for status, start, end in trials
        if status != CandidateStatus.duplicate
    ]
    median = statistics.median(took) if took else None
    threshold = max(floor_s, factor * median) if median is not None else floor_s
    return Stall(idle_s, threshold, median) if idle_s > threshold else None


def _search_started(job: Job) -> datetime:
    started = (job.timings or {}).get("search_started")
    return datetime.fromisoformat(started) if isinstance(started, str) else job.updated_at


def job_stall(
    session: Session, job: Job, settings: Settings, now: datetime | None = None
) -> Stall | None:
    """The job's stall; None for a job that is moving or not searching."""
    if job.status != JobStatus.searching:
        return None
    return assess(
        repo.recent_trial_times(session, job.id, RECENT),
        _search_started(job),
        now or datetime.now(UTC),
        settings.stall_factor,
        settings.stall_floor_s,
    )


def stalls(session: Session, jobs: Sequence[Job], settings: Settings) -> dict[str, Stall]:
    """The stalled ones among ``jobs`` (one small query per searching job)."""
    now = datetime.now(UTC)
    found = {job.id: job_stall(session, job, settings, now) for job in jobs}
    return {job_id: stall for job_id, stall in found.items() if stall is not None}
