"""Per-key rate limiting: a fixed window counted in Redis.

Counting in Redis (not in the API process) makes the limit hold across API
replicas and restarts. A fixed one-minute window is coarse (a client may
burst twice the limit across a window edge) but needs one INCR per request
and tells the client exactly when to come back (``Retry-After``). When
Redis cannot be reached the request is let through: reads must not fail
because the limiter is down (``/readyz`` reports Redis).
"""

from __future__ import annotations

import time

from redis import Redis
from redis.exceptions import RedisError

WINDOW_S = 60


def retry_after(redis: Redis, subject: str, limit: int, now: float | None = None) -> int | None:
    """Count one request of ``subject``; seconds to wait when over ``limit``, else None."""
    now = time.time() if now is None else now
    window = int(now // WINDOW_S)
    key = f"prunesearch:rate:{subject}:{window}"
    try:
        with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, WINDOW_S + 1)
            count = int(pipe.execute()[0])
    except (RedisError, OSError):
        return None
    if count <= limit:
        return None
    return max(1, int((window + 1) * WINDOW_S - now + 0.999))
