"""Public response models: what the API promises, decoupled from the tables.

Rows are converted here (not in the routes) so that every endpoint that
shows a job or a candidate shows it the same way. The request model is the
JobSpec itself (``core.spec``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from core.db.models import Candidate, CandidateStatus, Job, JobStatus
from service.stall import Stall

T = TypeVar("T")


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored in UTC); PostgreSQL aware ones."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class BaseCosts:
    """FLOPs and params of the unpruned network, as the profile's cost model counts them.

    Candidates are costed by the same model, so their ratios to these are exact.
    """

    flops: float | None
    params: float | None

    @classmethod
    def of(cls, job: Job) -> BaseCosts:
        baseline = job.baseline or {}
        flops, params = baseline.get("profile_flops"), baseline.get("profile_params")
        if (flops is None or params is None) and job.profile:
            # Only jobs whose worker did not record the costs pay for importing search.
            from search.errors import ProfileError
            from search.profile import ModelProfile

            try:
                profile = ModelProfile.from_dict(job.profile)
                flops, params = profile.base_flops, profile.base_params
            except ProfileError:
                pass
        return cls(_positive(flops), _positive(params))

    def ratio(self, value: float, base: float | None) -> float | None:
        return None if base is None else value / base


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value > 0 else None


class Progress(BaseModel):
    done: int = Field(description="Finished trials: complete, duplicate or failed.")
    total: int = Field(description="Trials the job will run.")


class BestPublic(BaseModel):
    """The best candidate scored so far."""

    candidate_id: int
    trial_number: int
    score: float | None
    accuracy: float | None
    flops: float
    params: float
    flops_ratio: float | None
    params_ratio: float | None
    ratios: list[float]


class GroupPublic(BaseModel):
    """A prunable channel group, in the order of every candidate's ``counts`` and ``ratios``."""

    name: str
    channels: int
    stage: int

    @classmethod
    def all_of(cls, job: Job) -> list[GroupPublic]:
        groups = (job.profile or {}).get("groups") or []
        return [
            cls(name=str(g["name"]), channels=int(g["channels"]), stage=int(g.get("stage", 0)))
            for g in groups
        ]


class StallPublic(BaseModel):
    """Why a searching job counts as stalled (``service.stall``)."""

    idle_s: float = Field(description="Seconds since its last finished trial (or search start).")
    threshold_s: float = Field(
        description="What it may idle: max(stall_floor_s, stall_factor x median trial time)."
    )
    median_trial_s: float | None = Field(description="Median of its recent trials' wall times.")


class JobPublic(BaseModel):
    id: str
    name: str
    status: JobStatus
    queue: str = Field(description="Priority: interactive (served first) or overnight.")
    owner: str
    batch_id: str | None
    groups: list[GroupPublic] = Field(description="Prunable channel groups; empty until prepared.")
    n_trials: int
    error: str | None
    progress: Progress
    baseline: dict[str, Any] | None
    best: BestPublic | None
    has_result: bool = Field(description="Whether GET /v1/jobs/{id}/result has a result.")
    has_sensitivity: bool = Field(
        description="Whether GET /v1/jobs/{id}/sensitivity has a triage report."
    )
    stalled: StallPublic | None = Field(
        default=None,
        description="Set while the job searches but no trial has finished for far longer "
        "than its trials take; null otherwise.",
    )
    timings: dict[str, Any]
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(
        cls,
        job: Job,
        progress: tuple[int, int],
        best: Candidate | None,
        stall: Stall | None = None,
    ) -> JobPublic:
        costs = BaseCosts.of(job)
        best_public = None
        if best is not None:
            best_public = BestPublic(
                candidate_id=best.id,
                trial_number=best.trial_number,
                score=best.score,
                accuracy=best.accuracy,
                flops=best.flops,
                params=best.params,
                flops_ratio=costs.ratio(best.flops, costs.flops),
                params_ratio=costs.ratio(best.params, costs.params),
                ratios=best.ratios,
            )
        created, updated = as_utc(job.created_at), as_utc(job.updated_at)
        assert created is not None and updated is not None
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            queue=job.queue,
            owner=job.owner,
            batch_id=job.batch_id,
            groups=GroupPublic.all_of(job),
            n_trials=job.n_trials,
            error=job.error,
            progress=Progress(done=progress[0], total=progress[1]),
            baseline=job.baseline,
            best=best_public,
            has_result=job.status == JobStatus.done and job.result is not None,
            has_sensitivity=job.triage is not None,
            stalled=None if stall is None else StallPublic(**asdict(stall)),
            timings=job.timings or {},
            spec=job.spec,
            created_at=created,
            updated_at=updated,
        )


class CandidatePublic(BaseModel):
    id: int
    trial_number: int
    task: int | None = Field(description="Queue task (trial slot); a retried task reuses it.")
    status: CandidateStatus
    key: str
    ratios: list[float] = Field(description="Per-group keep ratios after budget repair.")
    proposed: list[float] = Field(description="Ratios as the sampler proposed them.")
    counts: list[int] = Field(description="Kept channels per group.")
    flops: float
    params: float
    flops_ratio: float | None = Field(description="FLOPs relative to the unpruned profile.")
    params_ratio: float | None = Field(description="Params relative to the unpruned profile.")
    score: float | None
    accuracy: float | None
    worker: str | None
    device: str | None
    timings: dict[str, Any]
    objectives: dict[str, Any] = Field(
        description="flops_ratio, params_ratio and, for latency_ratio jobs, the measured "
        "latency_ms and latency_ratio."
    )
    rungs: dict[str, Any] | None = Field(
        description="Promotion ladder: the short fine-tune this candidate got and why."
    )
    error: str | None
    started_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, candidate: Candidate, costs: BaseCosts) -> CandidatePublic:
        started = as_utc(candidate.started_at)
        assert started is not None
        return cls(
            id=candidate.id,
            trial_number=candidate.trial_number,
            task=candidate.task,
            status=candidate.status,
            key=candidate.key,
            ratios=candidate.ratios,
            proposed=candidate.proposed,
            counts=candidate.counts,
            flops=candidate.flops,
            params=candidate.params,
            flops_ratio=costs.ratio(candidate.flops, costs.flops),
            params_ratio=costs.ratio(candidate.params, costs.params),
            score=candidate.score,
            accuracy=candidate.accuracy,
            worker=candidate.worker,
            device=candidate.device,
            timings=candidate.timings or {},
            objectives=candidate.objectives or {},
            rungs=candidate.rungs,
            error=candidate.error,
            started_at=started,
            finished_at=as_utc(candidate.finished_at),
        )


class ParetoPoint(BaseModel):
    candidate_id: int
    trial_number: int
    val_accuracy: float
    cost: float = Field(description="The job's objective (flops_ratio, params_ratio, ...).")
    flops_ratio: float | None
    params_ratio: float | None
    ratios: list[float]

    @classmethod
    def of(cls, candidate: Candidate, objective: str) -> ParetoPoint:
        objectives = candidate.objectives or {}
        return cls(
            candidate_id=candidate.id,
            trial_number=candidate.trial_number,
            val_accuracy=candidate.accuracy or 0.0,
            cost=float(objectives[objective]),
            flops_ratio=objectives.get("flops_ratio"),
            params_ratio=objectives.get("params_ratio"),
            ratios=candidate.ratios,
        )


class ParetoPublic(BaseModel):
    objective: str
    candidates: int = Field(description="Complete candidates the front was computed from.")
    front: list[ParetoPoint] = Field(description="Non-dominated candidates, cheapest first.")
    chosen: int | None = Field(description="Candidate the finished job fine-tuned and exported.")


class Page(BaseModel, Generic[T]):
    """One page of a list; ``total`` counts every item the filters match."""

    items: list[T]
    total: int
    limit: int
    offset: int


class CandidatePage(Page[CandidatePublic]):
    """A page of candidates; with ``since=``, also the cursor the next poll sends."""

    next_since: str | None = Field(
        default=None,
        description="Only with since=: pass it as since= next time to get only the candidates "
        "created or changed after this reply (a running one comes back when it finishes).",
    )


class Health(BaseModel):
    status: str
    database: str
    redis: str


class CancelPublic(BaseModel):
    job: JobPublic
    dropped_tasks: int = Field(description="Queued tasks removed from the queue.")


class BatchJobPublic(BaseModel):
    """One job of a batch, with what the batch summary compares."""

    id: str
    name: str
    status: JobStatus
    progress: Progress
    sampler: str
    flops_target: float | None
    params_target: float | None
    best_val_accuracy: float | None = Field(description="Best search score so far (validation).")
    test_accuracy: float | None = Field(description="The exported network's, once done.")
    baseline_accuracy: float | None
    flops_ratio: float | None
    params_ratio: float | None
    speedup: float | None = Field(description="Baseline / pruned latency at the largest batch.")
    error: str | None

    @classmethod
    def of(cls, job: Job, progress: tuple[int, int], best: Candidate | None) -> BatchJobPublic:
        spec, result = job.spec, job.result or {}
        final, base = result.get("best") or {}, result.get("baseline") or job.baseline or {}
        speedup = None
        if final.get("latency_ms") and base.get("latency_ms"):
            batch = max(final["latency_ms"], key=int)
            speedup = base["latency_ms"][batch] / final["latency_ms"][batch]
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            progress=Progress(done=progress[0], total=progress[1]),
            sampler=str(spec.get("search", {}).get("sampler")),
            flops_target=spec.get("target", {}).get("flops_ratio"),
            params_target=spec.get("target", {}).get("params_ratio"),
            best_val_accuracy=best.accuracy if best is not None else None,
            test_accuracy=final.get("accuracy"),
            baseline_accuracy=base.get("accuracy"),
            flops_ratio=final.get("flops_ratio"),
            params_ratio=final.get("params_ratio"),
            speedup=speedup,
            error=job.error,
        )


class BatchPublic(BaseModel):
    id: str
    name: str
    created_at: datetime
    status: str = Field(description="running until every job has ended, then done.")
    states: dict[str, int] = Field(description="How many of its jobs are in each state.")
    jobs: list[BatchJobPublic] = Field(description="In submission order.")
    ranking: list[str] = Field(
        description="Job ids, best first: finished jobs by test accuracy, then the rest "
        "by best validation score."
    )
