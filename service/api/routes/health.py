"""``/healthz``: is this API process able to serve (database and Redis reachable)?"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.api.deps import RedisDep, SessionDep
from service.api.schemas import Health
from service.errors import QueueUnavailable
from service.queue import ensure_available

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(session: SessionDep, redis: RedisDep, response: Response) -> Health:
    """200 when the database and Redis answer, 503 (same body) when one does not."""
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
    healthy = database == queue == "ok"
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if healthy else "degraded", database=database, redis=queue)
