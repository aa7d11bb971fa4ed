"""The per-key rate limit: at most ``limit`` requests in any sliding minute, counted in Redis.

Real Redis (its own database, flushed per test). The clock is passed in, so three minutes of a
client hammering the API take a second; the concurrency test uses Redis's own clock.
"""

from __future__ import annotations

import bisect
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from redis import Redis

from core.queue import redis_from_url
from core.settings import Settings
from service.ratelimit import WINDOW_S, retry_after
from tests.service.conftest import keyed_client
from tests.support import free_port

LIMIT = 600
START = 1_000_000 * WINDOW_S + 30.0  # the middle of a clock minute


def _busiest_window(times: list[float], window: float = WINDOW_S) -> int:
    """The most of ``times`` (sorted) inside any half-open interval ``[t, t + window)``."""
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


def test_no_sliding_minute_admits_more_than_the_limit(redis: Redis) -> None:
    """A client sending 40 requests a second for three minutes: 600 in any minute, not 1,200.

    A fixed window admitted 600 in the last seconds of one clock minute and 600 more at the
    start of the next.
    """
    sent = [START + i * 0.025 for i in range(3 * WINDOW_S * 40)]
    admitted = [t for t in sent if retry_after(redis, "burst", LIMIT, now=t) is None]
    assert _busiest_window(admitted) == LIMIT
    # Once the first minute is full, each request leaving the window lets one more in.
    assert len(admitted) == 3 * LIMIT


def test_retry_after_is_when_the_oldest_request_leaves_the_window(redis: Redis) -> None:
    t0 = START
    for i in range(5):
        assert retry_after(redis, "s", 5, now=t0 + 10 * i) is None
    assert retry_after(redis, "s", 5, now=t0 + 50.2) == 10  # 9.8 s left, rounded up
    assert retry_after(redis, "s", 5, now=t0 + 59.5) == 1
    assert retry_after(redis, "s", 5, now=t0 + 60) is None  # the one of t0 has left
    assert retry_after(redis, "s", 5, now=t0 + 61) == 9  # next, the one of t0 + 10
    assert retry_after(redis, "other", 5, now=t0 + 61) is None  # each subject on its own


def test_concurrent_requests_are_counted_atomically(redis: Redis) -> None:
    """Eight threads race on one key with Redis's own clock: exactly ``limit`` get through."""

    def hammer(_: int) -> int:
        return sum(retry_after(redis, "race", 50) is None for _ in range(40))

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(hammer, range(8))) == 50


def test_redis_down_lets_requests_through(tmp_path: Path, db_url: str) -> None:
    """Reads must not fail because the limiter cannot count (``/readyz`` reports Redis)."""
    down = redis_from_url(f"redis://127.0.0.1:{free_port()}/0")
    assert retry_after(down, "s", 1, now=START) is None
    assert retry_after(down, "s", 1, now=START) is None
    settings = Settings(
        home=tmp_path / "home",
        database_url=db_url,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        rate_limit=2,
    )
    with keyed_client(settings, "alice") as alice:
        assert [alice.get("/v1/jobs").status_code for _ in range(4)] == [200] * 4
