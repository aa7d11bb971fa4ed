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

Each request is one ``EVALSHA`` of the script's precomputed SHA (the script
is sent once, on the ``NOSCRIPT`` reply of a server that does not know it
yet). The API checks on its event loop (no thread-pool hop) through
:class:`Admissions`, which sends the checks waiting at the same moment as one
pipeline; :func:`retry_after` is the same for synchronous callers.
"""

from __future__ import annotations

import asyncio
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


class Admissions:
    """The rate-limit checks of one event loop, sent to Redis together.

    Under load many requests wait for their check at the same time. Sending each alone cost
    a third of a 304's CPU in the asyncio client's per-call work (connection checkout,
    timeouts, retries), not in Redis. So the checks waiting at once go as one pipeline: one
    round trip and one client call, while each is still its own run of the script, so the
    counting is exactly :func:`retry_after`'s. Checks that arrive while a pipeline is out
    go in the next one. A client belongs to the loop it was made on, and so does this.
    """

    def __init__(self, redis: AsyncRedis) -> None:
        self.redis = redis
        self.waiting: list[tuple[str, list[Any], asyncio.Future[int | None]]] = []
        self.sender: asyncio.Task[None] | None = None

    async def retry_after(
        self, subject: str, limit: int, now: float | None = None, window_s: float = WINDOW_S
    ) -> int | None:
        """:func:`retry_after` on this loop: None if admitted (or Redis is down), else the wait."""
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.waiting.append((*_call(subject, limit, now, window_s), future))
        if self.sender is None:
            self.sender = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        batch: list[tuple[str, list[Any], asyncio.Future[int | None]]] = []
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                for (_, _, future), wait in zip(batch, await self._run(batch), strict=True):
                    if not future.done():  # its request may have been cancelled
                        future.set_result(wait)
        finally:
            self.sender = None
            for _, _, future in batch + self.waiting:  # only if this task itself was stopped
                if not future.done():
                    future.set_result(None)

    async def _run(self, batch: list[tuple[str, list[Any], Any]]) -> list[int | None]:
        try:
            replies = await self._pipeline(batch)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:  # a server that has not seen the script yet (or was flushed)
                await self.redis.script_load(_SLIDE)
                again = await self._pipeline([batch[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except (RedisError, OSError):
            return [None] * len(batch)
        return [None if isinstance(reply, Exception) else _wait(reply) for reply in replies]

    async def _pipeline(self, batch: list[tuple[str, list[Any], Any]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for key, args, _ in batch:
            pipe.evalsha(_SHA, 1, key, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
