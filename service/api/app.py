"""The FastAPI application: REST under ``/v1``, OpenAPI at ``/openapi.json``.

This process never imports torch or the worker code: it stores jobs and
queues them by name. Service errors are mapped to HTTP status codes in one
table (:mod:`service.api.responses`, which also declares them in the
document), so the repositories and the queue adapter stay HTTP-free.
"""

from __future__ import annotations

import gc
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from core.db.session import migrate, session_factory
from core.errors import InvalidInput, ServiceError
from core.queue import redis_from_url
from core.settings import Settings
from service.api.fastpoll import FastPoll, close_readers
from service.api.responses import declare_errors, status_code_for
from service.api.routes import batches, dashboard, datasets, health, jobs, weights
from service.reconcile import Reconciler


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": _json_safe(str(exc))}, status_code=status_code_for(exc))


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    """A check the schema cannot express replies in FastAPI's own 422 shape, naming the field."""
    assert isinstance(exc, InvalidInput)
    loc = ["body", *exc.field.split(".")]
    error = {"type": "value_error", "loc": loc, "msg": exc.message, "input": None}
    return await _request_invalid(request, RequestValidationError([error]))


def _json_safe(value: Any) -> Any:
    """``value`` with what a JSON reply cannot carry as text: NaN, Infinity, lone surrogates.

    Python's JSON parser accepts all three from a client (``"\\ud800"`` is a lone surrogate,
    not Unicode), so a reply that quotes the client's input must escape them to be encodable.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


async def _request_invalid(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422, able to quote a NaN, an Infinity or a lone surrogate the client sent.

    Python's JSON parser accepts them and every field refuses them, but the default
    handler cannot encode such an input in its reply (it became a 500).
    """
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


class RefuseNul:
    """400 for a NUL character in the path, the query or a header, before any route runs.

    PostgreSQL text cannot hold NUL, so an id, a filter or an Idempotency-Key carrying one
    failed in the database (a 500) instead of being refused as the client's mistake.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"")
        if scope["type"] == "http" and (
            "\x00" in scope["path"]
            or b"\x00" in query
            or b"%00" in query
            or any(b"\x00" in value for _, value in scope["headers"])
        ):
            detail = "NUL characters are not allowed in the URL or the headers"
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


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
        # What start-up made (modules, the app, the engines) lives as long as the process; frozen,
        # a full collection no longer walks it: a gen-2 pass under load stalled every request
        # in flight for about 80 ms (bench/load.py).
        gc.collect()
        gc.freeze()
        yield
        gc.unfreeze()
        reconciler.stopped.set()
        await close_readers()

    app = FastAPI(
        title="prunesearch",
        summary="AutoML structured-pruning search service.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(FastPoll, settings=settings)
    app.add_middleware(RefuseNul)  # added last: outermost, so it sees every request first
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(weights.router)
    app.include_router(datasets.router)
    app.include_router(dashboard.router)
    declare_errors(app)
    return app
