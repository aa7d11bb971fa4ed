"""Repository functions: the only code that queries or changes our tables.

The API and the worker tasks share these, so a rule about jobs (which state
may follow which, what "finished" means for progress) lives in one place.
Every function that writes commits before it returns: each call is one
transaction, which keeps SQLite's single write lock held for milliseconds
even when a worker keeps its session open across a long trial. Rows come
back usable after the commit (the session factories do not expire them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.models import (
    LOCAL_OWNER,
    Candidate,
    CandidateStatus,
    Job,
    JobStatus,
    Latency,
    utcnow,
)
from core.errors import (
    CandidateNotFound,
    DuplicateCandidate,
    InvalidTransition,
    JobNotFound,
)
from core.spec import JobSpec

FINISHED_CANDIDATES = frozenset(
    {CandidateStatus.complete, CandidateStatus.duplicate, CandidateStatus.failed}
)
_JOB_FIELDS = frozenset(Job.__table__.columns.keys()) - {"id", "status", "created_at"}
_CANDIDATE_FIELDS = frozenset(Candidate.__table__.columns.keys()) - {"id"}


def _check_fields(fields: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    """Reject unknown names: setattr would otherwise quietly set a plain attribute."""
    unknown = set(fields) - allowed
    if unknown:
        raise TypeError(f"{what} has no settable field(s) {sorted(unknown)}")


# --- jobs -----------------------------------------------------------------------------------


def create_job(
    session: Session,
    spec: JobSpec,
    queue: str,
    *,
    owner: str = LOCAL_OWNER,
    batch_id: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    commit: bool = True,
) -> Job:
    """Store a new job in state ``queued`` with its validated spec.

    ``commit=False`` leaves it to the caller, so a batch's jobs are created
    all together or not at all.
    """
    job = Job(
        name=spec.name,
        status=JobStatus.queued,
        queue=queue,
        spec=spec.model_dump(mode="json"),
        n_trials=spec.search.n_trials,
        timings={},
        owner=owner,
        batch_id=batch_id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(job)
    if commit:
        session.commit()
    else:
        session.flush()
    return job


def get_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """The job with this id (of ``owner``, when given); raises :class:`JobNotFound`.

    Another owner's job is reported exactly like a missing one, so ids
    cannot be probed.
    """
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        raise JobNotFound(job_id)
    return job


def find_idempotent(session: Session, owner: str, key: str) -> Job | None:
    """The owner's job submitted earlier with this ``Idempotency-Key``, if any."""
    stmt = select(Job).where(Job.owner == owner, Job.idempotency_key == key)
    return session.scalars(stmt).first()


def _jobs_where(stmt: Any, owner: str | None, status: JobStatus | None) -> Any:
    if owner is not None:
        stmt = stmt.where(Job.owner == owner)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    return stmt


def list_jobs(
    session: Session,
    *,
    limit: int,
    offset: int,
    status: JobStatus | None = None,
    owner: str | None = None,
) -> list[Job]:
    """Jobs (of ``owner``, when given), newest first."""
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(_jobs_where(stmt, owner, status)))


def count_jobs(session: Session, status: JobStatus | None = None, owner: str | None = None) -> int:
    """How many jobs there are (of ``owner`` and in ``status``, when given)."""
    stmt = select(func.count()).select_from(Job)
    return int(session.scalar(_jobs_where(stmt, owner, status)) or 0)


def delete_job(session: Session, job_id: str) -> None:
    """Remove a job and its candidates."""
    session.execute(delete(Candidate).where(Candidate.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    session.commit()


def transition(
    session: Session,
    job_id: str,
    to: JobStatus,
    *,
    allowed_from: set[JobStatus] | frozenset[JobStatus],
    error: str | None = None,
) -> Job:
    """Move a job to state ``to`` if and only if it is in one of ``allowed_from``.

    One transaction: the row is locked (``SELECT ... FOR UPDATE`` where the
    backend has it) and the update repeats the state condition, so on SQLite,
    which has no row locks, two processes racing still cannot both win.

    Args:
        session: An open session; whatever it had pending is committed too.
        job_id: The job.
        to: The new state.
        allowed_from: States the job may be in now.
        error: Reason to record (for ``failed``); ``None`` leaves ``error`` alone.

    Raises:
        JobNotFound: No such job.
        InvalidTransition: The job is in a state not in ``allowed_from``;
            nothing is changed.
    """
    locked = select(Job).where(Job.id == job_id).with_for_update()
    job = session.scalars(locked.execution_options(populate_existing=True)).one_or_none()
    if job is None:
        session.rollback()
        raise JobNotFound(job_id)
    current = job.status
    if current not in allowed_from:
        session.rollback()
        raise InvalidTransition(job_id, str(current), str(to))
    values: dict[str, Any] = {"status": to, "updated_at": utcnow()}
    if error is not None:
        values["error"] = error
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(list(allowed_from)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 1) != 1:  # lost a race (SQLite only)
        session.rollback()
        raise InvalidTransition(job_id, "changed concurrently", str(to))
    session.commit()
    session.refresh(job)
    return job


def update_job(session: Session, job_id: str, **fields: Any) -> Job:
    """Set plain fields of a job (profile, baseline, result, timings, error, ...).

    The state is not one of them: it changes only through :func:`transition`.
    JSON fields are replaced, not merged; pass ``{**job.timings, "x": 1}`` to add a key.

    Raises:
        JobNotFound: No such job.
        TypeError: A field that does not exist or may not be set here.
    """
    _check_fields(fields, _JOB_FIELDS, "Job")
    job = get_job(session, job_id)
    for name, value in fields.items():
        setattr(job, name, value)
    session.commit()
    return job


# --- candidates -----------------------------------------------------------------------------


def add_candidate(session: Session, job_id: str, **fields: Any) -> Candidate:
    """Record a candidate of a job (usually ``running``, before it is scored).

    Raises:
        JobNotFound: No such job.
        DuplicateCandidate: The job already has a candidate with this trial number.
        TypeError: An unknown field.
    """
    _check_fields(fields, _CANDIDATE_FIELDS - {"job_id"}, "Candidate")
    get_job(session, job_id)
    fields.setdefault("timings", {})
    candidate = Candidate(job_id=job_id, **fields)
    session.add(candidate)
    try:
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
    _check_fields(fields, _CANDIDATE_FIELDS - {"job_id"}, "Candidate")
    fields.setdefault("status", CandidateStatus.complete)
    fields.setdefault("finished_at", utcnow())
    session.execute(
        update(Candidate)
        .where(Candidate.id == candidate_id, Candidate.status != CandidateStatus.lost)
        .values(**fields)
    )
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
    stmt = select(func.max(Candidate.id)).where(Candidate.job_id == job_id)
    return int(session.scalar(stmt) or 0)


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
    stmt = (
        select(Candidate)
        .where(
            Candidate.job_id == job_id,
            Candidate.status == CandidateStatus.complete,
            Candidate.score.is_not(None),
        )
        .order_by(Candidate.score.desc(), Candidate.trial_number)
        .limit(1)
    )
    return session.scalars(stmt).first()


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


# --- latency cache --------------------------------------------------------------------------


def cached_latency(session: Session, device: str, arch: str, batch: int) -> float | None:
    """The latency measured before for this device, network and batch, if any."""
    stmt = select(Latency.ms).where(
        Latency.device == device, Latency.arch == arch, Latency.batch == batch
    )
    value = session.scalar(stmt)
    return None if value is None else float(value)


def store_latency(session: Session, device: str, arch: str, batch: int, ms: float) -> float:
    """Cache a measurement; when another worker stored one first, theirs is kept and returned."""
    session.add(Latency(device=device, arch=arch, batch=batch, ms=ms))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = cached_latency(session, device, arch, batch)
        assert earlier is not None
        return earlier
    return ms


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
    session.commit()
