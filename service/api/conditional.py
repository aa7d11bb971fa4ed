"""Conditional GETs: an ETag on the polled reads, and a 304 when the caller's copy is current.

Dashboards poll a job, the job list and the candidates every few seconds, and most polls find
nothing new. The tag is a hash of the serialized body, so it changes exactly when the body
would (no field can be forgotten, as one built from timestamps could), and a match costs the
queries but not the transfer or the client's parsing. The owner is hashed in as well, so the
same empty list of two owners never shares a tag: a tag says nothing about anyone else's data.
Authentication and the owner's 404 run as dependencies before any of this, so a 304 is only
ever the answer to a caller who may see the body.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Header, Response
from pydantic import BaseModel

from service.api.responses import Responses

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


def etag_of(body: bytes, owner: str) -> str:
    """A weak tag of ``body`` as ``owner`` sees it (weak: it names content, not bytes on wire)."""
    digest = hashlib.blake2b(body, digest_size=16, person=b"prunesearch-etag")
    digest.update(b"\0" + owner.encode())
    return f'W/"{digest.hexdigest()}"'


def matches(etag: str, if_none_match: str | None) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 says for it)."""
    if not if_none_match:
        return False
    wanted = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in wanted or etag.removeprefix("W/") in wanted


def conditional(model: BaseModel, owner: str, if_none_match: str | None) -> Response:
    """``model`` as JSON with its ETag, or an empty 304 when the caller's tag matches.

    The body is serialized once, here, and that same serialization is hashed and sent.
    """
    body = model.model_dump_json().encode()
    etag = etag_of(body, owner)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Authorization"}
    if matches(etag, if_none_match):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
