"""Per-owner quotas: how much unfinished work one owner may hold in the queue.

The rate limit (:mod:`service.ratelimit`) bounds requests, not work: one key
stayed under it and queued 106 jobs of 3,568 trials (about 23,700 Redis
keys), ahead of everyone else's. Two quotas bound that, each 0 for
unlimited: jobs that have not ended (``max_active_jobs``) and trials of
them not finished yet (``max_queued_trials``). A submission that would go
over either is refused whole before anything is stored (HTTP 429, naming the
quota, its limit and the owner's count); a batch counts all its cells.

Check and insert run under a per-owner lock in Redis: two submissions, on
one API process or several, could otherwise both pass the check before
either is stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import Redis
from redis.exceptions import LockError, RedisError
from sqlalchemy.orm import Session

from core.db.quotas import owner_load
from core.errors import QueueUnavailable, QuotaExceeded
from core.settings import Settings

LOCK_TIMEOUT_S = 30  # the lock frees itself if the API process dies holding it
LOCK_WAIT_S = 10


@contextlib.contextmanager
def admission(
    session: Session, redis: Redis, settings: Settings, owner: str, *, jobs: int, trials: int
) -> Iterator[None]:
    """Admit ``jobs`` new jobs of ``trials`` trials in all; store them inside the block.

    Args:
        session: Where the owner's jobs are counted (and the new ones stored).
        redis: Where the owner's submission lock lives.
        settings: The quotas (``max_active_jobs``, ``max_queued_trials``; 0: unlimited).
        owner: Whose quota.
        jobs: Jobs the submission creates.
        trials: Their trials, all together.

    Raises:
        QuotaExceeded: The submission would go over a quota (checked on entry).
        QueueUnavailable: The lock could not be taken (Redis down, or held too long).
    """
    if not (settings.max_active_jobs or settings.max_queued_trials):
        yield
        return
    lock = redis.lock(
        f"prunesearch:submit:{owner}", timeout=LOCK_TIMEOUT_S, blocking_timeout=LOCK_WAIT_S
    )
    try:
        acquired = lock.acquire()
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot reach Redis: {exc}") from exc
    if not acquired:
        raise QueueUnavailable(f"another submission of {owner!r} holds the quota lock; retry")
    try:
        _check(session, settings, owner, jobs=jobs, trials=trials)
        yield
    finally:
        # Expired or unreachable: it frees itself after LOCK_TIMEOUT_S anyway.
        with contextlib.suppress(LockError, RedisError, OSError):
            lock.release()


def _check(session: Session, settings: Settings, owner: str, *, jobs: int, trials: int) -> None:
    load = owner_load(session, owner)
    limits = (
        ("max_active_jobs", settings.max_active_jobs, load.jobs, jobs, "jobs not yet ended"),
        ("max_queued_trials", settings.max_queued_trials, load.trials, trials,
         "trials not yet finished"),
    )  # fmt: skip
    for quota, limit, current, adds, what in limits:
        if limit and current + adds > limit:
            raise QuotaExceeded(quota, limit, current, adds, what)
