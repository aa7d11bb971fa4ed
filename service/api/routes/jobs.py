"""``/v1/jobs``: submit a search job, follow it, read its candidates and results.

Routes stay thin: validation is the JobSpec's, rules are the repositories',
and service errors become HTTP codes in one place (``service.api.app``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from search import Point, pareto_front
from service.api.deps import RedisDep, SessionDep, SettingsDep
from service.api.schemas import (
    BaseCosts,
    CandidatePublic,
    JobPublic,
    Page,
    ParetoPoint,
    ParetoPublic,
)
from service.db import repo
from service.db.models import CandidateStatus, JobStatus
from service.db.spec import JobSpec
from service.errors import ArtifactNotFound, QueueUnavailable, ResultNotReady, TriageNotReady
from service.queue import INTERACTIVE, enqueue_job, ensure_available

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# Served by name only: a name outside this list is a 404 whatever is on disk.
ARTIFACTS: dict[str, str] = {
    "result.json": "application/json",
    "recipe.json": "application/json",
    "model.safetensors": "application/octet-stream",
    "model.onnx": "application/octet-stream",
    "baseline.safetensors": "application/octet-stream",
    "sensitivity.json": "application/json",
    "pareto.json": "application/json",
}


def _job_public(session: SessionDep, job_id: str) -> JobPublic:
    job = repo.get_job(session, job_id)
    return JobPublic.of(job, repo.progress(session, job_id), repo.best_candidate(session, job_id))


@router.post("", status_code=201, response_model=JobPublic)
def create_job(
    spec: JobSpec,
    session: SessionDep,
    redis: RedisDep,
    queue: Annotated[Literal["interactive", "overnight"], Query()] = INTERACTIVE,
) -> JobPublic:
    """Store the job and queue its tasks; a job that cannot be queued is not kept."""
    ensure_available(redis)
    job = repo.create_job(session, spec, queue)
    try:
        enqueue_job(redis, job.id, job.n_trials, queue)
    except QueueUnavailable:
        repo.delete_job(session, job.id)
        raise
    return JobPublic.of(job, (0, job.n_trials), None)


@router.get("", response_model=Page[JobPublic])
def list_jobs(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
) -> Page[JobPublic]:
    """Jobs, newest first."""
    jobs = repo.list_jobs(session, limit=limit, offset=offset, status=status)
    items = [
        JobPublic.of(job, repo.progress(session, job.id), repo.best_candidate(session, job.id))
        for job in jobs
    ]
    total = repo.count_jobs(session, status)
    return Page[JobPublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep) -> JobPublic:
    """State, progress, baseline, best candidate so far and timings of one job."""
    return _job_public(session, job_id)


@router.get("/{job_id}/candidates", response_model=Page[CandidatePublic])
def list_candidates(
    job_id: str,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    order: Literal["trial", "score"] = "trial",
) -> Page[CandidatePublic]:
    """The job's candidates by trial number, or best score first."""
    job = repo.get_job(session, job_id)
    costs = BaseCosts.of(job)
    rows = repo.list_candidates(session, job_id, limit=limit, offset=offset, order_by=order)
    items = [CandidatePublic.of(c, costs) for c in rows]
    total = repo.count_candidates(session, job_id)
    return Page[CandidatePublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{job_id}/result")
def get_result(job_id: str, session: SessionDep) -> dict[str, Any]:
    """The finished job's result (``result.json``); 404 until the job is done."""
    job = repo.get_job(session, job_id)
    if job.status != JobStatus.done or job.result is None:
        raise ResultNotReady(f"job {job_id!r} has no result: it is {job.status.value}")
    return job.result


@router.get("/{job_id}/sensitivity")
def get_sensitivity(job_id: str, session: SessionDep) -> dict[str, Any]:
    """The triage report: per-group sensitivity curves and per-block criticality.

    Written by ``prepare`` when the spec says ``triage: true``, so it is
    readable while the search still runs; 404 before that or without triage.
    """
    job = repo.get_job(session, job_id)
    if job.triage is None:
        wanted = bool(job.spec.get("triage", {}).get("enabled"))
        reason = f"it is {job.status.value}" if wanted else "its spec has no triage: true"
        raise TriageNotReady(f"job {job_id!r} has no triage report: {reason}")
    return job.triage


@router.get("/{job_id}/pareto", response_model=ParetoPublic)
def get_pareto(job_id: str, session: SessionDep) -> ParetoPublic:
    """The Pareto front so far: validation accuracy against the job's objective.

    Computed from the stored candidates, so it grows while the search runs
    and is the same front ``finalize`` writes to ``pareto.json``.
    """
    job = repo.get_job(session, job_id)
    objective = str(job.spec.get("search", {}).get("objective", "flops_ratio"))
    rows = repo.list_candidates(session, job_id, limit=100_000, offset=0)
    scored = {
        c.id: ParetoPoint.of(c, objective)
        for c in rows
        if c.status == CandidateStatus.complete
        and c.accuracy is not None
        and (c.objectives or {}).get(objective) is not None
    }
    points = [Point(i, p.val_accuracy, p.cost) for i, p in scored.items()]
    front = [scored[p.id] for p in pareto_front(points)]
    chosen = (job.result or {}).get("best", {}).get("candidate_id")
    return ParetoPublic(objective=objective, candidates=len(scored), front=front, chosen=chosen)


@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse)
def get_artifact(
    job_id: str, name: str, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """One of the job's files, by its allow-listed name."""
    media_type = ARTIFACTS.get(name)
    if media_type is None:
        raise ArtifactNotFound(f"no artifact named {name!r}; known: {sorted(ARTIFACTS)}")
    job = repo.get_job(session, job_id)
    path = settings.job_dir(job.id) / name
    if not path.is_file():
        raise ArtifactNotFound(f"job {job_id!r} has no {name} (yet)")
    return FileResponse(path, media_type=media_type, filename=name)
