"""The FastAPI application: REST under ``/v1``, OpenAPI at ``/openapi.json``.

This process never imports torch or the worker code: it stores jobs and
queues them by name. Service errors are mapped to HTTP status codes here, in
one table, so the repositories and the queue adapter stay HTTP-free.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.api.routes import batches, health, jobs
from service.db.session import migrate
from service.errors import (
    Conflict,
    DuplicateCandidate,
    InvalidTransition,
    NotFound,
    QueueUnavailable,
    ServiceError,
)
from service.settings import Settings

# Most specific first: the first matching class decides the status code.
STATUS_CODES: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFound, 404),
    (InvalidTransition, 409),
    (DuplicateCandidate, 409),
    (Conflict, 409),
    (QueueUnavailable, 503),
)


def status_code_for(exc: ServiceError) -> int:
    """The HTTP status of a service error (500 for one without a mapping)."""
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return 500


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": str(exc)}, status_code=status_code_for(exc))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the schema is migrated to the newest revision at start-up.

    Args:
        settings: Configuration; read from the environment when omitted.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(migrate, settings.database_url)
        yield

    app = FastAPI(
        title="prunesearch",
        summary="AutoML structured-pruning search service.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_exception_handler(ServiceError, _service_error)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    return app
