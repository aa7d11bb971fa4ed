"""``/v1/batches``: many searches submitted at once for the ``overnight`` queue.

A batch is created all or nothing: every spec is validated first, the batch
and its jobs are stored in one transaction, and if Redis fails part-way the
jobs already queued are cancelled and the batch is removed again.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.exceptions import RequestValidationError

from core.db import batches, repo
from core.db.models import TERMINAL, Batch, JobStatus
from core.errors import Conflict, InvalidInput, InvalidTransition, QueueUnavailable
from core.queue import OVERNIGHT, cancel_tasks, enqueue_job, ensure_available
from service.api.deps import OwnerDep, ReadSessionDep, RedisDep, SessionDep, SettingsDep
from service.api.responses import raises
from service.api.schemas import BatchJobPublic, BatchPublic, Page, as_utc
from service.batches import BatchCreate
from service.cleanup import ensure_stopped, purge_job
from service.datasets import dataset_classes
from service.modelcheck import model_refusals, spec_classes
from service.quotas import admission
from service.uploads import check_job_weights

router = APIRouter(prefix="/v1/batches", tags=["batches"])


def _public(session: SessionDep, batch: Batch) -> BatchPublic:
    jobs = [
        BatchJobPublic.of(j, repo.progress(session, j.id), repo.best_candidate(session, j.id))
        for j in batches.batch_jobs(session, batch.id)
    ]
    states = Counter(j.status.value for j in jobs)
    ended = all(j.status in TERMINAL for j in jobs)
    finished = sorted(
        (j for j in jobs if j.test_accuracy is not None), key=lambda j: -(j.test_accuracy or 0)
    )
    rest = sorted(
        (j for j in jobs if j.test_accuracy is None), key=lambda j: -(j.best_val_accuracy or -1)
    )
    return BatchPublic(
        id=batch.id,
        name=batch.name,
        created_at=as_utc(batch.created_at) or batch.created_at,
        status="done" if ended else "running",
        states=dict(states),
        jobs=jobs,
        ranking=[j.id for j in finished + rest],
    )


@router.post("", status_code=201, response_model=BatchPublic, responses=raises(QueueUnavailable))
def create_batch(
    body: BatchCreate,
    session: SessionDep,
    redis: RedisDep,
    owner: OwnerDep,
    settings: SettingsDep,
) -> BatchPublic:
    """Validate every job, store them with the batch, queue them on ``overnight``."""
    try:
        specs = body.specs()
    except ValueError as exc:
        loc, _, msg = str(exc).partition(": ")
        raise RequestValidationError(
            [{"type": "value_error", "loc": ["body", *loc.split(".")], "msg": msg, "input": None}]
        ) from exc
    classes: list[int | None] = []
    for i, spec in enumerate(specs):
        try:
            check_job_weights(session, owner, spec)
            classes.append(dataset_classes(session, owner, spec, settings) or spec_classes(spec))
        except InvalidInput as exc:  # name the spec that holds the field
            raise _in_cell(body, i, exc) from exc
    # One subprocess for the batch's distinct (network, shape) pairs.
    for i, refusal in enumerate(model_refusals(specs, num_classes=classes)):
        if refusal is not None:
            raise _in_cell(body, i, InvalidInput("model.arch", refusal))
    ensure_available(redis)
    request = body.model_dump(mode="json", exclude_none=True)
    trials = sum(spec.search.n_trials for spec in specs)
    with admission(session, redis, settings, owner, jobs=len(specs), trials=trials):
        batch, jobs = batches.create_batch(session, owner, body.name, request, specs, OVERNIGHT)
    queued: list[tuple[str, int]] = []
    try:
        for job in jobs:
            enqueue_job(redis, job.id, job.n_trials, OVERNIGHT)
            queued.append((job.id, job.n_trials))
    except QueueUnavailable:
        for job_id, n_trials in queued:
            # Redis may be gone: then its tasks find no job and return at once.
            with contextlib.suppress(QueueUnavailable):
                cancel_tasks(redis, job_id, n_trials)
        batches.delete_batch(session, batch.id)
        raise
    return _public(session, batch)


def _in_cell(body: BatchCreate, index: int, exc: InvalidInput) -> InvalidInput:
    """``exc`` with its field inside the batch: ``jobs.N.<field>``, or ``base.<field>``."""
    where = f"jobs.{index}" if body.jobs is not None else "base"
    return InvalidInput(f"{where}.{exc.field}", exc.message)


@router.get("", response_model=Page[BatchPublic])
def list_batches(
    session: ReadSessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Page[BatchPublic]:
    """The caller's batches, newest first."""
    rows = batches.list_batches(session, owner, limit=limit, offset=offset)
    items = [_public(session, b) for b in rows]
    total = batches.count_batches(session, owner)
    return Page[BatchPublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{batch_id}", response_model=BatchPublic)
def get_batch(batch_id: str, session: ReadSessionDep, owner: OwnerDep) -> BatchPublic:
    """Per-job status and the summary that compares the batch's jobs."""
    return _public(session, batches.get_batch(session, batch_id, owner))


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchPublic,
    responses=raises(InvalidTransition, QueueUnavailable),
)
def cancel_batch(
    batch_id: str, session: SessionDep, redis: RedisDep, owner: OwnerDep
) -> BatchPublic:
    """Cancel every job of the batch that has not ended; finished ones stay as they are."""
    batch = batches.get_batch(session, batch_id, owner)
    active = frozenset(JobStatus) - TERMINAL
    for job in batches.batch_jobs(session, batch.id):
        if job.status not in TERMINAL:
            repo.transition(session, job.id, JobStatus.cancelled, allowed_from=active)
            cancel_tasks(redis, job.id, job.n_trials)
    return _public(session, batch)


@router.delete("/{batch_id}", status_code=204, responses=raises(Conflict, QueueUnavailable))
def delete_batch(
    batch_id: str, session: SessionDep, redis: RedisDep, settings: SettingsDep, owner: OwnerDep
) -> Response:
    """Remove a batch whose jobs have all ended (cancel it first) and everything of its jobs."""
    batch = batches.get_batch(session, batch_id, owner)
    jobs = batches.batch_jobs(session, batch.id)
    running = [j.id for j in jobs if j.status not in TERMINAL]
    if running:
        raise Conflict(f"batch {batch_id!r} has {len(running)} jobs not ended; cancel it first")
    ensure_stopped(redis, jobs)  # all or nothing: no job is purged while another still runs
    for job in jobs:
        purge_job(session, redis, settings, job)
    batches.delete_batch(session, batch.id)
    return Response(status_code=204)
