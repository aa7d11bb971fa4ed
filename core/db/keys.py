"""Repository of API keys: create (shown once), resolve to an owner, list, revoke."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.auth import NewKey, digest, make_key
from core.db.models import ApiKey, utcnow
from core.errors import NotFound


def create_key(session: Session, owner: str) -> tuple[ApiKey, NewKey]:
    """Make a key for ``owner``; the plain key is in the returned :class:`NewKey` only."""
    owner = owner.strip()
    if not owner or len(owner) > 100:
        raise ValueError("owner must be 1 to 100 characters")
    new = make_key()
    row = ApiKey(owner=owner, prefix=new.prefix, digest=new.digest)
    session.add(row)
    session.commit()
    return row, new


def owner_of(session: Session, plain: str) -> str | None:
    """The owner of a valid, unrevoked key; None for anything else."""
    row = session.scalars(select(ApiKey).where(ApiKey.digest == digest(plain))).first()
    if row is None or row.revoked_at is not None:
        return None
    return row.owner


def list_keys(session: Session, owner: str | None = None) -> list[ApiKey]:
    """Keys (of ``owner``, when given), oldest first; digests only, never the keys."""
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if owner is not None:
        stmt = stmt.where(ApiKey.owner == owner)
    return list(session.scalars(stmt))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key by its id (or its shown prefix); it stops working at once."""
    row = (
        session.get(ApiKey, key_id)
        or session.scalars(select(ApiKey).where(ApiKey.prefix == key_id)).first()
    )
    if row is None:
        raise NotFound(f"api key {key_id!r} not found")
    row.revoked_at = utcnow()
    session.commit()
    return row
