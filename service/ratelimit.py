"""Per-key rate limiting: a sliding one-minute window counted in Redis.

Counting in Redis (not in the API process) makes the limit hold across API
replicas and restarts. Each subject has a sorted set of the times of its
admitted requests; one Lua script drops those older than the window, counts
the rest and admits the request only while fewer than ``limit`` remain, so no
minute, wherever it starts, holds more than ``limit`` requests (a fixed
per-clock-minute counter admitted twice the limit across a minute's edge), and
concurrent requests are counted atomically. A refused request is not
recorded, and its ``Retry-After`` is exactly when the oldest admitted request
leaves the window. The clock is Redis's own (``TIME``) unless the caller
passes one, so API replicas with skewed clocks count alike. When Redis cannot
be reached the request is let through: reads must not fail because the
limiter is down (``/readyz`` reports Redis).

Each request costs one Redis round trip: ``EVALSHA`` of the script's
precomputed SHA (the script is sent once, on the ``NOSCRIPT`` reply of a
server that does not know it yet). The API calls :func:`retry_after_async`
on its event loop (no thread-pool hop); :func:`retry_after` is the same for
synchronous callers.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import NoScriptError, RedisError

WINDOW_S = 60

# KEYS[1]: the subject's log. ARGV: now in seconds ("" for Redis's clock), window, limit,
# a unique member. Returns {1} when admitted, else {0, seconds until a slot frees (text)}.
_SLIDE = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
  return {1}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tostring(tonumber(oldest[2]) + window - now)}
"""
_SHA = hashlib.sha1(_SLIDE.encode()).hexdigest()


def _call(subject: str, limit: int, now: float | None, window_s: float) -> tuple[str, list[Any]]:
    key = f"prunesearch:rate:{subject}"
    return key, ["" if now is None else repr(now), window_s, limit, secrets.token_hex(8)]


def _wait(reply: Any) -> int | None:
    if int(reply[0]) == 1:
        return None
    return max(1, math.ceil(float(reply[1]) - 1e-6))


def retry_after(
    redis: Redis, subject: str, limit: int, now: float | None = None, window_s: float = WINDOW_S
) -> int | None:
    """Count one request of ``subject``; seconds to wait when over ``limit``, else None.

    Args:
        redis: Where the counts live.
        subject: Whose budget (an API key's digest prefix).
        limit: Requests admitted in any ``window_s`` seconds.
        now: The time in seconds (tests); Redis's clock when omitted.
        window_s: Length of the sliding window.

    Returns:
        None when the request is admitted (or Redis cannot be reached), else the
        whole seconds (at least 1) until the oldest admitted request leaves the window.
    """
    key, args = _call(subject, limit, now, window_s)
    try:
        try:
            reply = redis.evalsha(_SHA, 1, key, *args)
        except NoScriptError:  # a server that has not seen the script yet (or was flushed)
            reply = redis.eval(_SLIDE, 1, key, *args)
    except (RedisError, OSError):
        return None
    return _wait(reply)


async def retry_after_async(
    redis: AsyncRedis, subject: str, limit: int, now: float | None = None,
    window_s: float = WINDOW_S,
) -> int | None:  # fmt: skip
    """:func:`retry_after` on an asyncio Redis client: one round trip, on the event loop."""
    key, args = _call(subject, limit, now, window_s)
    try:
        try:
            reply = await redis.evalsha(_SHA, 1, key, *args)
        except NoScriptError:
            reply = await redis.eval(_SLIDE, 1, key, *args)
    except (RedisError, OSError):
        return None
    return _wait(reply)
