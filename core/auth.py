"""API keys: made once, shown once, stored as a digest, checked on every request.

A key is ``ps_`` plus 32 random bytes (URL-safe base64). Because it is a
random 256-bit token rather than a password, SHA-256 of it is a safe thing to
store: there is no dictionary to try. The owner name the key maps to scopes
every job, upload, batch and artifact (``service.api.deps.OwnerDep``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

PREFIX = "ps_"


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: ``plain`` is given to the user once and never stored."""

    plain: str
    digest: str
    prefix: str


def digest(plain: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(plain.encode()).hexdigest()


def make_key() -> NewKey:
    plain = PREFIX + secrets.token_urlsafe(32)
    return NewKey(plain=plain, digest=digest(plain), prefix=plain[: len(PREFIX) + 6])
