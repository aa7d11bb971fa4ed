"""``/v1/jobs``: submit, follow, cancel and delete search jobs; read their results.

Routes stay thin: validation is the JobSpec's, rules are the repositories',
and service errors become HTTP codes in one place (``service.api.app``).
Every route is scoped to the caller (:data:`~service.api.deps.OwnerDep`):
another owner's job is a 404, exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import AfterValidator
from sqlalchemy.exc import IntegrityError

from core.db import repo
from core.db.models import TERMINAL, CandidateStatus, Job, JobStatus
from core.errors import (
    ArtifactNotFound,
    Conflict,
    IdempotencyConflict,
    InvalidTransition,
    QueueUnavailable,
    ResultNotReady,
    TriageNotReady,
)
from core.queue import INTERACTIVE, cancel_tasks, enqueue_job, ensure_available
from core.settings import Settings
from core.spec import JobSpec
from search import Point, pareto_front
from service.api.conditional import (
    NOT_MODIFIED,
    IfNoneMatch,
    candidates_tag,
    etag_of,
    job_tag,
    not_modified,
    tagged,
)
from service.api.cursor import MAX_SINCE, PATTERN, Cursor
from service.api.deps import OwnerDep, ReadSessionDep, RedisDep, SessionDep, SettingsDep
from service.api.responses import Responses, raises
from service.api.schemas import (
    BaseCosts,
    CancelPublic,
    CandidatePage,
    CandidatePublic,
    JobPublic,
    Page,
    ParetoPoint,
    ParetoPublic,
)
from service.cleanup import purge_job
from service.datasets import dataset_classes
from service.modelcheck import check_job_model, spec_classes
from service.quotas import admission
from service.stall import job_stall, stalls, window
from service.uploads import check_job_weights

Priority = Literal["interactive", "overnight"]
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


def _job_public(session: SessionDep, job: Job, settings: Settings | None = None) -> JobPublic:
    """The job's public view; with ``settings``, also whether it is stalled."""
    stall = job_stall(session, job, settings) if settings is not None else None
    best = repo.best_candidate(session, job.id)
    return JobPublic.of(job, repo.progress(session, job.id), best, stall)


def request_hash(spec: JobSpec, queue: str) -> str:
    """What an ``Idempotency-Key`` is bound to: the validated spec and the queue."""
    body = json.dumps([spec.model_dump(mode="json"), queue], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Retrying with the same key and body returns the first job; "
        "the same key with another body is a 409.",
    ),
]
REPLAYED: Responses = {
    200: {
        "model": JobPublic,
        "description": "A retry with the same Idempotency-Key and body: the job the first "
        "request created, with the header Idempotent-Replayed: true.",
        "headers": {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}},
    }
}


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    responses={**REPLAYED, **raises(IdempotencyConflict, QueueUnavailable)},
)
def create_job(
    spec: JobSpec,
    session: SessionDep,
    redis: RedisDep,
    owner: OwnerDep,
    settings: SettingsDep,
    response: Response,
    queue: Annotated[Priority, Query(description="interactive (default) or overnight")] = (
        INTERACTIVE
    ),
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Store the job and queue its tasks; a job that cannot be queued is not kept."""
    digest = request_hash(spec, queue)
    if idempotency_key is not None:
        earlier = repo.find_idempotent(session, owner, idempotency_key)
        if earlier is not None:
            return _replay(session, earlier, digest, response)
    check_job_weights(session, owner, spec)
    classes = dataset_classes(session, owner, spec, settings)
    check_job_model(spec, num_classes=classes or spec_classes(spec))
    ensure_available(redis)
    try:
        with admission(session, redis, settings, owner, jobs=1, trials=spec.search.n_trials):
            job = repo.create_job(
                session, spec, queue, owner=owner, idempotency_key=idempotency_key,
                request_hash=digest,
            )  # fmt: skip
    except IntegrityError:  # a concurrent request with the same key won the race
        session.rollback()
        assert idempotency_key is not None
        earlier = repo.find_idempotent(session, owner, idempotency_key)
        assert earlier is not None
        return _replay(session, earlier, digest, response)
    try:
        enqueue_job(redis, job.id, job.n_trials, queue)
    except QueueUnavailable:
        repo.delete_job(session, job.id)
        raise
    return JobPublic.of(job, (0, job.n_trials), None)


def _replay(session: SessionDep, earlier: Job, digest: str, response: Response) -> JobPublic:
    if earlier.request_hash != digest:
        raise IdempotencyConflict(
            f"Idempotency-Key was used for job {earlier.id!r} with a different body"
        )
    response.status_code = 200
    response.headers["Idempotent-Replayed"] = "true"
    return _job_public(session, earlier)


@router.get("", response_model=Page[JobPublic], responses=NOT_MODIFIED)
def list_jobs(
    session: ReadSessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    if_none_match: IfNoneMatch = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
) -> Response:
    """The caller's jobs, newest first; a 304 when the page is what If-None-Match names."""
    shown = repo.job_versions(session, limit=limit, offset=offset, status=status, owner=owner)
    total = repo.count_jobs(session, status, owner=owner)
    parts = [(j.id, j.version) for j in shown]
    clock = window(j.status for j in shown)
    etag = etag_of(owner, "jobs", limit, offset, status, total, parts, clock)
    if (unchanged := not_modified(etag, if_none_match)) is not None:
        return unchanged
    jobs = repo.list_jobs(session, limit=limit, offset=offset, status=status, owner=owner)
    ids = [job.id for job in jobs]  # two queries for the page, not two per job
    done, best = repo.finished_counts(session, ids), repo.best_candidates(session, ids)
    stalled = stalls(session, jobs, settings)
    items = [
        JobPublic.of(job, (done[job.id], job.n_trials), best.get(job.id), stalled.get(job.id))
        for job in jobs
    ]
    return tagged(Page[JobPublic](items=items, total=total, limit=limit, offset=offset), etag)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_MODIFIED)
def get_job(
    job_id: str,
    session: ReadSessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """State, progress, baseline, best candidate so far, timings and stall of one job.

    A 304 when it is what If-None-Match names; another owner's job is a 404 first.
    The whole row is read at once: a current tag is mostly answered before the route
    (:mod:`service.api.fastpoll`), so the route mostly builds the view.
    """
    job = repo.get_job(session, job_id, owner)
    etag = job_tag(owner, repo.JobVersion.of(job))
    if (unchanged := not_modified(etag, if_none_match)) is not None:
        return unchanged
    return tagged(_job_public(session, job, settings), etag)


@router.post(
    "/{job_id}/cancel",
    response_model=CancelPublic,
    responses=raises(InvalidTransition, QueueUnavailable),
)
def cancel_job(job_id: str, session: SessionDep, redis: RedisDep, owner: OwnerDep) -> CancelPublic:
    """Stop a job: its queued tasks are dropped and it ends ``cancelled``.

    Candidates scored so far stay readable. A task already running stops
    within seconds (``workers.steps.lifecycle``); its trial is recorded failed.
    Cancelling a cancelled job is a no-op; a job that is done or failed
    cannot be cancelled (409).
    """
    job = repo.get_job(session, job_id, owner)
    if job.status != JobStatus.cancelled:
        active = frozenset(JobStatus) - TERMINAL
        job = repo.transition(session, job_id, JobStatus.cancelled, allowed_from=active)
    dropped = cancel_tasks(redis, job_id, job.n_trials)
    return CancelPublic(job=_job_public(session, job), dropped_tasks=dropped)


@router.delete("/{job_id}", status_code=204, responses=raises(Conflict, QueueUnavailable))
def delete_job(
    job_id: str, session: SessionDep, redis: RedisDep, settings: SettingsDep, owner: OwnerDep
) -> Response:
    """Remove a finished job: its rows, study, queue records and artifacts.

    A job still running must be cancelled first (409), so no worker is left
    writing to a job that no longer exists; a cancelled job is a 409 too while
    a task of it still runs in a worker (it stops within seconds of the cancel).
    """
    job = repo.get_job(session, job_id, owner)
    if job.status not in TERMINAL:
        raise InvalidTransition(job_id, job.status.value, "deleted (cancel it first)")
    purge_job(session, redis, settings, job)
    return Response(status_code=204)


CandidateSort = Literal[
    "trial", "-trial", "score", "-score", "accuracy", "-accuracy",
    "flops", "-flops", "params", "-params", "started", "-started",
]  # fmt: skip


@router.get("/{job_id}/candidates", response_model=CandidatePage, responses=NOT_MODIFIED)
def list_candidates(
    job_id: str,
    request: Request,
    session: ReadSessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    order: Annotated[
        CandidateSort, Query(description="Sort key; '-' first for descending, score is best first.")
    ] = "trial",
    status: Annotated[list[CandidateStatus] | None, Query(description="Only these.")] = None,
    min_accuracy: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_flops_ratio: Annotated[float | None, Query(gt=0, le=1)] = None,
    max_params_ratio: Annotated[float | None, Query(gt=0, le=1)] = None,
    worker: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[
        str | None,
        Query(
            pattern=PATTERN,
            max_length=MAX_SINCE,
            description="A next_since from an earlier reply (0 to start): only candidates "
            "created or changed since, oldest first (order and offset do not apply).",
        ),
        AfterValidator(Cursor.check),
    ] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The job's candidates, sorted and filtered; ``total`` counts the matching ones.

    With ``since=``, only what changed since that reply, and the cursor for the next poll.
    """
    job = repo.get_job(session, job_id, owner)  # the whole row: see get_job
    etag = candidates_tag(owner, repo.JobVersion.of(job), request.scope["query_string"])
    if (unchanged := not_modified(etag, if_none_match)) is not None:
        return unchanged
    costs = BaseCosts.of(job)
    where = repo.CandidateFilter(
        statuses=tuple(status) if status else None,
        min_accuracy=min_accuracy,
        max_flops=_bound(max_flops_ratio, costs.flops, "max_flops_ratio"),
        max_params=_bound(max_params_ratio, costs.params, "max_params_ratio"),
        worker=worker,
    )
    if since is not None:
        return tagged(_changed(session, job, since, limit, where), etag)
    rows = repo.list_candidates(
        session, job_id, limit=limit, offset=offset, order_by=order, where=where
    )
    items = [CandidatePublic.of(c, costs) for c in rows]
    total = repo.count_candidates(session, job_id, where=where)
    page = CandidatePage(items=items, total=total, limit=limit, offset=offset)
    return tagged(page, etag)


def _changed(
    session: SessionDep, job: Job, since: str, limit: int, where: repo.CandidateFilter
) -> CandidatePage:
    """The candidates a poll holding cursor ``since`` has not seen, and the cursor after them.

    Read before the rows, so that a candidate created meanwhile is at or after the
    new cursor's ``next`` and a job ending meanwhile is reported again next time.
    When nothing moved, ``next_since`` is ``since`` itself, character for character: the
    next poll is then the same URL, whose ETag the poller holds, so it can be a 304 (a
    job without candidates yet is polled from ``since=0`` on, not from a second URL).
    """
    seen = Cursor.parse(since)
    ended = job.status in TERMINAL
    last = repo.last_candidate_id(session, job.id)
    start = 0 if ended and not seen.ended else seen.next
    rows = repo.changed_candidates(
        session, job.id, start=start, pending=seen.running, limit=limit, where=where
    )
    after = rows[-1].id + 1 if rows else start
    # With no candidate at all, every start is the same place: keep the caller's.
    stop = after if len(rows) == limit else max(last + 1 if last else 0, start, after)
    running = repo.still_running(session, job.id, seen.running, start, stop)
    cursor = Cursor(next=stop, running=tuple(running), ended=ended)
    costs = BaseCosts.of(job)
    items = [CandidatePublic.of(c, costs) for c in rows]
    next_since = since if cursor == seen else str(cursor)
    return CandidatePage(
        items=items, total=len(items), limit=limit, offset=0, next_since=next_since
    )


def _bound(ratio: float | None, base: float | None, field: str) -> float | None:
    """An absolute cost bound from a ratio; a job not yet profiled cannot be filtered so."""
    if ratio is None:
        return None
    if base is None:
        raise ResultNotReady(f"{field}: the job is not profiled yet, so ratios are unknown")
    return ratio * base * (1 + 1e-9)


@router.get("/{job_id}/result")
def get_result(job_id: str, session: ReadSessionDep, owner: OwnerDep) -> dict[str, Any]:
    """The finished job's result (``result.json``); 404 until the job is done."""
    job = repo.get_job(session, job_id, owner)
    if job.status != JobStatus.done or job.result is None:
        raise ResultNotReady(f"job {job_id!r} has no result: it is {job.status.value}")
    return job.result


@router.get("/{job_id}/sensitivity")
def get_sensitivity(job_id: str, session: ReadSessionDep, owner: OwnerDep) -> dict[str, Any]:
    """The triage report: per-group sensitivity curves and per-block criticality.

    Written by ``prepare`` when the spec says ``triage: true``, so it is
    readable while the search still runs; 404 before that or without triage.
    """
    job = repo.get_job(session, job_id, owner)
    if job.triage is None:
        wanted = bool(job.spec.get("triage", {}).get("enabled"))
        reason = f"it is {job.status.value}" if wanted else "its spec has no triage: true"
        raise TriageNotReady(f"job {job_id!r} has no triage report: {reason}")
    return job.triage


@router.get("/{job_id}/pareto", response_model=ParetoPublic)
def get_pareto(job_id: str, session: ReadSessionDep, owner: OwnerDep) -> ParetoPublic:
    """The Pareto front so far: validation accuracy against the job's objective.

    Computed from the stored candidates, so it grows while the search runs
    and is the same front ``finalize`` writes to ``pareto.json``.
    """
    job = repo.get_job(session, job_id, owner)
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
    job_id: str, name: str, session: ReadSessionDep, settings: SettingsDep, owner: OwnerDep
) -> FileResponse:
    """One of the job's files, by its allow-listed name."""
    media_type = ARTIFACTS.get(name)
    if media_type is None:
        raise ArtifactNotFound(f"no artifact named {name!r}; known: {sorted(ARTIFACTS)}")
    job = repo.get_job(session, job_id, owner)
    path = settings.job_dir(job.id) / name
    if not path.is_file():
        raise ArtifactNotFound(f"job {job_id!r} has no {name} (yet)")
    return FileResponse(path, media_type=media_type, filename=name)
