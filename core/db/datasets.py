"""Repository of uploaded datasets: rows only; the folders are :mod:`service.datasets`' concern.

Every read is scoped to an owner, and another owner's dataset is reported
exactly like a missing one, so ids cannot be probed across owners.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import TERMINAL, Dataset, Job
from core.errors import DatasetNotFound


def create_dataset(
    session: Session,
    *,
    dataset_id: str,
    owner: str,
    name: str,
    filename: str,
    classes: list[str],
    images: dict[str, int],
    channels: list[int],
    size: int,
    archive_size: int,
    sha256: str,
) -> Dataset:
    """Record a checked dataset whose folder is already in place."""
    row = Dataset(
        id=dataset_id,
        owner=owner,
        name=name,
        filename=filename,
        classes=list(classes),
        images=dict(images),
        channels=list(channels),
        bytes=size,
        archive_bytes=archive_size,
        sha256=sha256,
    )
    session.add(row)
    session.commit()
    return row


def get_dataset(session: Session, dataset_id: str, owner: str) -> Dataset:
    """The owner's dataset; another owner's is reported like a missing one."""
    row = session.get(Dataset, dataset_id)
    if row is None or row.owner != owner:
        raise DatasetNotFound(dataset_id)
    return row


def list_datasets(session: Session, owner: str, *, limit: int, offset: int) -> list[Dataset]:
    """The owner's datasets, newest first."""
    stmt = (
        select(Dataset)
        .where(Dataset.owner == owner)
        .order_by(Dataset.created_at.desc(), Dataset.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt))


def count_datasets(session: Session, owner: str) -> int:
    stmt = select(func.count()).select_from(Dataset).where(Dataset.owner == owner)
    return int(session.scalar(stmt) or 0)


def jobs_using(session: Session, owner: str, dataset_id: str) -> list[str]:
    """Ids of the owner's jobs that have not ended and read this dataset.

    As for uploaded weights, the owner's few unfinished specs are read and
    filtered here rather than queried as JSON (which differs per backend).
    """
    stmt = (
        select(Job.id, Job.spec)
        .where(Job.owner == owner, Job.status.not_in(TERMINAL))
        .order_by(Job.created_at, Job.id)
    )
    return [job_id for job_id, spec in session.execute(stmt) if _upload_of(spec) == dataset_id]


def _upload_of(spec: Any) -> Any:
    dataset = (spec or {}).get("dataset") or {}
    return dataset.get("upload") if isinstance(dataset, dict) else None


def delete_dataset(session: Session, dataset_id: str) -> None:
    """Remove the row (the caller removes the folder)."""
    row = session.get(Dataset, dataset_id)
    if row is not None:
        session.delete(row)
        session.commit()
