"""Cheap polls: ETag / If-None-Match on the polled reads, and ``since=`` on the candidates list.

On both database backends and a real Redis, through the app with API keys, as a dashboard polls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from core.db import keys, repo
from core.db.models import CandidateStatus, JobStatus
from core.db.session import read_session_factory, session_factory
from core.settings import Settings
from core.spec import JobSpec
from service import stall
from service.api import conditional, fastpoll
from service.api.conditional import CACHE_CONTROL
from service.api.deps import get_settings
from tests.postgres import libpq
from tests.service.conftest import add_key, keyed_client

SPEC: dict[str, Any] = {
    "name": "poll-lenet",
    "model": {"arch": "lenet5", "pretrain_epochs": 0},
    "dataset": {"name": "synthetic"},
    "target": {"flops_ratio": 0.5},
    "search": {"n_trials": 5},
}


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, redis_url=redis_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with keyed_client(settings, "alice") as c:
        yield c


def _job(settings: Settings) -> str:
    with session_factory(settings.database_url)() as s:
        return repo.create_job(s, JobSpec.model_validate(SPEC), "interactive", owner="alice").id


def _add(s: Session, job_id: str, trial: int) -> int:
    """A running candidate of ``job_id`` added in session ``s``; its id."""
    cand = repo.add_candidate(
        s, job_id, trial_number=trial, key=f"k{trial}", ratios=[0.5], proposed=[0.5],
        counts=[4], flops=500.0, params=50.0,
    )  # fmt: skip
    return cand.id


def _candidate(settings: Settings, job_id: str, trial: int) -> int:
    """A running candidate of ``job_id``; its id."""
    with session_factory(settings.database_url)() as s:
        return _add(s, job_id, trial)


def _finish(settings: Settings, cand_id: int, score: float = 0.7) -> None:
    with session_factory(settings.database_url)() as s:
        repo.finish_candidate(s, cand_id, score=score, accuracy=score)


POLLED = ["/v1/jobs/{id}", "/v1/jobs", "/v1/jobs/{id}/candidates"]


@pytest.mark.parametrize("path", POLLED)
def test_unchanged_is_304_and_a_change_is_200_with_a_new_etag(
    client: TestClient, settings: Settings, path: str
) -> None:
    job_id = _job(settings)
    _candidate(settings, job_id, 0)
    url = path.format(id=job_id)
    first = client.get(url)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    assert "no-cache" in first.headers["cache-control"]
    assert "private" in first.headers["cache-control"]

    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": f'"other", {etag}'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200

    _finish(settings, _candidate(settings, job_id, 1))  # progress and the best change
    changed = client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json() != first.json()


@pytest.mark.parametrize("path", POLLED)
def test_304_needs_a_key_and_never_crosses_owners(
    client: TestClient, settings: Settings, path: str
) -> None:
    job_id = _job(settings)
    url = path.format(id=job_id)
    etag = client.get(url).headers["etag"]
    bob = add_key(settings.database_url, "bob")

    anonymous = client.get(url, headers={"If-None-Match": etag, "Authorization": ""})
    assert anonymous.status_code == 401
    theirs = client.get(url, headers={"If-None-Match": etag, **bob})
    if "{id}" in path:
        assert theirs.status_code == 404  # another owner's job: as if missing, not "unchanged"
    else:
        assert theirs.status_code == 200  # bob's (empty) list has a tag of its own
        assert theirs.json()["items"] == []
        assert theirs.headers["etag"] != etag


def _version(settings: Settings, job_id: str) -> int:
    with session_factory(settings.database_url)() as s:
        return repo.job_version(s, job_id, "alice").version


WRITES: dict[str, Callable[[Session, str, int], object]] = {
    "add_candidate": lambda s, job, _c: _add(s, job, 9),
    "finish_candidate": lambda s, _job, cand: repo.finish_candidate(s, cand, score=0.5),
    "set_rungs": lambda s, _job, cand: repo.set_rungs(s, cand, {"short": 0.5}),
    "mark_lost": lambda s, _job, cand: repo.mark_lost(s, cand, "worker died"),
    "update_job": lambda s, job, _c: repo.update_job(s, job, timings={"x": 1.0}),
    "transition": lambda s, job, _c: repo.transition(
        s, job, JobStatus.preparing, allowed_from={JobStatus.queued}
    ),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_every_write_of_a_job_or_its_candidates_raises_its_version_alone(
    client: TestClient, settings: Settings, write: str
) -> None:
    """The ETags are made of the version: a write that did not raise it would be a stale 304.

    (``client`` is here for the migrated database it comes with.)
    """
    job_id, other = _job(settings), _job(settings)
    cand = _candidate(settings, job_id, 0)
    before, other_before = _version(settings, job_id), _version(settings, other)
    with session_factory(settings.database_url)() as s:
        WRITES[write](s, job_id, cand)
    assert _version(settings, job_id) == before + 1
    assert _version(settings, other) == other_before


class _Recorded:
    """A connection (DBAPI or psycopg async) whose statements are appended to ``seen``."""

    def __init__(self, inner: Any, seen: list[str]) -> None:
        self.inner, self.seen = inner, seen

    def cursor(self) -> Any:
        inner = self.inner.cursor()

        def execute(sql: str, *args: Any) -> Any:
            self.seen.append(sql)
            return inner.execute(sql, *args)

        return SimpleNamespace(execute=execute, fetchone=inner.fetchone, close=inner.close)

    async def execute(self, sql: str, *args: Any) -> Any:
        self.seen.append(sql)
        return await self.inner.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _record_fast_path(monkeypatch: pytest.MonkeyPatch, seen: list[str]) -> None:
    """Every statement the fast path's readers run from now on is appended to ``seen``.

    They run on raw connections, which fire no engine event.
    """
    plain = fastpoll.reader

    def recording(url: str) -> fastpoll.Reader | None:
        found = plain(url)
        if isinstance(found, fastpoll._FileReader):
            raw = found.engine.raw_connection
            monkeypatch.setattr(found.engine, "raw_connection", lambda: _Recorded(raw(), seen))
        elif isinstance(found, fastpoll._ServerReader):
            found.idle.clear()  # new connections, recorded
            connect = found.connect

            async def recorded() -> Any:
                return _Recorded(await connect(), seen)

            monkeypatch.setattr(found, "connect", recorded)
        return found

    monkeypatch.setattr(fastpoll, "reader", recording)


@pytest.mark.parametrize(("path", "statements"), list(zip(POLLED, [1, 2, 1], strict=True)))
def test_a_poll_that_finds_nothing_new_reads_only_the_versions(
    client: TestClient,
    settings: Settings,
    path: str,
    statements: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 304 is decided before the view is built: the job's version (and the list's count)."""
    job_id = _job(settings)
    _finish(settings, _candidate(settings, job_id, 0))
    url = path.format(id=job_id)
    etag = client.get(url).headers["etag"]
    factories = {session_factory, read_session_factory}
    engines = list({f(settings.database_url).kw["bind"] for f in factories})
    seen: list[str] = []

    def record(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        seen.append(sql)

    _record_fast_path(monkeypatch, seen)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
        unchanged = len(seen)
        assert client.get(url).status_code == 200
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
    assert unchanged == statements, seen[:unchanged]
    assert len(seen) > 2 * unchanged  # the whole view costs more than the versions


def test_a_searching_job_is_rebuilt_once_per_window(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its stall grows with time alone, so its tag holds the REFRESH_S window too."""
    job_id = _job(settings)
    clock = [1000.0 * stall.REFRESH_S]
    monkeypatch.setattr(stall, "time", SimpleNamespace(time=lambda: clock[0]))
    url = f"/v1/jobs/{job_id}"
    queued = client.get(url).headers["etag"]
    clock[0] += stall.REFRESH_S
    assert client.get(url, headers={"If-None-Match": queued}).status_code == 304
    with session_factory(settings.database_url)() as s:
        repo.transition(s, job_id, JobStatus.searching, allowed_from={JobStatus.queued})
    searching = client.get(url).headers["etag"]
    assert client.get(url, headers={"If-None-Match": searching}).status_code == 304
    clock[0] += stall.REFRESH_S
    assert client.get(url, headers={"If-None-Match": searching}).status_code == 200


def _since(client: TestClient, job_id: str, since: str, **params: Any) -> dict[str, Any]:
    reply = client.get(f"/v1/jobs/{job_id}/candidates", params={"since": since, **params})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _ids(body: dict[str, Any]) -> list[int]:
    return [c["id"] for c in body["items"]]


def test_since_returns_only_new_and_changed_candidates(
    client: TestClient, settings: Settings
) -> None:
    job_id = _job(settings)
    done = _candidate(settings, job_id, 0)
    _finish(settings, done)
    running = _candidate(settings, job_id, 1)

    first = _since(client, job_id, "0")
    assert _ids(first) == [done, running]
    assert [c["status"] for c in first["items"]] == ["complete", "running"]
    cursor = first["next_since"]

    assert _ids(_since(client, job_id, cursor)) == []  # nothing new: nothing again

    new = _candidate(settings, job_id, 2)
    _finish(settings, running, score=0.9)  # returned while running, now complete
    second = _since(client, job_id, cursor)
    assert _ids(second) == [running, new]
    assert [c["status"] for c in second["items"]] == ["complete", "running"]
    assert second["items"][0]["score"] == 0.9

    _finish(settings, new)
    third = _since(client, job_id, second["next_since"])
    assert _ids(third) == [new]
    assert third["items"][0]["status"] == "complete"
    assert _ids(_since(client, job_id, third["next_since"])) == []


def test_a_cursor_that_did_not_move_comes_back_as_sent(
    client: TestClient, settings: Settings
) -> None:
    """The next poll is then the same URL, so its ETag makes it a 304 (not a second full reply)."""
    job_id = _job(settings)
    url = f"/v1/jobs/{job_id}/candidates?since=0"
    first = client.get(url)
    assert first.json()["next_since"] == "0" and first.json()["items"] == []
    assert client.get(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 304

    cand = _candidate(settings, job_id, 0)
    moved = _since(client, job_id, "0")
    assert _ids(moved) == [cand] and moved["next_since"] != "0"
    assert _since(client, job_id, moved["next_since"])["next_since"] == moved["next_since"]


def test_since_pages_by_limit_and_keeps_tracking_running_ones(
    client: TestClient, settings: Settings
) -> None:
    job_id = _job(settings)
    ids = [_candidate(settings, job_id, trial) for trial in range(3)]

    page = _since(client, job_id, "0", limit=2)
    assert _ids(page) == ids[:2]
    rest = _since(client, job_id, page["next_since"], limit=2)
    assert _ids(rest) == ids[2:]

    _finish(settings, ids[0])
    assert _ids(_since(client, job_id, rest["next_since"], limit=2)) == [ids[0]]


def test_since_after_the_job_ends_returns_every_candidate_once(
    client: TestClient, settings: Settings
) -> None:
    """``finalize`` records rungs on finished candidates just before the job ends."""
    job_id = _job(settings)
    cand = _candidate(settings, job_id, 0)
    _finish(settings, cand)
    cursor = _since(client, job_id, "0")["next_since"]
    with session_factory(settings.database_url)() as s:
        repo.set_rungs(s, cand, {"short_finetune": 0.8})
        repo.transition(s, job_id, JobStatus.cancelled, allowed_from={JobStatus.queued})

    after = _since(client, job_id, cursor)
    assert _ids(after) == [cand]
    assert after["items"][0]["rungs"] == {"short_finetune": 0.8}
    assert _ids(_since(client, job_id, after["next_since"])) == []


def test_since_with_a_status_filter_still_sees_a_running_one_finish(
    client: TestClient, settings: Settings
) -> None:
    job_id = _job(settings)
    cand = _candidate(settings, job_id, 0)
    complete = [CandidateStatus.complete.value]
    first = _since(client, job_id, "0", status=complete)
    assert _ids(first) == []
    _finish(settings, cand)
    assert _ids(_since(client, job_id, first["next_since"], status=complete)) == [cand]


# Ids beyond a 32-bit integer were a 500 on PostgreSQL (found by the schemathesis run).
MALFORMED = ["", "x1", "1..2", "-1", "r1.", "1" * 16, "r1,2"]
TOO_LARGE = ["r2147483648", "r0.2147483648", "e99999999999"]


@pytest.mark.parametrize("bad", MALFORMED + TOO_LARGE)
def test_malformed_since_is_422_naming_it(client: TestClient, settings: Settings, bad: str) -> None:
    job_id = _job(settings)
    reply = client.get(f"/v1/jobs/{job_id}/candidates", params={"since": bad})
    assert reply.status_code == 422
    assert any(error["loc"][-1] == "since" for error in reply.json()["detail"])


def test_the_largest_candidate_id_is_a_valid_cursor(client: TestClient, settings: Settings) -> None:
    reply = client.get(f"/v1/jobs/{_job(settings)}/candidates", params={"since": "r2147483647"})
    assert reply.status_code == 200 and reply.json()["items"] == []


def test_304_is_declared_on_the_polled_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in POLLED:
        reply = paths[path.replace("{id}", "{job_id}")]["get"]["responses"]["304"]
        assert "ETag" in reply["headers"]


FAST = ["/v1/jobs/{id}", "/v1/jobs/{id}/candidates?limit=5&order=-score"]


@pytest.fixture
def settings_seen(client: TestClient, settings: Settings) -> list[Settings]:
    """Every time a FastAPI route resolves its settings: no entry means FastAPI never ran."""
    seen: list[Settings] = []

    async def spy() -> Settings:
        seen.append(settings)
        return settings

    app: Any = client.app
    app.dependency_overrides[get_settings] = spy
    return seen


@pytest.mark.parametrize("path", FAST)
def test_a_current_poll_is_answered_before_fastapi(
    client: TestClient, settings: Settings, settings_seen: list[Settings], path: str
) -> None:
    job_id = _job(settings)
    _finish(settings, _candidate(settings, job_id, 0))
    url = path.format(id=job_id)
    full = client.get(url)
    assert full.status_code == 200
    settings_seen.clear()

    fast = client.get(url, headers={"If-None-Match": full.headers["etag"]})
    assert fast.status_code == 304 and fast.content == b""
    assert settings_seen == []  # the middleware answered: no dependency was solved
    assert {k: fast.headers[k] for k in ("etag", "cache-control", "vary")} == {
        "etag": full.headers["etag"],
        "cache-control": CACHE_CONTROL,
        "vary": "Authorization",
    }


def test_a_stale_poll_of_the_candidates_is_the_routes(
    client: TestClient, settings: Settings, settings_seen: list[Settings]
) -> None:
    """Their full replies validate a query, so FastAPI builds them."""
    job_id = _job(settings)
    _finish(settings, _candidate(settings, job_id, 0))
    url = FAST[1].format(id=job_id)
    etag = client.get(url).headers["etag"]
    assert settings_seen != []
    settings_seen.clear()
    assert client.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200
    assert settings_seen != []  # a tag that does not match goes on to the route
    settings_seen.clear()
    other = client.get(f"{url}&offset=1", headers={"If-None-Match": etag})
    assert other.status_code == 200 and settings_seen != []  # another query, another tag


@pytest.mark.parametrize("path", ["/v1/jobs/{id}", "/v1/jobs/{id}/candidates?since=0"])
def test_a_full_reply_from_the_middleware_is_the_routes_reply(
    client: TestClient, settings: Settings, settings_seen: list[Settings], path: str
) -> None:
    """Job views and ``since=`` polls, fresh or for a stale tag, are the route function's."""
    job_id = _job(settings)
    _finish(settings, _candidate(settings, job_id, 0), score=0.81)
    _candidate(settings, job_id, 1)
    url = path.format(id=job_id)
    keys.forget_cached_keys()  # the caller is unknown to the middleware: FastAPI answers
    by_route = client.get(url)
    assert settings_seen != []
    settings_seen.clear()
    for tags in ({}, {"If-None-Match": '"stale"'}):
        fast = client.get(url, headers=tags)
        assert settings_seen == []  # the middleware answered
        assert fast.status_code == by_route.status_code == 200
        assert fast.content == by_route.content
        assert {k: v for k, v in fast.headers.items() if k != "date"} == {
            k: v for k, v in by_route.headers.items() if k != "date"
        }
    body = by_route.json()
    if "items" in body:
        assert [c["trial_number"] for c in body["items"]] == [0, 1]
    else:
        assert body["best"]["score"] == pytest.approx(0.81)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("since=0&limit=1", 200),
        ("since=r2147483648", 422),
        ("since=r1.", 422),
        ("since=", 422),
        ("since=\u0661", 200),  # a non-ASCII digit: the route's pattern takes it, ours not
    ],
)
def test_a_candidates_query_other_than_a_valid_since_alone_is_the_routes(
    client: TestClient, settings: Settings, settings_seen: list[Settings], query: str, status: int
) -> None:
    job_id = _job(settings)
    reply = client.get(f"/v1/jobs/{job_id}/candidates?{query}")
    assert settings_seen != []  # FastAPI validated it
    assert reply.status_code == status, reply.text


def test_the_fast_path_leaves_unknown_keys_and_other_owners_to_the_app(
    client: TestClient, settings: Settings, settings_seen: list[Settings]
) -> None:
    job_id = _job(settings)
    url = f"/v1/jobs/{job_id}"
    etag = client.get(url).headers["etag"]
    bob = add_key(settings.database_url, "bob")
    for _ in range(2):  # bob's key is unknown, then cached: a 404 both times
        assert client.get(url, headers={"If-None-Match": etag, **bob}).status_code == 404
        assert client.get(url, headers=bob).status_code == 404  # a whole view, the app's 404
    keys.forget_cached_keys()  # alice's key must be looked up: by the app, once
    settings_seen.clear()
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert settings_seen != []
    settings_seen.clear()
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert settings_seen == []
    too_long = client.get(url, headers={"If-None-Match": f"{etag}, " + "x" * 2000})
    assert too_long.status_code == 422  # the route's limit on the header still holds


def test_every_poll_counts_once_against_the_rate_limit(
    tmp_path: Path, db_url: str, redis_url: str
) -> None:
    limited = Settings(
        home=tmp_path / "home", database_url=db_url, redis_url=redis_url, rate_limit=3
    )
    with keyed_client(limited, "alice") as c:
        url = f"/v1/jobs/{_job(limited)}"
        etag = c.get(url).headers["etag"]  # 1: the whole view (by the middleware)
        for _ in range(2):  # 2 and 3: 304s
            assert c.get(url, headers={"If-None-Match": etag}).status_code == 304
        refused = c.get(url, headers={"If-None-Match": etag})
    assert refused.status_code == 429, refused.text  # the 4th, refused by the app's limiter
    assert int(refused.headers["retry-after"]) >= 1


def test_a_new_shape_of_the_views_is_a_new_tag(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an upgrade that changes a view, an old tag must not keep the old body current."""
    url = f"/v1/jobs/{_job(settings)}"
    etag = client.get(url).headers["etag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    monkeypatch.setattr(conditional, "views_format", lambda: b"a view with a new field")
    upgraded = client.get(url, headers={"If-None-Match": etag})
    assert upgraded.status_code == 200 and upgraded.headers["etag"] != etag


def test_a_sqlite_read_that_cannot_start_at_once_goes_on_to_the_app(
    client: TestClient, settings: Settings, settings_seen: list[Settings], db_url: str
) -> None:
    """The event loop never waits for the fast path's connection: the route answers instead."""
    if not db_url.startswith("sqlite"):
        return  # a database server's read is awaited: the loop goes on meanwhile
    url = f"/v1/jobs/{_job(settings)}/candidates?since=0&limit=9"  # FastAPI validates it
    etag = client.get(url).headers["etag"]
    settings_seen.clear()
    assert client.portal is not None
    reader = client.portal.call(fastpoll.reader, settings.database_url)
    assert isinstance(reader, fastpoll._FileReader)
    with reader.engine.connect():  # the loop's only connection, taken
        tick = time.monotonic()
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
        waited = time.monotonic() - tick
    assert settings_seen != []  # answered by the route
    assert waited < 2.0
    settings_seen.clear()
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert settings_seen == []  # the connection is back: the middleware answers again


def test_a_server_connection_that_died_fails_one_poll_over_to_the_route(
    client: TestClient, settings: Settings, settings_seen: list[Settings], db_url: str
) -> None:
    """The fast path does not ping what it lends: a dropped connection is thrown away."""
    if db_url.startswith("sqlite"):
        return  # a file has no server to drop the connection
    url = f"/v1/jobs/{_job(settings)}/candidates?since=0&limit=9"  # FastAPI validates it
    etag = {"If-None-Match": client.get(url).headers["etag"]}
    assert client.get(url, headers=etag).status_code == 304  # the fast path has a connection
    with psycopg.connect(libpq(db_url), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    settings_seen.clear()
    assert client.get(url, headers=etag).status_code == 304
    assert settings_seen != []  # the route answered (its engine pings and reconnects)
    settings_seen.clear()
    assert client.get(url, headers=etag).status_code == 304
    assert settings_seen == []  # a new connection: the middleware answers again
