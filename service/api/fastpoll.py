"""The polls that find nothing new, answered before FastAPI runs.

A dashboard polls ``GET /v1/jobs/{id}`` and ``GET /v1/jobs/{id}/candidates`` with the ETag of
its last reply, and most polls find nothing new. Through FastAPI such a poll still costs
routing, dependency solving and validation (about half of the API's time at 32 polling
clients, py-spy). This ASGI middleware answers it first, with exactly what the route would
answer: the same tag (:func:`~service.api.conditional.job_tag`,
:func:`~service.api.conditional.candidates_tag`, from one small row read: on the event loop
for SQLite, in the thread pool for a database server) and the same 304 headers. It answers
only when it is sure; everything else goes on to the app unchanged, which then decides as
always:

- the caller must be known without the database: auth off, or a Bearer key in the API-key
  cache (:func:`core.db.keys.cached_owner`); an unknown key goes on (the app's 401);
- the job must be the caller's (another owner's job reads as missing: the app's 404), and the
  tag must match; a tag can only match a query that was valid when it was issued for this
  version, so skipping validation changes no answer;
- the request is counted by the rate limiter as the app counts it, only when the 304 is sent
  (a refused request is not recorded, so a request over the limit goes on and the app
  refuses it with its 429): each request is counted once.
"""

from __future__ import annotations

import functools
import re

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.types import ASGIApp, Receive, Scope, Send

from core.db import keys, repo
from core.db.models import LOCAL_OWNER, JobStatus
from core.db.session import side_engine
from core.settings import Settings
from service.api.conditional import candidates_tag, job_tag, not_modified
from service.api.deps import rate_subject, rate_wait

_POLLED = re.compile(r"/v1/jobs/(?P<id>[^/]+)(?P<candidates>/candidates)?")
_MAX_TAGS = 2000  # the route's If-None-Match max_length: longer is the app's 422
ON_LOOP_WAIT_S = 0.05  # the longest a SQLite read may hold the event loop


class FastPoll:
    """ASGI middleware: a 304 for a current ETag on the two polled job reads."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.sqlite = make_url(settings.database_url).get_backend_name() == "sqlite"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            answer = await self._not_modified(scope)
            if answer is not None:
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _not_modified(self, scope: Scope) -> ASGIApp | None:
        path = _POLLED.fullmatch(scope["path"])
        if path is None:
            return None
        headers = dict(reversed(scope["headers"]))  # the first of repeated headers, as Starlette
        tags = headers.get(b"if-none-match", b"").decode("latin-1")
        if not tags or len(tags) > _MAX_TAGS:
            return None
        who = self._caller(headers.get(b"authorization", b"").decode("latin-1"))
        if who is None:
            return None
        owner, subject = who
        read = _reader(self.settings.database_url, self.sqlite).read
        if self.sqlite:
            seen = read(path["id"], owner)  # no hop to a thread
        else:
            seen = await run_in_threadpool(read, path["id"], owner)
        if seen is None:
            return None
        if path["candidates"]:
            etag = candidates_tag(owner, seen, scope["query_string"])
        else:
            etag = job_tag(owner, seen)
        answer = not_modified(etag, tags)
        if answer is None or await rate_wait(self.settings, subject) is not None:
            return None
        return answer

    def _caller(self, authorization: str) -> tuple[str, str] | None:
        """(owner, rate-limit subject) when known without the database, as ``get_owner``."""
        if self.settings.auth == "none":
            return LOCAL_OWNER, LOCAL_OWNER
        scheme, _, plain = authorization.partition(" ")
        if scheme.lower() != "bearer" or not plain:
            return None
        owner = keys.cached_owner(plain)
        return None if owner is None else (owner, rate_subject(plain))


class _VersionReader:
    """:data:`core.db.repo.VERSION_OF`, compiled once, run on a raw connection of ``engine``.

    The same statement as the route's :func:`~core.db.repo.job_version`, without a Session,
    an ORM result or a per-call compile: 30 us instead of 290 on SQLite, which is most of
    what a 304 costs.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        compiled = repo.VERSION_OF.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self.order = compiled.positiontup  # the parameters' order, for a positional DBAPI
        self.errors = (DBAPIError, SQLAlchemyTimeoutError, engine.dialect.loaded_dbapi.Error)

    def read(self, job_id: str, owner: str) -> repo.JobVersion | None:
        """The job's version row; None when it is not the owner's or cannot be read at once."""
        named = {"job_id": job_id, "owner": owner}
        params = tuple(named[name] for name in self.order) if self.order else named
        try:
            connection = self.engine.raw_connection()
        except self.errors:
            return None
        try:
            cursor = connection.cursor()
            cursor.execute(self.sql, params)
            row = cursor.fetchone()
            cursor.close()
        except self.errors:
            connection.invalidate()  # never back to the pool: a dead server connection
            return None
        finally:
            connection.close()  # back to the pool, rolled back
        return None if row is None else repo.JobVersion(row[0], row[1], JobStatus(row[2]))


@functools.cache
def _reader(url: str, sqlite: bool) -> _VersionReader:
    """The version reader of ``url``: :func:`_on_loop` on SQLite, else :func:`_on_server`."""
    return _VersionReader(_on_loop(url) if sqlite else _on_server(url))


def _on_server(url: str) -> Engine:
    """An engine for the fast path's reads of a database server, in the thread pool.

    Not the API's: that one pings every connection it lends (``pool_pre_ping``), a second
    round trip that doubled a 304's database time on PostgreSQL. Here a connection the
    server dropped fails the read, is thrown away (:meth:`_VersionReader.read`) and the
    poll goes on to the app, whose engine pings. A poll waits at most a second for one.
    """
    return side_engine(url, pool_size=8, max_overflow=0, pool_timeout=1.0, pool_pre_ping=False)


def _on_loop(url: str) -> Engine:
    """An engine for reading a SQLite file on the event loop, which must never wait long.

    A primary-key read of a local file in WAL mode costs less than the hop to a thread and
    does not wait for writers. Its own pool of one connection, never the API's: a checkout
    from the shared pool could wait for connections that only the loop itself returns. A
    lock or a busy connection (another app's loop in the same process) is given
    ``ON_LOOP_WAIT_S`` and then the poll goes on to the app.
    """
    # The file is in WAL mode already (the API's engine set it when it migrated the schema);
    # the busy timeout is the sqlite3 connect timeout, the pool's wait its pool_timeout.
    return create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": ON_LOOP_WAIT_S},
        pool_size=1,
        max_overflow=0,
        pool_timeout=ON_LOOP_WAIT_S,
    )
