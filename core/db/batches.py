"""Repository of batches: one transaction stores the batch and all its jobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db import repo
from core.db.models import Batch, Job
from core.errors import NotFound
from core.spec import JobSpec


def create_batch(
    session: Session,
    owner: str,
    name: str,
    request: dict[str, Any],
    specs: list[JobSpec],
    queue: str,
) -> tuple[Batch, list[Job]]:
    """Store the batch and its jobs (state ``queued``) together, or nothing."""
    batch = Batch(owner=owner, name=name, request=request)
    session.add(batch)
    session.flush()
    jobs = [
        repo.create_job(session, spec, queue, owner=owner, batch_id=batch.id, commit=False)
        for spec in specs
    ]
    session.commit()
    return batch, jobs


def get_batch(session: Session, batch_id: str, owner: str) -> Batch:
    """The owner's batch; another owner's is reported like a missing one."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.owner != owner:
        raise NotFound(f"batch {batch_id!r} not found")
    return batch


def batch_jobs(session: Session, batch_id: str) -> list[Job]:
    """The batch's jobs in the order they were submitted."""
    stmt = select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at, Job.id)
    return list(session.scalars(stmt))


def list_batches(session: Session, owner: str, *, limit: int, offset: int) -> list[Batch]:
    stmt = (
        select(Batch)
        .where(Batch.owner == owner)
        .order_by(Batch.created_at.desc(), Batch.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt))


def count_batches(session: Session, owner: str) -> int:
    stmt = select(func.count()).select_from(Batch).where(Batch.owner == owner)
    return int(session.scalar(stmt) or 0)


def delete_batch(session: Session, batch_id: str) -> None:
    """Remove a batch and (cascade) its jobs and their candidates."""
    for job in batch_jobs(session, batch_id):
        repo.delete_job(session, job.id)
    batch = session.get(Batch, batch_id)
    if batch is not None:
        session.delete(batch)
        session.commit()
