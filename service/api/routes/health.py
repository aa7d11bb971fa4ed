"""Operations: ``/healthz`` (the process serves), ``/readyz`` (its dependencies answer),
``/metrics`` (Prometheus). None of them needs an API key, and none shows a job.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from core.errors import QueueUnavailable
from core.queue import ensure_available
from service.api.deps import RedisDep, SessionDep, SettingsDep
from service.api.schemas import Health
from service.metrics import registry

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: 200 whenever this process answers (restart it when it does not)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or Redis does not answer."}},
)
def readyz(session: SessionDep, redis: RedisDep, response: Response) -> Health:
    """Readiness: 200 when the database and Redis answer, 503 (same body) when one does not."""
    database = "ok"
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        database = "unreachable"
    queue = "ok"
    try:
        ensure_available(redis)
    except QueueUnavailable:
        queue = "unreachable"
    ready = database == queue == "ok"
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ready else "degraded", database=database, redis=queue)


@router.get("/metrics", response_class=Response)
def metrics(settings: SettingsDep) -> Response:
    """Prometheus text format: jobs by state, trial throughput and durations, queue depth."""
    return Response(generate_latest(registry(settings)), media_type=CONTENT_TYPE_LATEST)
