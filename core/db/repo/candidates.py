"""Candidates (table ``candidates``): the trials of a job and what each one scored.

Everything that reads or writes a candidate row lives here: recording and
finishing trials, the promotion ladder's rungs, the list filters and sort
keys the API pages with, progress and the best candidate, the trial times
the stall check reads, and the task slots a retried trial reuses (``lost``).
What "finished" means for a candidate (:data:`FINISHED_CANDIDATES`) is
defined here once; the quotas count with it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.models import Candidate, CandidateStatus, utcnow
from core.db.repo.fields import check_fields
from core.db.repo.jobs import bump, get_job
from core.errors import CandidateNotFound, DuplicateCandidate

FINISHED_CANDIDATES = frozenset(
    {CandidateStatus.complete, CandidateStatus.duplicate, CandidateStatus.failed}
)
_CANDIDATE_FIELDS = frozenset(Candidate.__table__.columns.keys()) - {"id"}

# The reads of every job view, built once with a ``job_id`` parameter: building and keying a
# statement costs more than running it on SQLite (see core.db.repo.jobs.VERSION_OF).
_LAST_ID = select(func.max(Candidate.id)).where(Candidate.job_id == bindparam("job_id"))
_BEST = (
    select(Candidate)
    .where(
        Candidate.job_id == bindparam("job_id"),
        Candidate.status == CandidateStatus.complete,
        Candidate.score.is_not(None),
    )
    .order_by(Candidate.score.desc(), Candidate.trial_number)
    .limit(1)
)


def add_candidate(session: Session, job_id: str, **fields: Any) -> Candidate:
    """Record a candidate of a job (usually ``running``, before it is scored).

    Raises:
        JobNotFound: No such job.
        DuplicateCandidate: The job already has a candidate with this trial number.
        TypeError: An unknown field.
    """
    check_fields(fields, _CANDIDATE_FIELDS - {"job_id"}, "Candidate")
    get_job(session, job_id)
    fields.setdefault("timings", {})
    candidate = Candidate(job_id=job_id, **fields)
    session.add(candidate)
    try:
        bump(session, job_id)  # flushes the insert first: a duplicate trial fails here
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise DuplicateCandidate(
            f"job {job_id!r} already has trial {fields.get('trial_number')!r}"
        ) from exc
    return candidate


def finish_candidate(session: Session, candidate_id: int, **fields: Any) -> Candidate:
    """Store a candidate's outcome: status (default ``complete``), score, timings, ...

    ``finished_at`` is set to now unless given. A candidate already marked
    ``lost`` stays lost: its slot was given to another run, and a late
    finish from the run thought dead must not count the trial twice.

    Raises:
        CandidateNotFound: No such candidate.
        TypeError: An unknown field.
    """
    check_fields(fields, _CANDIDATE_FIELDS - {"job_id"}, "Candidate")
    fields.setdefault("status", CandidateStatus.complete)
    fields.setdefault("finished_at", utcnow())
    session.execute(
        update(Candidate)
        .where(Candidate.id == candidate_id, Candidate.status != CandidateStatus.lost)
        .values(**fields)
    )
    bump(session, _job_of(candidate_id))
    session.commit()
    candidate = session.get(Candidate, candidate_id, populate_existing=True)
    if candidate is None:
        raise CandidateNotFound(candidate_id)
    return candidate


def set_rungs(session: Session, candidate_id: int, rungs: dict[str, Any]) -> None:
    """Record what the promotion ladder did with a finished candidate (nothing else changes)."""
    result = session.execute(
        update(Candidate).where(Candidate.id == candidate_id).values(rungs=rungs)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise CandidateNotFound(candidate_id)
    bump(session, _job_of(candidate_id))
    session.commit()


def find_scored_by_key(session: Session, job_id: str, key: str) -> Candidate | None:
    """The earliest complete candidate of the job with the same kept channels, if any.

    A trial that repairs to an already scored network reuses that score
    instead of spending GPU time on it again.
    """
    stmt = (
        select(Candidate)
        .where(
            Candidate.job_id == job_id,
            Candidate.key == key,
            Candidate.status == CandidateStatus.complete,
        )
        .order_by(Candidate.trial_number)
        .limit(1)
    )
    return session.scalars(stmt).first()


def find_running_by_key(
    session: Session, job_id: str, key: str, *, before: int, skip: Iterable[int] = ()
) -> Candidate | None:
    """A candidate of the same network being scored right now, recorded before ``before``.

    ``skip`` names candidates not to return (ones whose process is known dead).
    """
    stmt = (
        select(Candidate)
        .where(
            Candidate.job_id == job_id,
            Candidate.key == key,
            Candidate.status == CandidateStatus.running,
            Candidate.id < before,
            Candidate.id.not_in(list(skip)),
        )
        .order_by(Candidate.id)
        .limit(1)
    )
    return session.scalars(stmt).first()


# Sort keys of the candidates list; a leading "-" in the request means descending.
CANDIDATE_SORTS = {
    "trial": Candidate.trial_number,
    "score": Candidate.score,
    "accuracy": Candidate.accuracy,
    "flops": Candidate.flops,
    "params": Candidate.params,
    "started": Candidate.started_at,
}


@dataclass(frozen=True)
class CandidateFilter:
    """Which of a job's candidates a list shows; ``None`` fields do not filter."""

    statuses: tuple[CandidateStatus, ...] | None = None
    min_accuracy: float | None = None
    max_flops: float | None = None
    max_params: float | None = None
    worker: str | None = None

    def apply(self, stmt: Any) -> Any:
        if self.statuses is not None:
            stmt = stmt.where(Candidate.status.in_(list(self.statuses)))
        if self.min_accuracy is not None:
            stmt = stmt.where(Candidate.accuracy >= self.min_accuracy)
        if self.max_flops is not None:
            stmt = stmt.where(Candidate.flops <= self.max_flops)
        if self.max_params is not None:
            stmt = stmt.where(Candidate.params <= self.max_params)
        if self.worker is not None:
            stmt = stmt.where(Candidate.worker == self.worker)
        return stmt


def list_candidates(
    session: Session,
    job_id: str,
    *,
    limit: int,
    offset: int,
    order_by: str = "trial",
    where: CandidateFilter | None = None,
) -> list[Candidate]:
    """A page of the job's candidates.

    ``order_by`` is a key of :data:`CANDIDATE_SORTS`, ``-`` first for
    descending; ``score`` alone means best first (the API's old meaning).
    Unscored candidates sort last either way; ties go by trial number.
    """
    descending = order_by.startswith("-") or order_by == "score"
    column = CANDIDATE_SORTS.get(order_by.lstrip("-"))
    if column is None:
        raise ValueError(f"order_by must be one of {sorted(CANDIDATE_SORTS)}, not {order_by!r}")
    key = column.desc().nulls_last() if descending else column.asc().nulls_last()
    stmt = select(Candidate).where(Candidate.job_id == job_id)
    stmt = (where or CandidateFilter()).apply(stmt).order_by(key, Candidate.trial_number)
    return list(session.scalars(stmt.limit(limit).offset(offset)))


def changed_candidates(
    session: Session,
    job_id: str,
    *,
    start: int,
    pending: Iterable[int] = (),
    limit: int,
    where: CandidateFilter | None = None,
) -> list[Candidate]:
    """What a poll with a cursor has not seen: ids from ``start`` on, and ``pending`` now finished.

    ``pending`` are candidates the poll saw running; they come back once they are not.
    Oldest first (by id), so the cursor can resume after the last one.
    """
    done_now = Candidate.id.in_(list(pending)) & (Candidate.status != CandidateStatus.running)
    stmt = select(Candidate).where(Candidate.job_id == job_id, (Candidate.id >= start) | done_now)
    stmt = (where or CandidateFilter()).apply(stmt).order_by(Candidate.id)
    return list(session.scalars(stmt.limit(limit)))


def still_running(
    session: Session, job_id: str, ids: Iterable[int], start: int, stop: int
) -> list[int]:
    """Which of ``ids`` and of the ids in ``[start, stop)`` are candidates still running."""
    seen = Candidate.id.in_(list(ids)) | ((Candidate.id >= start) & (Candidate.id < stop))
    stmt = select(Candidate.id).where(
        Candidate.job_id == job_id, Candidate.status == CandidateStatus.running, seen
    )
    return sorted(session.scalars(stmt))


def last_candidate_id(session: Session, job_id: str) -> int:
    """The job's highest candidate id (0 without candidates): where a new cursor starts."""
    return int(session.scalar(_LAST_ID, {"job_id": job_id}) or 0)


def count_candidates(
    session: Session,
    job_id: str,
    statuses: Iterable[CandidateStatus] | None = None,
    where: CandidateFilter | None = None,
) -> int:
    """How many candidates the job has (in one of ``statuses`` and matching ``where``)."""
    stmt = select(func.count()).select_from(Candidate).where(Candidate.job_id == job_id)
    if statuses is not None:
        stmt = stmt.where(Candidate.status.in_(list(statuses)))
    stmt = (where or CandidateFilter()).apply(stmt)
    return int(session.scalar(stmt) or 0)


def best_candidate(session: Session, job_id: str) -> Candidate | None:
    """The complete candidate with the highest score (earliest trial on ties)."""
    return session.scalars(_BEST, {"job_id": job_id}).first()


def finished_counts(session: Session, job_ids: list[str]) -> dict[str, int]:
    """Finished candidates (complete, duplicate, failed) of each job, in one query."""
    stmt = (
        select(Candidate.job_id, func.count())
        .where(Candidate.job_id.in_(job_ids), Candidate.status.in_(list(FINISHED_CANDIDATES)))
        .group_by(Candidate.job_id)
    )
    counts = {job_id: int(n) for job_id, n in session.execute(stmt).all()}
    return {job_id: counts.get(job_id, 0) for job_id in job_ids}


def best_candidates(session: Session, job_ids: list[str]) -> dict[str, Candidate]:
    """:func:`best_candidate` of each job that has one, in one query (a page of jobs)."""
    rank = (
        func.row_number()
        .over(
            partition_by=Candidate.job_id,
            order_by=(Candidate.score.desc(), Candidate.trial_number),
        )
        .label("rank")
    )
    ranked = (
        select(Candidate.id, rank)
        .where(
            Candidate.job_id.in_(job_ids),
            Candidate.status == CandidateStatus.complete,
            Candidate.score.is_not(None),
        )
        .subquery()
    )
    stmt = select(Candidate).join(ranked, Candidate.id == ranked.c.id).where(ranked.c.rank == 1)
    return {c.job_id: c for c in session.scalars(stmt)}


def progress(session: Session, job_id: str) -> tuple[int, int]:
    """``(finished trials, n_trials)``; finished counts complete, duplicate and failed.

    Raises:
        JobNotFound: No such job.
    """
    job = get_job(session, job_id)
    return count_candidates(session, job_id, FINISHED_CANDIDATES), job.n_trials


def recent_trial_times(
    session: Session, job_id: str, limit: int
) -> list[tuple[CandidateStatus, datetime, datetime]]:
    """``(status, started_at, finished_at)`` of the job's latest finished trials, newest first.

    What ``service.stall`` needs to tell a stalled search from a slow one;
    bounded by ``limit`` so that a poll of a long job stays cheap.
    """
    stmt = (
        select(Candidate.status, Candidate.started_at, Candidate.finished_at)
        .where(
            Candidate.job_id == job_id,
            Candidate.status.in_(list(FINISHED_CANDIDATES)),
            Candidate.finished_at.is_not(None),
        )
        .order_by(Candidate.finished_at.desc())
        .limit(limit)
    )
    return [(status, start, end) for status, start, end in session.execute(stmt) if end]


# --- task slots (retries) -------------------------------------------------------------------


def task_candidates(session: Session, job_id: str, task: int) -> list[Candidate]:
    """What earlier runs of one trial task wrote, oldest first."""
    stmt = (
        select(Candidate)
        .where(Candidate.job_id == job_id, Candidate.task == task)
        .order_by(Candidate.id)
    )
    return list(session.scalars(stmt))


def mark_lost(session: Session, candidate_id: int, reason: str) -> None:
    """A running candidate whose worker died: kept for the record, not counted as a trial."""
    session.execute(
        update(Candidate)
        .where(Candidate.id == candidate_id, Candidate.status == CandidateStatus.running)
        .values(status=CandidateStatus.lost, error=reason, finished_at=utcnow())
    )
    bump(session, _job_of(candidate_id))
    session.commit()


def _job_of(candidate_id: int) -> Any:
    """The candidate's job id, as a subquery for :func:`core.db.repo.jobs.bump`."""
    return select(Candidate.job_id).where(Candidate.id == candidate_id).scalar_subquery()
