"""Error replies that quote the client's input can always be sent.

A JSON body may carry a lone surrogate (``"\\ud800"``): Python's JSON parser accepts it, but it is
not Unicode, so a reply quoting it as it came cannot be encoded (a 500, and the connection was
reset). Every string and every key of the valid bodies is broken so in turn; each is a 422 naming
the field, creates nothing, and a real server keeps the connection open afterwards.
Real Redis and both database backends, through the real app.
"""

from __future__ import annotations

import copy
import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.db.models import Batch, Job
from core.db.session import session_factory
from core.settings import Settings
from service.api.app import create_app
from tests.service.conftest import SPEC as TINY
from tests.service.conftest import add_key
from tests.support import free_port

SPEC: dict[str, Any] = {**TINY, "search": {**TINY["search"], "sampler": "tpe"}}
BODIES: dict[str, list[dict[str, Any]]] = {
    "/v1/jobs": [SPEC],
    "/v1/batches": [
        {"name": "nightly", "jobs": [SPEC]},
        {"name": "nightly", "base": SPEC, "grid": {"search.sampler": ["tpe", "random"]}},
    ],
}
LONE = "\ud800"
KEY = "\udc00x"


def _broken(body: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """``body`` with one lone surrogate added, each place in turn, and where it went."""
    if isinstance(body, str):
        yield body + LONE, path
    elif isinstance(body, list):
        for i, item in enumerate(body):
            for value, where in _broken(item, (*path, i)):
                yield [*body[:i], value, *body[i + 1 :]], where
    elif isinstance(body, dict):
        yield {**copy.deepcopy(body), KEY: 1}, (*path, KEY)
        for key, item in body.items():
            for value, where in _broken(item, (*path, key)):
                yield {**body, key: value}, where


CASES = [
    (route, value, where)
    for route, bodies in BODIES.items()
    for body in bodies
    for value, where in _broken(body)
]


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(
        home=tmp_path / "home", database_url=db_url, redis_url=redis_url, auth="keys", rate_limit=0
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan: the schema is migrated
        yield app


def _rows(settings: Settings) -> tuple[int, int]:
    with session_factory(settings.database_url)() as s:
        jobs = s.execute(select(func.count()).select_from(Job)).scalar_one()
        batches = s.execute(select(func.count()).select_from(Batch)).scalar_one()
    return jobs, batches


def test_a_lone_surrogate_anywhere_in_a_json_body_is_a_422_naming_it(
    app: FastAPI, settings: Settings
) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    client.headers.update(add_key(settings.database_url, "alice"))
    assert len(CASES) >= 30
    wrong = []
    for route, body, where in CASES:
        # As a hostile client sends it: the escape as six ASCII characters, or the raw bytes.
        escaped = json.dumps(body).encode()
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
        for content in (escaped, raw):
            response = client.post(
                route, content=content, headers={"Content-Type": "application/json"}
            )
            # A bad key is named by the object holding it; a grid key is a dotted spec path,
            # so a grid cell is named below ``grid`` by that path.
            expected = ("body", *map(str, where[:-1] if where[-1] == KEY else where))
            if where[0] == "grid":
                expected = expected[:2]
            locs = []
            if response.status_code == 422:
                locs = [tuple(map(str, e["loc"])) for e in response.json()["detail"]]
            if not any(loc[: len(expected)] == expected for loc in locs):
                wrong.append(f"{route} {where}: {response.status_code} {response.text[:200]}")
    assert not wrong, f"{len(wrong)} of {2 * len(CASES)}:\n" + "\n".join(wrong)
    assert _rows(settings) == (0, 0)


def test_a_server_keeps_the_connection_after_a_lone_surrogate(settings: Settings) -> None:
    """One keep-alive connection: the refusal, then a valid request, both answered on it."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        headers = {**add_key(settings.database_url, "alice"), "Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for route in BODIES:
            conn.request("POST", route, body=b'{"name":"\\ud800"}', headers=headers)
            refused = conn.getresponse()
            detail = json.loads(refused.read())["detail"]
            assert refused.status == 422, detail
            assert ["body", "name"] in [e["loc"] for e in detail], detail
            assert refused.getheader("connection") != "close"
        conn.request("POST", "/v1/jobs", body=json.dumps(SPEC).encode(), headers=headers)
        created = conn.getresponse()
        assert created.status == 201, created.read()
        created.read()
        conn.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert _rows(settings) == (1, 0)
