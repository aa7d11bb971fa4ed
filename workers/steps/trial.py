"""The ``trial`` stage: ask, repair, build, score and tell one candidate.

A search runs many trials, on many workers at once, each one queue task
with a slot number. A trial reads its job once, at its start
(:func:`workers.steps.stage.read_job`): the status, the spec, the profile,
the triage bounds, when the search started and the baseline's latency are
all settled before the job turns ``searching``, so one snapshot serves the
whole trial. What it reads again is what other processes change while it
runs: the candidates of its slot (an earlier run of it), the candidates of
its network (a twin on another worker), and, every second, whether the job
was cancelled or deleted (:func:`workers.steps.lifecycle.stoppable`).

A failure while scoring fails the candidate, not the job: it is told to
the study as failed and the search goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from core.db import repo
from core.db.models import Candidate, CandidateStatus, JobStatus
from core.settings import Settings
from core.spec import JobSpec
from search import (
    Repaired,
    candidate_key,
    cap,
    catalogue,
    flops_aware_score,
    heartbeat,
    repair,
    silent,
    unrepaired,
)
from search import ask as ask_study
from search import tell as tell_study
from workers.steps import candidate, stage
from workers.steps.context import JobContext, worker_name
from workers.steps.latency import latency_ms
from workers.steps.lifecycle import stoppable
from workers.steps.stage import JobRow, read_job, search_elapsed, session
from workers.steps.timeouts import TimeLimit, time_limit

log = logging.getLogger(__name__)

TWIN_POLL_S = 0.2  # how often a trial waiting for a twin's score looks for it
TWIN_LIVENESS_S = 2.0  # how often it checks that the twin's process still beats


@stoppable
def trial(job_id: str, settings: Settings | None = None, task: int | None = None) -> None:
    """Ask, repair, build, score and tell one candidate.

    ``task`` is the queue task's trial slot. The queue retries a task whose
    worker died (RQ owns retries, and nothing else does), so the same slot
    may run again: :func:`_resume_slot` makes that run harmless.
    """
    settings = settings or Settings()
    t0, started_at = time.perf_counter(), datetime.now(UTC)
    row = read_job(settings, job_id)  # the trial's one read of its job
    ctx = row.context(settings)
    if row.status != JobStatus.searching:
        log.info("trial(%s) skipped: job is %s", job_id, row.status)
        return
    if task is not None and not _resume_slot(settings, job_id, task):
        return
    if _past_search_limit(row):
        log.info("trial(%s) skipped: the search ran past limits.search_s", job_id)
        return
    load_s = ctx.take_load_time()  # non-zero only where this trial loaded it
    timings = {"load_s": load_s, "db_s": time.perf_counter() - t0 - load_s}
    spec, space = ctx.spec, ctx.space()

    tick = time.perf_counter()
    proposal = ask_study(
        job_id,
        settings.optuna_url,
        space,
        sampler=spec.search.sampler,
        seed=spec.seed,
        n_trials=spec.search.n_trials,
        granularity=spec.search.granularity,
        population=spec.search.population,
    )
    fixed = _fix(spec)(space, proposal.ratios, ctx.budget())
    key = candidate_key(fixed.counts)
    objectives: dict[str, Any] = {
        "flops_ratio": fixed.flops / space.profile.base_flops,
        "params_ratio": fixed.params / space.profile.base_params,
    }
    timings["ask_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    # add_candidate looks the job up again inside its own write: it may have been
    # deleted since the read above, and the insert must not outlive it.
    with session(settings) as s:
        cand = repo.add_candidate(
            s,
            job_id,
            trial_number=proposal.number,
            key=key,
            proposed=list(proposal.ratios),
            ratios=list(fixed.ratios),
            counts=list(fixed.counts),
            flops=fixed.flops,
            params=fixed.params,
            objectives=objectives,
            worker=worker_name(),
            device=str(ctx.device),
            task=task,
            status=CandidateStatus.running,
            started_at=started_at,
        )
        cand_id = cand.id
    earlier = _twin(settings, job_id, key, cand_id, proposal.number)  # a query, or a wait
    timings["db_s"] += time.perf_counter() - tick

    outcome: dict[str, Any]
    score: float | None
    if earlier is not None:
        score, accuracy, objectives = earlier.score, earlier.accuracy, earlier.objectives or {}
        outcome = {"status": CandidateStatus.duplicate, "score": score, "accuracy": accuracy}
        outcome["error"] = f"same network as candidate {earlier.id}; score reused"
    else:
        try:
            limit = time_limit(spec.limits.trial_s, "limits.trial_s")
            with heartbeat(job_id, settings.optuna_url, proposal.number), limit:
                accuracy, ms = score_candidate(ctx, list(fixed.counts), timings)
            score = flops_aware_score(accuracy, fixed.fill, spec.search.flops_lambda)
            outcome = {"status": CandidateStatus.complete, "score": score, "accuracy": accuracy}
            if ms is not None:
                base_ms = _baseline_latency(row)
                objectives = {**objectives, "latency_ms": ms, "latency_ratio": ms / base_ms}
        except Exception as exc:
            log.exception("trial %s of job %s failed", proposal.number, job_id)
            error = str(exc) if isinstance(exc, TimeLimit) else repr(exc)
            score, outcome = None, {"status": CandidateStatus.failed, "error": error}
    outcome["objectives"] = objectives

    tick = time.perf_counter()
    values: float | tuple[float, float] | None = score
    if score is not None and catalogue.sampler(spec.search.sampler).objectives == 2:
        values = (score, float(objectives[spec.search.objective]))
    tell_study(job_id, settings.optuna_url, proposal.number, values)
    timings["tell_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - t0
    # This last write is timed by the gap to the next trial (finished_at is set first).
    with session(settings) as s:
        repo.finish_candidate(s, cand_id, timings=timings, finished_at=datetime.now(UTC), **outcome)


def _resume_slot(settings: Settings, job_id: str, task: int) -> bool:
    """Settle what an earlier run of this trial slot left; False if nothing is left to do.

    A run that finished (its candidate is complete, duplicate or failed)
    means the slot is done: running it again would count a trial twice. A
    candidate still ``running`` belongs to a run whose worker died: it is
    marked ``lost`` and its Optuna trial failed (a late tell from that run,
    were it alive, is a no-op), and this run proposes a new candidate.
    """
    # The slot's candidates, not the job: what an earlier run of this task wrote.
    with session(settings) as s:
        earlier = repo.task_candidates(s, job_id, task)
        if any(c.status in repo.FINISHED_CANDIDATES for c in earlier):
            log.warning("trial slot %d of %s already finished; not run again", task, job_id)
            return False
        for cand in earlier:
            repo.mark_lost(s, cand.id, "its worker died mid-trial; the task was run again")
    for cand in earlier:
        tell_study(job_id, settings.optuna_url, cand.trial_number, None)
    return True


def _past_search_limit(row: JobRow) -> bool:
    """Whether the search has run past ``limits.search_s`` (now, by the row's start time)."""
    limit = row.spec.limits.search_s
    return limit is not None and search_elapsed(row.timings) > limit


def _baseline_latency(row: JobRow) -> float:
    """The baseline's latency at ``latency_batch``, measured by ``prepare``."""
    return float(row.baseline["objective_latency_ms"])


def _twin(settings: Settings, job_id: str, key: str, cand_id: int, number: int) -> Candidate | None:
    """An earlier, scored candidate of the same network, if there is one.

    Called after this trial's own row is written, so of two workers that
    drew the same network at once the second always sees the first: it
    waits for that score instead of computing it again (``tp_global`` and
    ``sensitivity`` propose one network to every worker). A twin whose
    process died (a killed horse, a dead worker) stops beating; once it is
    silent for ``search.study.SILENT_S`` it is not waited for any longer,
    and this trial scores the network itself (or waits for a living twin).
    Its own heartbeat runs meanwhile, so a trial behind it sees it alive.
    """
    dead: set[int] = set()
    next_look, beating = time.monotonic() + TWIN_LIVENESS_S, False
    with ExitStack() as waiting:
        while True:
            # Read again on every look: the twin's status is what is being waited on.
            with session(settings) as s:
                scored = repo.find_scored_by_key(s, job_id, key)
                if scored is not None:
                    return scored
                twin = repo.find_running_by_key(s, job_id, key, before=cand_id, skip=dead)
            if twin is None:
                return None
            if not beating:
                waiting.enter_context(heartbeat(job_id, settings.optuna_url, number))
                beating = True
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + TWIN_LIVENESS_S
                if silent(job_id, settings.optuna_url, [twin.trial_number]):
                    log.warning(
                        "trial %d of %s: its twin, trial %d, went silent; not waited for",
                        number, job_id, twin.trial_number,
                    )  # fmt: skip
                    dead.add(twin.id)
                    continue
            time.sleep(TWIN_POLL_S)


def _fix(spec: JobSpec) -> Callable[..., Repaired]:
    """How a proposal meets the budget: repaired onto it, capped (two objectives), or left."""
    if not spec.search.repair:
        return unrepaired
    return cap if catalogue.sampler(spec.search.sampler).objectives == 2 else repair


def score_candidate(
    ctx: JobContext, values: list[int], timings: dict[str, Any]
) -> tuple[float, float | None]:
    """Build the candidate (prune, ..., short fine-tune); its proxy val accuracy and latency.

    The latency (ms at ``latency_batch``) is measured only for the
    ``latency_ratio`` objective.
    """
    scoring = ctx.spec.scoring
    steps = scoring.finetune_steps if scoring.mode == "finetune" else 0
    built = candidate.build(ctx, values, steps=steps, distill=scoring.distill)
    timings.update(built.timings)
    timings.update({k: v for k, v in built.notes.items() if isinstance(v, int | float)})
    if "reconstruct" in built.notes:
        fits = built.notes["reconstruct"]
        timings["reconstruct_error_before"] = sum(f["error_before"] for f in fits) / len(fits)
        timings["reconstruct_error_after"] = sum(f["error_after"] for f in fits) / len(fits)
    tick = time.perf_counter()
    candidate.calibrate(ctx, built.model)
    timings["calib_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    val_accuracy = stage.accuracy(ctx, built.model, "val")
    timings["eval_s"] = time.perf_counter() - tick
    ms = None
    if ctx.spec.search.objective == "latency_ratio":
        tick = time.perf_counter()
        ms = latency_ms(ctx, built.model, values)
        timings["latency_s"] = time.perf_counter() - tick
    del built
    candidate.release()
    return val_accuracy, ms
