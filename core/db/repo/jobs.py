"""Jobs (table ``jobs``): creating, finding, listing, changing and deleting a job.

A job's state changes only through :func:`transition`, which is where the
rule "which state may follow which" is enforced for the API and the workers
alike. The ``Idempotency-Key`` lookup lives here too, since the key is a
column of the job it created.

Every write here and in :mod:`core.db.repo.candidates` raises the job's
``version`` in the same transaction (:func:`bump`), in SQL (``version + 1``),
so two writers never both write the same number. The API's ETags are made of
it: :func:`job_versions` is all a poll that finds nothing new reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from core.db.models import LOCAL_OWNER, Candidate, DeletedJob, Job, JobStatus, utcnow
from core.db.repo.fields import check_fields
from core.errors import InvalidTransition, JobNotFound
from core.spec import JobSpec

_JOB_FIELDS = frozenset(Job.__table__.columns.keys()) - {"id", "status", "created_at", "version"}


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


@dataclass(frozen=True)
class JobVersion:
    """What a job's ETag is made of: which job, its change counter, and its state."""

    id: str
    version: int
    status: JobStatus

    @classmethod
    def of(cls, job: Job) -> JobVersion:
        return cls(job.id, job.version, job.status)


# Built once: every poll runs it, and building and keying a statement costs more than running
# it (about 160 of 290 us on SQLite). Parameters ``job_id`` and ``owner``.
VERSION_OF = select(Job.id, Job.version, Job.status).where(
    Job.id == bindparam("job_id"), Job.owner == bindparam("owner")
)


def job_version(session: Session, job_id: str, owner: str) -> JobVersion:
    """The job's :class:`JobVersion`, read without its JSON columns; raises :class:`JobNotFound`."""
    row = session.execute(VERSION_OF, {"job_id": job_id, "owner": owner}).one_or_none()
    if row is None:
        raise JobNotFound(job_id)
    return JobVersion(*row)


def job_versions(
    session: Session, *, limit: int, offset: int, status: JobStatus | None, owner: str
) -> list[JobVersion]:
    """:func:`list_jobs`'s page as :class:`JobVersion` rows (one small query)."""
    stmt = select(Job.id, Job.version, Job.status)
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    return [JobVersion(*row) for row in session.execute(_jobs_where(stmt, owner, status))]


def bump(session: Session, job_id: Any) -> None:
    """Raise the job's ``version`` in the caller's transaction (``job_id`` may be a subquery).

    ``updated_at`` is kept: it is the job's own last change, not its candidates'.
    """
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(version=Job.version + 1, updated_at=Job.updated_at)
        .execution_options(synchronize_session=False)
    )


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
    """Remove a job and its candidates, leaving a tombstone (:func:`was_deleted`)."""
    session.execute(delete(Candidate).where(Candidate.job_id == job_id))
    if session.execute(delete(Job).where(Job.id == job_id)).rowcount:  # type: ignore[attr-defined]
        session.merge(DeletedJob(job_id=job_id))
    session.commit()


def was_deleted(session: Session, job_id: str) -> bool:
    """Whether this database had the job and it was deleted (not: never had it)."""
    return session.get(DeletedJob, job_id) is not None


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
    values: dict[str, Any] = {"status": to, "updated_at": utcnow(), "version": Job.version + 1}
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
    check_fields(fields, _JOB_FIELDS, "Job")
    job = get_job(session, job_id)
    for name, value in fields.items():
        setattr(job, name, value)
    job.version = Job.version + 1  # in SQL: see the module docstring
    session.commit()
    return job
