"""The read path a polling dashboard hits (issue 14): cheap, and still as strict as before.

* API keys are resolved from an in-process cache (``core.db.keys``): repeated requests of one
  key do not query ``api_keys``; a key revoked by another process stops working within
  ``KEY_CACHE_TTL_S``; a revoke in this process and an unknown key are refused at once.
* The rate limiter is one ``EVALSHA`` per request, on the event loop; it still limits, and
  it still works after Redis forgets the script.
* A read costs one hop through the thread pool on both databases (the route's body), not four.
* What start-up made is frozen out of the cyclic collector while the app runs (issue 14: a
  full collection under load stalled every request in flight), and thawed when it stops.

Real Redis and both database backends (``db_url``).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import event, update

from core.db import keys
from core.db.models import ApiKey, utcnow
from core.db.session import session_factory
from core.settings import Settings
from service.ratelimit import WINDOW_S, Admissions, retry_after
from tests.service.conftest import SPEC, keyed_client
from tests.support import free_port

START = 1_000_000 * WINDOW_S + 30.0


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, redis_url=redis_url)


@pytest.fixture(autouse=True)
def empty_key_cache() -> Iterator[None]:
    keys.forget_cached_keys()
    yield
    keys.forget_cached_keys()


def _key_queries(settings: Settings) -> list[str]:
    """Statements that read ``api_keys`` on the app's engine, appended as they run."""
    seen: list[str] = []
    engine = session_factory(settings.database_url).kw["bind"]

    @event.listens_for(engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "api_keys" in statement:
            seen.append(statement)

    return seen


def _revoke_elsewhere(settings: Settings, owner: str) -> None:
    """What ``prunesearch keys revoke`` in another process does: the row only, no cache."""
    with session_factory(settings.database_url)() as s:
        s.execute(update(ApiKey).where(ApiKey.owner == owner).values(revoked_at=utcnow()))
        s.commit()


def test_a_known_key_is_not_looked_up_on_every_request(settings: Settings) -> None:
    with keyed_client(settings, "alice") as alice:
        seen = _key_queries(settings)
        assert alice.get("/v1/jobs").status_code == 200  # the first: looked up, cached
        looked_up = len(seen)
        assert looked_up == 1
        for _ in range(10):
            assert alice.get("/v1/jobs").status_code == 200
        assert len(seen) == looked_up


def test_a_key_revoked_elsewhere_stops_working_within_the_ttl(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "KEY_CACHE_TTL_S", 0.5)
    with keyed_client(settings, "alice") as alice:
        assert alice.get("/v1/jobs").status_code == 200
        _revoke_elsewhere(settings, "alice")
        revoked_at = time.monotonic()
        codes = []
        while time.monotonic() - revoked_at < 2.0:
            codes.append((time.monotonic() - revoked_at, alice.get("/v1/jobs").status_code))
            if codes[-1][1] == 401:
                break
            time.sleep(0.05)
        assert codes[-1][1] == 401, codes
        assert codes[-1][0] <= 0.5 + 0.3, codes  # the TTL, and a request's time
        assert alice.get("/v1/jobs").status_code == 401  # and it stays refused


def test_a_revoke_in_this_process_and_an_unknown_key_are_refused_at_once(
    settings: Settings,
) -> None:
    with keyed_client(settings, "alice") as alice:
        assert alice.get("/v1/jobs").status_code == 200
        with session_factory(settings.database_url)() as s:
            (row,) = keys.list_keys(s, "alice")
            keys.revoke_key(s, row.id)
        assert alice.get("/v1/jobs").status_code == 401
        assert alice.get("/v1/jobs", headers={"Authorization": "Bearer ps_nope"}).status_code == 401


def test_the_limiter_still_limits_with_cached_keys(settings: Settings) -> None:
    limited = settings.model_copy(update={"rate_limit": 3})
    with keyed_client(limited, "alice") as alice:
        assert [alice.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
        refused = alice.get("/v1/jobs")
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60


def test_async_limiter_counts_like_the_sync_one_and_survives_a_script_flush(
    redis: Redis, redis_url: str
) -> None:
    async def check() -> list[int | None]:
        client = AsyncRedis.from_url(redis_url)
        limiter = Admissions(client)
        try:
            got = [await limiter.retry_after("a", 2, now=START + i) for i in range(3)]
            await client.script_flush()  # Redis restarted: the script is gone (NOSCRIPT)
            got.append(await limiter.retry_after("b", 2, now=START))
            return got
        finally:
            await client.aclose()

    assert asyncio.run(check()) == [None, None, 58, None]
    redis.script_flush()
    assert retry_after(redis, "c", 1, now=START) is None
    assert retry_after(redis, "c", 1, now=START + 1) == 59


def test_checks_waiting_together_go_as_one_pipeline_and_count_exactly(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 requests at once against a limit of 25: 25 admitted, 15 told when, in few round trips."""
    sent: list[int] = []

    async def check() -> list[int | None]:
        client = AsyncRedis.from_url(redis_url)
        limiter = Admissions(client)
        send = limiter._pipeline

        async def counted(batch: list[Any]) -> list[Any]:
            sent.append(len(batch))
            return await send(batch)

        monkeypatch.setattr(limiter, "_pipeline", counted)
        try:
            await client.delete("prunesearch:rate:crowd")
            return await asyncio.gather(
                *(limiter.retry_after("crowd", 25, now=START + i / 100) for i in range(40))
            )
        finally:
            await client.delete("prunesearch:rate:crowd")
            await client.aclose()

    got = asyncio.run(check())
    assert got[:25] == [None] * 25  # admitted in the order they asked
    assert got[25:] == [WINDOW_S] * 15
    assert sum(sent) == 40 and len(sent) <= 2, sent


def test_a_limiter_whose_redis_is_down_lets_requests_through() -> None:
    async def check() -> list[int | None]:
        client = AsyncRedis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=1)
        try:
            return await asyncio.gather(*(Admissions(client).retry_after("x", 1) for _ in range(3)))
        finally:
            await client.aclose()

    assert asyncio.run(check()) == [None, None, None]


def test_a_read_costs_one_thread_pool_hop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route's body; a database server's read session is closed on the loop (autocommit)."""
    with keyed_client(settings, "alice") as alice:
        job = alice.post("/v1/jobs", json=SPEC).json()["id"]
        assert alice.get(f"/v1/jobs/{job}").status_code == 200  # the key is cached now
        hops: list[str] = []
        real = anyio.to_thread.run_sync

        async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
            hops.append(getattr(func, "__name__", repr(func)))
            return await real(func, *args, **kwargs)

        monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
        for path in (f"/v1/jobs/{job}", "/v1/jobs", f"/v1/jobs/{job}/candidates?since=0"):
            hops.clear()
            assert alice.get(path).status_code == 200
            assert len(hops) == 1, (path, hops)


def test_what_start_up_made_is_frozen_while_the_app_runs(settings: Settings) -> None:
    with keyed_client(settings) as client:
        frozen = gc.get_freeze_count()
        assert client.get("/v1/jobs").status_code == 200
    # the modules, the app and its engines: tens of thousands of objects a full pass skips
    assert frozen > 10_000
    assert gc.get_freeze_count() == 0
