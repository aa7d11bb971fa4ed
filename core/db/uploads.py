"""Repository of uploaded weights: rows only; the files are :mod:`service.uploads`' concern.

Every read is scoped to an owner, and another owner's upload is reported
exactly like a missing one, so ids cannot be probed across owners.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import TERMINAL, Job, Upload
from core.errors import UploadNotFound


def create_upload(
    session: Session,
    *,
    upload_id: str,
    owner: str,
    arch: str,
    arch_kwargs: dict[str, Any],
    filename: str,
    size: int,
    sha256: str,
    tensors: int,
) -> Upload:
    """Record a checked upload whose file is already in place."""
    row = Upload(
        id=upload_id,
        owner=owner,
        arch=arch,
        arch_kwargs=dict(arch_kwargs),
        filename=filename,
        size=size,
        sha256=sha256,
        tensors=tensors,
    )
    session.add(row)
    session.commit()
    return row


def get_upload(session: Session, upload_id: str, owner: str) -> Upload:
    """The owner's upload; another owner's is reported like a missing one."""
    row = session.get(Upload, upload_id)
    if row is None or row.owner != owner:
        raise UploadNotFound(upload_id)
    return row


def list_uploads(session: Session, owner: str, *, limit: int, offset: int) -> list[Upload]:
    """The owner's uploads, newest first."""
    stmt = (
        select(Upload)
        .where(Upload.owner == owner)
        .order_by(Upload.created_at.desc(), Upload.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt))


def count_uploads(session: Session, owner: str) -> int:
    stmt = select(func.count()).select_from(Upload).where(Upload.owner == owner)
    return int(session.scalar(stmt) or 0)


def jobs_using(session: Session, owner: str, upload_id: str) -> list[str]:
    """Ids of the owner's jobs that have not ended and start from this upload.

    The spec is a JSON column whose querying differs between SQLite and
    PostgreSQL; an owner has few unfinished jobs, so they are read and
    filtered here.
    """
    stmt = (
        select(Job.id, Job.spec)
        .where(Job.owner == owner, Job.status.not_in(TERMINAL))
        .order_by(Job.created_at, Job.id)
    )
    return [
        job_id
        for job_id, spec in session.execute(stmt)
        if ((spec or {}).get("model") or {}).get("weights") == upload_id
    ]


def delete_upload(session: Session, upload_id: str) -> None:
    """Remove the row (the caller removes the file)."""
    row = session.get(Upload, upload_id)
    if row is not None:
        session.delete(row)
        session.commit()
