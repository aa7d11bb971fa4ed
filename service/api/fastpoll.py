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
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from core.db import keys, repo
from core.db.models import LOCAL_OWNER
from core.db.session import session_factory
from core.errors import JobNotFound
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
        url = self.settings.database_url
        if self.sqlite:
            seen = _version(_on_loop(url), path["id"], owner)  # no hop to a thread
        else:
            seen = await run_in_threadpool(_version, session_factory(url), path["id"], owner)
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


def _version(sessions: sessionmaker[Session], job_id: str, owner: str) -> repo.JobVersion | None:
    """The job's version row; None when it is not the owner's or cannot be read at once."""
    try:
        with sessions() as session:
            return repo.job_version(session, job_id, owner)
    except (JobNotFound, OperationalError, SQLAlchemyTimeoutError):
        return None


@functools.cache
def _on_loop(url: str) -> sessionmaker[Session]:
    """Sessions for reading a SQLite file on the event loop, which must never wait long.

    A primary-key read of a local file in WAL mode costs less than the hop to a thread and
    does not wait for writers. Its own pool of one connection, never the API's: a checkout
    from the shared pool could wait for connections that only the loop itself returns. A
    lock or a busy connection (another app's loop in the same process) is given
    ``ON_LOOP_WAIT_S`` and then the poll goes on to the app.
    """
    # The file is in WAL mode already (the API's engine set it when it migrated the schema);
    # the busy timeout is the sqlite3 connect timeout, the pool's wait its pool_timeout.
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": ON_LOOP_WAIT_S},
        pool_size=1,
        max_overflow=0,
        pool_timeout=ON_LOOP_WAIT_S,
    )
    return sessionmaker(engine)
