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
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.api.routes import batches, dashboard, health, jobs, weights
from service.db.session import migrate, session_factory
from service.errors import (
    Conflict,
    DuplicateCandidate,
    InvalidInput,
    InvalidTransition,
    NotFound,
    QueueUnavailable,
    ServiceError,
    UploadTooLarge,
)
from service.queue import redis_from_url
from service.reconcile import Reconciler
from service.settings import Settings

# Most specific first: the first matching class decides the status code.
STATUS_CODES: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFound, 404),
    (InvalidTransition, 409),
    (DuplicateCandidate, 409),
    (Conflict, 409),
    (QueueUnavailable, 503),
    (UploadTooLarge, 413),
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


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    """A check the schema cannot express replies in FastAPI's own 422 shape, naming the field."""
    assert isinstance(exc, InvalidInput)
    loc = ["body", *exc.field.split(".")]
    error = {"type": "value_error", "loc": loc, "msg": exc.message, "input": None}
    return await request_validation_exception_handler(request, RequestValidationError([error]))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the schema is migrated to the newest revision at start-up.

    Args:
        settings: Configuration; read from the environment when omitted.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(migrate, settings.database_url)
        reconciler = Reconciler(
            session_factory(settings.database_url),
            redis_from_url(settings.redis_url),
            settings.optuna_url,
        )
        reconciler.start()
        yield
        reconciler.stopped.set()

    app = FastAPI(
        title="prunesearch",
        summary="AutoML structured-pruning search service.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(weights.router)
    app.include_router(dashboard.router)
    return app
