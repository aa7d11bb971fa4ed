"""Error replies, declared once: the status of each service error, the error body, the document.

Every error is ``{"detail": "..."}`` (:class:`ErrorPublic`), except a 422, which is FastAPI's list
of field errors (``HTTPValidationError``). Which statuses an operation can answer mostly follows
from the operation itself, so :func:`declare_errors` adds those to the published OpenAPI document
for every operation at once, instead of each route repeating them:

- 400 on every operation: a NUL in the URL or a header (``RefuseNul``), a body that cannot be read;
- 401 and 429 on every operation that asks for a key (``security``): no valid key; over the key's
  rate limit or, for a submission, the owner's quotas;
- 404 on every operation with a path id: no such object of the caller's;
- 422 on every operation with parameters or a body.

A route declares only what is its own: ``responses=raises(Conflict, QueueUnavailable)`` names
the service errors it raises, and their statuses come from :data:`STATUS_CODES`, the same table
the app answers with, so the document cannot drift from the replies.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import (
    validation_error_definition,
    validation_error_response_definition,
)
from pydantic import BaseModel

from core.errors import (
    Conflict,
    DuplicateCandidate,
    InvalidTransition,
    NotFound,
    QueueUnavailable,
    QuotaExceeded,
    ServiceError,
    UploadTooLarge,
)

Responses = dict[int | str, dict[str, Any]]

# Most specific first: the first matching class decides the status code.
STATUS_CODES: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFound, 404),
    (InvalidTransition, 409),
    (DuplicateCandidate, 409),
    (Conflict, 409),
    (QueueUnavailable, 503),
    (QuotaExceeded, 429),
    (UploadTooLarge, 413),
)

COMMON = {
    400: "A NUL character in the URL or a header, or a body that cannot be read.",
    401: "No API key, or one that is unknown or revoked (WWW-Authenticate: Bearer).",
    404: "No such object of the caller's (another owner's is reported the same way).",
    422: "A parameter or a body field is invalid; each error names its field (loc).",
    429: "Over the key's rate limit (Retry-After says when to retry), or, for a submission, "
    "over one of the owner's quotas (the message names it, its limit and the current count).",
}
ERROR_REF = "#/components/schemas/ErrorPublic"
INVALID_REF = "#/components/schemas/HTTPValidationError"


class ErrorPublic(BaseModel):
    """The body of every error but a 422: what went wrong, in words."""

    detail: str


def status_code_for(exc: ServiceError | type[ServiceError]) -> int:
    """The HTTP status of a service error (500 for one without a mapping)."""
    cls = exc if isinstance(exc, type) else type(exc)
    for error, code in STATUS_CODES:
        if issubclass(cls, error):
            return code
    return 500


def raises(*errors: type[ServiceError]) -> Responses:
    """``responses=`` of a route that raises ``errors``: their statuses, described by docstrings."""
    found: dict[int, list[str]] = {}
    for error in errors:
        summary = (error.__doc__ or error.__name__).strip().splitlines()[0]
        summary = re.sub(r"\s*\(HTTP \d{3}\)", "", summary)
        found.setdefault(status_code_for(error), []).append(summary)
    return {code: {"description": " Or: ".join(texts)} for code, texts in found.items()}


def common_errors(path: str, operation: dict[str, Any]) -> dict[int, str]:
    """The statuses any operation like this one can answer, with their descriptions."""
    codes = [400]
    if operation.get("security"):
        codes += [401, 429]
    if "{" in path:
        codes.append(404)
    if operation.get("parameters") or operation.get("requestBody"):
        codes.append(422)
    return {code: COMMON[code] for code in codes}


def with_errors(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the common errors on every operation and a body on every error.

    A route's own declaration of a status wins; an error declared without a body gets the
    error body. Idempotent, so a document may pass through twice.
    """
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorPublic", ErrorPublic.model_json_schema())
    schemas.setdefault("ValidationError", validation_error_definition)
    schemas.setdefault("HTTPValidationError", validation_error_response_definition)
    for path, methods in document.get("paths", {}).items():
        for operation in methods.values():
            replies = operation.setdefault("responses", {})
            for code, description in common_errors(path, operation).items():
                replies.setdefault(str(code), {"description": description})
            for code, reply in replies.items():
                if code.isdigit() and int(code) >= 400:
                    ref = INVALID_REF if code == "422" else ERROR_REF
                    content = reply.setdefault("content", {}).setdefault("application/json", {})
                    content.setdefault("schema", {"$ref": ref})
    return document


def declare_errors(app: FastAPI) -> None:
    """Publish ``app``'s document with :func:`with_errors` applied (FastAPI's documented hook)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
