"""The polled job reads, answered before FastAPI runs where nothing is left to validate.

A dashboard polls ``GET /v1/jobs/{id}`` and ``GET /v1/jobs/{id}/candidates`` with the ETag of
its last reply, and most polls find nothing new. Through FastAPI such a poll still costs
routing, dependency solving and validation (about half of the API's time at 32 polling
clients, py-spy). This ASGI middleware answers it first, with exactly what the route would
answer: the same tag (:func:`~service.api.conditional.job_tag`,
:func:`~service.api.conditional.candidates_tag`, from one small row read, awaited on the event
loop: :class:`_FileReader`, :class:`_ServerReader`) and the same 304 headers. A job view or a
``since=`` poll of the candidates that is not a 304 is the route's own reply too: its
function, called with the dependencies made here (:meth:`FastPoll._view`). The middleware
answers only when it is sure; everything else goes on to the app unchanged, which then decides
as always:

- the caller must be known without the database: auth off, or a Bearer key in the API-key
  cache (:func:`core.db.keys.cached_owner`); an unknown key goes on (the app's 401);
- the job must be the caller's (another owner's job reads as missing: the app's 404); a 304
  needs a matching tag, and a tag can only match a query that was valid when it was issued
  for this version, so skipping validation changes no answer; a full reply of the candidates
  needs a query of ``since=`` alone, checked as the route checks it (any other is the
  route's to validate);
- the request is counted by the rate limiter as the app counts it, only when the reply is sent
  (a refused request is not recorded, so a request over the limit goes on and the app
  refuses it with its 429): each request is counted once.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
import psycopg
from sqlalchemy import create_engine, make_url
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from core.db import keys, repo
from core.db.models import LOCAL_OWNER, JobStatus
from core.db.session import read_session_factory
from core.errors import ServiceError
from core.settings import Settings
from service.api.conditional import candidates_tag, job_tag, not_modified
from service.api.cursor import MAX_SINCE, PATTERN, Cursor
from service.api.deps import rate_subject, rate_wait
from service.api.routes import jobs

_POLLED = re.compile(r"/v1/jobs/(?P<id>[^/]+)(?P<candidates>/candidates)?")
_MAX_TAGS = 2000  # the route's If-None-Match max_length: longer is the app's 422
ON_LOOP_WAIT_S = 0.05  # the longest a SQLite read may hold the event loop
SERVER_CONNECTIONS = 8  # the most PostgreSQL connections the fast path holds, per loop
SERVER_WAIT_S = 1.0  # the longest the server runs one of its reads
# Full replies built at once, in threads. Each is a few ms of Python holding the GIL: more
# threads than that only take turns with each other and the event loop, and the burst of a
# dashboard's first polls (32 at once in bench/load.py) had a p99 of 217-253 ms with all 40
# of the thread pool against 123-175 ms with 4 (SQLite, 2 and 3 runs).
VIEW_THREADS = 4


class FastPoll:
    """ASGI middleware: the two polled job reads, as 304s and as the routes' full replies."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            answer = await self._answer(scope)
            if answer is not None:
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope) -> ASGIApp | None:
        path = _POLLED.fullmatch(scope["path"])
        if path is None:
            return None
        headers = dict(reversed(scope["headers"]))  # the first of repeated headers, as Starlette
        tags = headers.get(b"if-none-match", b"").decode("latin-1")
        if len(tags) > _MAX_TAGS:
            return None
        who = self._caller(headers.get(b"authorization", b"").decode("latin-1"))
        if who is None:
            return None
        owner, subject = who
        if tags:
            answer = await self._not_modified(path, scope["query_string"], owner, tags)
            if answer is not None:
                return answer if await rate_wait(self.settings, subject) is None else None
        job_id, tag = path["id"], tags or None
        route: Callable[[Session], Response]
        if not path["candidates"]:
            route = functools.partial(
                jobs.get_job, job_id, owner=owner, settings=self.settings, if_none_match=tag
            )
        elif (since := _since_alone(scope["query_string"])) is not None:
            route = functools.partial(
                jobs.list_candidates, job_id, Request(scope), owner=owner, since=since,
                if_none_match=tag,
            )  # fmt: skip
        else:
            return None  # another query of the candidates: the route validates it
        view = await anyio.to_thread.run_sync(self._view, route, limiter=_view_slots())
        if view is None or await rate_wait(self.settings, subject) is not None:
            return None
        return view

    async def _not_modified(
        self, path: re.Match[str], query: bytes, owner: str, tags: str
    ) -> Response | None:
        """The 304 when ``tags`` names the current version of what ``path`` reads."""
        read = reader(self.settings.database_url)
        seen = None if read is None else await read.read(path["id"], owner)
        if seen is None:
            return None
        etag = candidates_tag(owner, seen, query) if path["candidates"] else job_tag(owner, seen)
        return not_modified(etag, tags)

    def _view(self, route: Callable[[Session], Response]) -> Response | None:
        """The route's own full reply: its function, called with a read session made here.

        FastAPI's dependency solving was most of what a full reply cost the API (py-spy,
        ``bench/load.py``). Only routes whose every parameter is known valid come here: a
        job view takes a path id and one header; a candidates poll, ``since=`` alone, checked
        as the route checks it (:func:`_since_alone`), the rest at the route's defaults. A
        service error (a job that is not the owner's) goes on to the app, which answers it.
        """
        with read_session_factory(self.settings.database_url)() as session:
            try:
                return route(session)
            except ServiceError:
                return None

    def _caller(self, authorization: str) -> tuple[str, str] | None:
        """(owner, rate-limit subject) when known without the database, as ``get_owner``."""
        if self.settings.auth == "none":
            return LOCAL_OWNER, LOCAL_OWNER
        scheme, _, plain = authorization.partition(" ")
        if scheme.lower() != "bearer" or not plain:
            return None
        owner = keys.cached_owner(plain)
        return None if owner is None else (owner, rate_subject(plain))


class _FileReader:
    """:data:`core.db.repo.VERSION_OF` on a SQLite file, on the event loop.

    The statement of :func:`~core.db.repo.job_version`, compiled once and
    run on a raw connection: no Session, no ORM result, no per-call compile (30 us instead
    of 290), and no hop to a thread, which costs more than a primary-key read of a local
    file in WAL mode (it does not wait for writers). Its own pool of one connection, never
    the API's: a checkout from the shared pool could wait for connections that only the
    loop itself returns. A lock or a busy connection (another app's loop in the same
    process) is given ``ON_LOOP_WAIT_S``, then the poll goes on to the app.
    """

    def __init__(self, url: str) -> None:
        # The file is in WAL mode already (the API's engine set it when it migrated); the
        # busy timeout is the sqlite3 connect timeout, the pool's wait its pool_timeout.
        self.engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": ON_LOOP_WAIT_S},
            pool_size=1,
            max_overflow=0,
            pool_timeout=ON_LOOP_WAIT_S,
        )
        compiled = repo.VERSION_OF.compile(dialect=self.engine.dialect)
        self.sql, self.order = str(compiled), compiled.positiontup or ()
        self.errors = (DBAPIError, SQLAlchemyTimeoutError, sqlite3.Error)

    async def read(self, job_id: str, owner: str) -> repo.JobVersion | None:
        """The job's version row; None when it is not the owner's or cannot be read at once."""
        named = {"job_id": job_id, "owner": owner}
        try:
            connection = self.engine.raw_connection()
        except self.errors:
            return None
        try:
            cursor = connection.cursor()
            cursor.execute(self.sql, tuple(named[name] for name in self.order))
            row = cursor.fetchone()
            cursor.close()
        except self.errors:
            return None
        finally:
            connection.close()  # back to the pool, rolled back
        return _version(row)

    async def close(self) -> None:
        self.engine.dispose()


class _ServerReader:
    """:data:`core.db.repo.VERSION_OF` on PostgreSQL, awaited on the event loop.

    psycopg's asyncio connections, in autocommit: one round trip a read, and no thread. The
    API's engine costs a 304 a hop to the thread pool and back, a ping, a BEGIN and a
    ROLLBACK: 470-770 us of CPU per read against 70 at 32 concurrent reads on this 2-core
    machine (``bench/load.py``'s polls are mostly this read). Each read is one statement,
    so a transaction around it would add nothing. At most :data:`SERVER_CONNECTIONS` read at
    once; a poll that finds them all busy, a read that fails or is cancelled, or a dropped
    connection (thrown away, never pinged) sends the poll on to the app, whose engine pings
    and reconnects. The server ends a read after :data:`SERVER_WAIT_S` (``statement_timeout``;
    an asyncio timeout per read cost 4% of the API's time).
    """

    def __init__(self, url: str) -> None:
        self.conninfo = (
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self.sql = str(repo.VERSION_OF.compile(dialect=postgresql.dialect(paramstyle="pyformat")))
        self.idle: list[psycopg.AsyncConnection[Any]] = []
        self.busy = 0

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        timeout_ms = int(SERVER_WAIT_S * 1000)
        return await psycopg.AsyncConnection.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=2,  # libpq's least
            options=f"-c statement_timeout={timeout_ms}",
        )

    async def read(self, job_id: str, owner: str) -> repo.JobVersion | None:
        """The job's version row; None when it is not the owner's or cannot be read now."""
        if self.busy >= SERVER_CONNECTIONS:
            return None
        self.busy += 1
        try:
            connection = self.idle.pop() if self.idle else await self.connect()
            try:
                cursor = await connection.execute(self.sql, {"job_id": job_id, "owner": owner})
                row = await cursor.fetchone()
            except BaseException:
                connection.pgconn.finish()  # mid-statement or broken: never lent again
                raise
            self.idle.append(connection)
        except (psycopg.Error, OSError):
            return None
        finally:
            self.busy -= 1
        return _version(row)

    async def close(self) -> None:
        """Close the idle connections (the app's shutdown)."""
        idle, self.idle = self.idle, []
        for connection in idle:
            await connection.close()


def _version(row: Any) -> repo.JobVersion | None:
    return None if row is None else repo.JobVersion(row[0], row[1], JobStatus(row[2]))


_VIEW_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def _view_slots() -> anyio.CapacityLimiter:
    """The running loop's :data:`VIEW_THREADS` tokens (a limiter belongs to its loop)."""
    loop = asyncio.get_running_loop()
    slots = _VIEW_SLOTS.get(loop)
    if slots is None:
        slots = _VIEW_SLOTS[loop] = anyio.CapacityLimiter(VIEW_THREADS)
    return slots


def _since_alone(query: bytes) -> str | None:
    """The cursor of a query that is ``since=<cursor>`` and nothing else, valid as the route
    has it (:data:`~service.api.cursor.PATTERN` in ASCII digits, ``Cursor.check``); else None."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)  # as Starlette parses
    if len(pairs) != 1 or pairs[0][0] != "since":
        return None
    since = pairs[0][1]
    if len(since) > MAX_SINCE or re.fullmatch(PATTERN, since, re.ASCII) is None:
        return None
    try:
        return Cursor.check(since)
    except ValueError:
        return None


Reader = _FileReader | _ServerReader
# One reader per event loop and database: a server connection belongs to the loop that
# made it (uvicorn has one loop; each TestClient has its own).
_READERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Reader]] = (
    weakref.WeakKeyDictionary()
)


def reader(url: str) -> Reader | None:
    """The fast path's reader of ``url`` on the running loop; None for a database it cannot
    read without a thread (a server other than PostgreSQL through psycopg)."""
    readers = _READERS.setdefault(asyncio.get_running_loop(), {})
    found = readers.get(url)
    if found is None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            found = _FileReader(url)
        elif parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
            found = _ServerReader(url)
        else:
            return None
        readers[url] = found
    return found


async def close_readers() -> None:
    """Close the running loop's readers' connections: the app's shutdown."""
    for found in _READERS.pop(asyncio.get_running_loop(), {}).values():
        await found.close()
