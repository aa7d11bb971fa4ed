"""The latency cache (table ``latencies``): forward times measured once per network and device.

Its own module because it stands apart from jobs and candidates: a row is
keyed by device, architecture and batch size, not by a job, so a network
timed for one job is not timed again for another.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.models import Latency


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
