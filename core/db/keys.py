"""Repository of API keys: create (shown once), resolve to an owner, list, revoke.

Resolving a key is on every API request, so :func:`owner_of` keeps what it
found in a small in-process cache (key digest -> owner) for
:data:`KEY_CACHE_TTL_S` seconds, and :func:`cached_owner` answers from it
without the database. Only keys found valid are cached (an unknown key is
looked up every time, so a new key works at once). A revoke in this process
(:func:`revoke_key`) empties the cache at once; a revoke by another process
(``prunesearch keys revoke`` beside a running API) takes effect in every API
process within :data:`KEY_CACHE_TTL_S` seconds, when the cached entry expires.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.auth import NewKey, digest, make_key
from core.db.models import ApiKey, utcnow
from core.errors import NotFound

KEY_CACHE_TTL_S = 5.0  # longest a key revoked by another process keeps working here
KEY_CACHE_MAX = 10_000  # entries; the cache is emptied when full (it refills on use)
_cache: dict[str, tuple[str, float]] = {}  # digest -> (owner, monotonic expiry)
_cache_lock = threading.Lock()


def cached_owner(plain: str) -> str | None:
    """The owner :func:`owner_of` found for ``plain`` less than the TTL ago, else None."""
    hit = _cache.get(digest(plain))
    if hit is None or hit[1] <= time.monotonic():
        return None
    return hit[0]


def forget_cached_keys() -> None:
    """Empty the key cache: the next request of every key reads the database."""
    with _cache_lock:
        _cache.clear()


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
    key_digest = digest(plain)
    row = session.scalars(select(ApiKey).where(ApiKey.digest == key_digest)).first()
    if row is None or row.revoked_at is not None:
        return None
    with _cache_lock:
        if len(_cache) >= KEY_CACHE_MAX:
            _cache.clear()
        _cache[key_digest] = (row.owner, time.monotonic() + KEY_CACHE_TTL_S)
    return row.owner


def list_keys(session: Session, owner: str | None = None) -> list[ApiKey]:
    """Keys (of ``owner``, when given), oldest first; digests only, never the keys."""
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if owner is not None:
        stmt = stmt.where(ApiKey.owner == owner)
    return list(session.scalars(stmt))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key by its id (or its shown prefix).

    It stops working at once in this process, and within :data:`KEY_CACHE_TTL_S`
    seconds in API processes elsewhere (their key caches).
    """
    row = (
        session.get(ApiKey, key_id)
        or session.scalars(select(ApiKey).where(ApiKey.prefix == key_id)).first()
    )
    if row is None:
        raise NotFound(f"api key {key_id!r} not found")
    row.revoked_at = utcnow()
    session.commit()
    forget_cached_keys()
    return row
