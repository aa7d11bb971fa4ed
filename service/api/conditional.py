"""Conditional GETs: an ETag on the polled reads, and a 304 when the caller's copy is current.

Dashboards poll a job, the job list and the candidates every few seconds, and most polls find
nothing new. A tag is made of what the view is made of, not of its bytes: the ``version`` of
each job in it (raised in SQL by every write of the job or of its candidates, see
:mod:`core.db.repo.jobs`), the request's query, and for a searching job the current
:data:`service.stall.REFRESH_S` window (its stall grows with time alone). So a poll that finds
nothing new reads one small row and answers 304 without building the view; a tag from a
version read before the view was built can only make the next poll fetch once more. The owner
is hashed in as well, so the same empty list of two owners never shares a tag: a tag says
nothing about anyone else's data. Authentication and the owner's 404 run first (dependencies,
and the version read itself), so a 304 is only ever the answer to a caller who may see the body.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Annotated

from fastapi import Header, Response
from pydantic import BaseModel

from core.db.repo import JobVersion
from service.api.responses import Responses
from service.api.schemas import CandidatePage, JobPublic, Page
from service.stall import window

# Revalidate on every use (no-cache) and never in a shared cache (private): the body is the
# owner's, and a poll must see a change at once.
CACHE_CONTROL = "private, no-cache"
NOT_MODIFIED: Responses = {
    304: {
        "description": "Not modified: the ETag sent in If-None-Match is still current "
        "(no body; the ETag header repeats the tag).",
        "headers": {"ETag": {"schema": {"type": "string"}}},
    }
}
IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        max_length=2000,
        description="ETag(s) of a copy the caller has; a 304 without a body when one is current.",
    ),
]


def etag_of(owner: str, *parts: object) -> str:
    """A weak tag of the view that ``parts`` determine, as ``owner`` sees it.

    Weak: it names the content, not the bytes on the wire. ``parts`` are ints, strings and
    None, whose ``repr`` is stable.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16, person=b"prunesearch-etag")
    digest.update(b"\0" + owner.encode() + b"\0" + views_format())
    return f'W/"{digest.hexdigest()}"'


@functools.cache
def views_format() -> bytes:
    """A fingerprint of the polled views' JSON shape: a new shape is a new tag.

    Without it, after an upgrade that changes a view (a new field), a dashboard holding a
    tag of the old view would be told 304 until the job next changed, and keep the old body.
    """
    views = (JobPublic, Page[JobPublic], CandidatePage)
    schema = json.dumps([view.model_json_schema() for view in views], sort_keys=True)
    return hashlib.blake2b(schema.encode(), digest_size=8).digest()


def job_tag(owner: str, seen: JobVersion) -> str:
    """The tag of ``GET /v1/jobs/{id}``: the job's version, and its stall window if searching."""
    return etag_of(owner, "job", seen.id, seen.version, window([seen.status]))


def candidates_tag(owner: str, seen: JobVersion, query: bytes) -> str:
    """The tag of ``GET /v1/jobs/{id}/candidates`` with this raw query string.

    The raw query, not its parsed values: the fast path (:mod:`service.api.fastpoll`) makes
    the same tag without parsing. Two spellings of one query get two tags, which costs at
    most one full reply; one spelling always means the same page of the same version.
    """
    return etag_of(owner, "candidates", seen.id, seen.version, query)


def matches(etag: str, if_none_match: str | None) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 says for it)."""
    if not if_none_match:
        return False
    wanted = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in wanted or etag.removeprefix("W/") in wanted


def _headers(etag: str) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Authorization"}


def not_modified(etag: str, if_none_match: str | None) -> Response | None:
    """An empty 304 when the caller's copy is ``etag``'s; None when the view must be built."""
    if not matches(etag, if_none_match):
        return None
    return Response(status_code=304, headers=_headers(etag))


def tagged(model: BaseModel, etag: str) -> Response:
    """``model`` as JSON, with the ETag of what it was built from."""
    return Response(model.model_dump_json(), media_type="application/json", headers=_headers(etag))
