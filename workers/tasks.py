"""The three task functions of a job: ``prepare``, ``trial``, ``finalize``.

RQ calls them with a job id only (DESIGN.md, "The flow of one job"); the
local mode calls the very same functions in-process with its own settings.
Each task reads what it needs from the database, does its work between
short transactions, and records the outcome: a task never leaves a job in a
state the database does not describe.

A failure inside a task is recorded (job ``failed`` with the reason, or a
``failed`` candidate told to the study as failed) and not re-raised, so the
queue drains instead of leaving dependent tasks waiting forever. A task of
a job that is cancelled or deleted while it runs stops and ends quietly
(:func:`workers.steps.lifecycle.stoppable`): nothing to record, nothing to retry.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any

import torch

from core.db import repo
from core.db.models import Candidate, CandidateStatus, JobStatus
from core.db.session import session_factory, session_scope
from core.errors import InvalidTransition, JobNotFound
from core.settings import Settings
from core.spec import JobSpec
from search import (
    InfeasibleBudget,
    Repaired,
    candidate_key,
    cap,
    create_study,
    flops_aware_score,
    heartbeat,
    pareto_front,
    repair,
    silent,
    unrepaired,
)
from search import ask as ask_study
from search import tell as tell_study
from workers import export
from workers.compress.structure import check as check_structure
from workers.errors import StructureError
from workers.nets import measure, train
from workers.steps import allocation, baselines, candidate, ladder, triage_report
from workers.steps.context import JobContext, forget, job_context, worker_name
from workers.steps.latency import latency_ms
from workers.steps.lifecycle import stoppable
from workers.steps.timeouts import TimeLimit, time_limit

log = logging.getLogger(__name__)

TWIN_POLL_S = 0.2  # how often a trial waiting for a twin's score looks for it
TWIN_LIVENESS_S = 2.0  # how often it checks that the twin's process still beats


@contextmanager
def _session(settings: Settings) -> Iterator[Any]:
    with session_scope(session_factory(settings.database_url)) as session:
        yield session


def _load(job_id: str, settings: Settings) -> tuple[JobStatus, JobContext]:
    with _session(settings) as s:
        job = repo.get_job(s, job_id)
        status, spec, profile = job.status, JobSpec.model_validate(job.spec), job.profile
        report = job.triage
    return status, job_context(job_id, spec, settings, profile, report)


def _fail(job_id: str, settings: Settings, stage: str, exc: BaseException) -> None:
    if isinstance(exc, JobNotFound):  # deleted under the task: not a failure (see lifecycle)
        raise exc
    if isinstance(exc, StructureError):  # the user's network, not a fault: no traceback
        log.info("job %s refused in %s: %s", job_id, stage, exc)
    else:
        log.error("job %s failed in %s:\n%s", job_id, stage, traceback.format_exc())
    with _session(settings) as s:
        active = {JobStatus.queued, JobStatus.preparing, JobStatus.searching, JobStatus.finalizing}
        try:
            repo.transition(
                s, job_id, JobStatus.failed, allowed_from=active, error=f"{stage}: {exc}"
            )
        except InvalidTransition:  # cancelled while this stage ran: cancelled it stays
            log.warning("job %s ended meanwhile; %s's failure not recorded", job_id, stage)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _accuracy(ctx: JobContext, model: torch.nn.Module, split: str) -> float:
    return train.evaluate(model, getattr(ctx.data, split), batch_size=512, device=ctx.device)


def _costs(ctx: JobContext, model: torch.nn.Module) -> dict[str, float]:
    flops, params = measure.count(model, ctx.input_shape, device=ctx.device)
    return {"flops": flops, "params": params}


def _paired_latency(
    ctx: JobContext, a: torch.nn.Module, b: torch.nn.Module, rounds: int = 3
) -> tuple[dict[str, float], dict[str, float]]:
    """Best-of-``rounds`` median latency of two networks, measured alternately."""
    best: list[dict[str, float]] = [{}, {}]
    for _ in range(rounds):
        for i, model in enumerate((a, b)):
            for batch, ms in measure.latency_ms(model, ctx.input_shape, device=ctx.device).items():
                best[i][str(batch)] = min(ms, best[i].get(str(batch), ms))
    return best[0], best[1]


@stoppable
def prepare(job_id: str, settings: Settings | None = None) -> None:
    """Train (or load) the baseline, profile it and open the study."""
    settings = settings or Settings()
    start = time.perf_counter()
    try:
        with _session(settings) as s:
            # From ``preparing`` too: the queue re-runs a prepare whose worker died.
            repo.transition(
                s, job_id, JobStatus.preparing, allowed_from={JobStatus.queued, JobStatus.preparing}
            )
    except InvalidTransition:  # already prepared (a retried task) or cancelled
        log.warning("prepare(%s) skipped: job is not queued", job_id)
        return
    try:
        _, ctx = _load(job_id, settings)
        ctx.take_load_time()  # part of prepare_s, not of the first trial
        spec = ctx.spec
        # Before any training: a network that does not fit the data or the pruner fails
        # in a second with the reason. Its profile is structural, so it is the job's.
        with torch.random.fork_rng(devices=[]):  # building it leaves the job's seed alone
            profile = check_structure(
                ctx.fresh_model().cpu(),
                input_shape=ctx.input_shape,
                num_classes=ctx.data.num_classes,
                arch=spec.model.arch,
                slices=spec.search.lowrank_slices,
            ).profile
        model = baselines.trained(ctx)
        ctx.profile = profile
        space = ctx.space()
        repair(space, [1.0] * space.size, ctx.budget())  # infeasible: fail now
        baseline: dict[str, Any] = {
            "accuracy": _accuracy(ctx, model, "test"),
            "val_accuracy": _accuracy(ctx, model, "val"),
            **_costs(ctx, model),
            # No latency here: finalize times baseline and pruned network side by
            # side and stores that one figure (a second, earlier one disagreed).
            "profile_flops": profile.base_flops,
            "profile_params": profile.base_params,
        }
        if spec.search.objective == "latency_ratio":
            baseline["objective_latency_ms"] = latency_ms(ctx, model, ctx.space().sizes)
        needs_curves = spec.triage.enabled or spec.search.sampler in allocation.NEEDS_CURVES
        report = _triage(ctx, full=spec.triage.enabled) if needs_curves else None
        create_study(job_id, settings.optuna_url, spec.search.sampler)
        baseline["plan"] = allocation.plan(ctx, model, report)
        with _session(settings) as s:
            repo.update_job(
                s,
                job_id,
                profile=profile.to_dict(),
                baseline=baseline,
                triage=report,
                timings={"prepare_s": time.perf_counter() - start, "search_started": _now()},
            )
            repo.transition(s, job_id, JobStatus.searching, allowed_from={JobStatus.preparing})
    except Exception as exc:
        _fail(job_id, settings, "prepare", exc)


def _triage(ctx: JobContext, *, full: bool) -> dict[str, Any]:
    """Run the triage report, narrow the space by it, and write ``sensitivity.json``."""
    report = triage_report.run(ctx, full=full)
    if report["bounds"] is not None:
        ctx.group_bounds = tuple((lo, hi) for lo, hi in report["bounds"])
        try:
            repair(ctx.space(), [1.0] * ctx.space().size, ctx.budget())
        except InfeasibleBudget:  # the narrowed floors leave no room: search unnarrowed
            report["bounds"], ctx.group_bounds = None, None
            report["narrowing"] = "dropped: the critical floors do not fit the budget"
    (ctx.job_dir / "sensitivity.json").write_text(json.dumps(report, indent=2))
    return report


@stoppable
def trial(job_id: str, settings: Settings | None = None, task: int | None = None) -> None:
    """Ask, repair, build, score and tell one candidate.

    ``task`` is the queue task's trial slot. The queue retries a task whose
    worker died (RQ owns retries, and nothing else does), so the same slot
    may run again: :func:`_resume_slot` makes that run harmless.
    """
    settings = settings or Settings()
    t0, started_at = time.perf_counter(), datetime.now(UTC)
    status, ctx = _load(job_id, settings)
    if status != JobStatus.searching:
        log.info("trial(%s) skipped: job is %s", job_id, status)
        return
    if task is not None and not _resume_slot(settings, job_id, task):
        return
    if _past_search_limit(settings, job_id, ctx.spec):
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
    with _session(settings) as s:
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
                accuracy, ms = _score(ctx, list(fixed.counts), timings)
            score = flops_aware_score(accuracy, fixed.fill, spec.search.flops_lambda)
            outcome = {"status": CandidateStatus.complete, "score": score, "accuracy": accuracy}
            if ms is not None:
                base_ms = _baseline_latency(settings, job_id)
                objectives = {**objectives, "latency_ms": ms, "latency_ratio": ms / base_ms}
        except Exception as exc:
            log.exception("trial %s of job %s failed", proposal.number, job_id)
            error = str(exc) if isinstance(exc, TimeLimit) else repr(exc)
            score, outcome = None, {"status": CandidateStatus.failed, "error": error}
    outcome["objectives"] = objectives

    tick = time.perf_counter()
    values: float | tuple[float, float] | None = score
    if score is not None and spec.search.sampler == "nsga2":
        values = (score, float(objectives[spec.search.objective]))
    tell_study(job_id, settings.optuna_url, proposal.number, values)
    timings["tell_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - t0
    # This last write is timed by the gap to the next trial (finished_at is set first).
    with _session(settings) as s:
        repo.finish_candidate(s, cand_id, timings=timings, finished_at=datetime.now(UTC), **outcome)


def _resume_slot(settings: Settings, job_id: str, task: int) -> bool:
    """Settle what an earlier run of this trial slot left; False if nothing is left to do.

    A run that finished (its candidate is complete, duplicate or failed)
    means the slot is done: running it again would count a trial twice. A
    candidate still ``running`` belongs to a run whose worker died: it is
    marked ``lost`` and its Optuna trial failed (a late tell from that run,
    were it alive, is a no-op), and this run proposes a new candidate.
    """
    with _session(settings) as s:
        earlier = repo.task_candidates(s, job_id, task)
        if any(c.status in repo.FINISHED_CANDIDATES for c in earlier):
            log.warning("trial slot %d of %s already finished; not run again", task, job_id)
            return False
        for cand in earlier:
            repo.mark_lost(s, cand.id, "its worker died mid-trial; the task was run again")
    for cand in earlier:
        tell_study(job_id, settings.optuna_url, cand.trial_number, None)
    return True


def _search_elapsed(timings: dict[str, Any]) -> float:
    """Seconds since ``prepare`` opened the search."""
    return time.time() - datetime.fromisoformat(timings["search_started"]).timestamp()


def _past_search_limit(settings: Settings, job_id: str, spec: JobSpec) -> bool:
    if spec.limits.search_s is None:
        return False
    with _session(settings) as s:
        timings = repo.get_job(s, job_id).timings or {}
    return _search_elapsed(timings) > spec.limits.search_s


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
            with _session(settings) as s:
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
    """How a proposal meets the budget: repaired onto it, capped (``nsga2``), or left."""
    if not spec.search.repair:
        return unrepaired
    return cap if spec.search.sampler == "nsga2" else repair


def _baseline_latency(settings: Settings, job_id: str) -> float:
    """The baseline's latency at ``latency_batch``, measured by ``prepare``."""
    with _session(settings) as s:
        baseline = repo.get_job(s, job_id).baseline or {}
        return float(baseline["objective_latency_ms"])


def _score(
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
    accuracy = _accuracy(ctx, built.model, "val")
    timings["eval_s"] = time.perf_counter() - tick
    ms = None
    if ctx.spec.search.objective == "latency_ratio":
        tick = time.perf_counter()
        ms = latency_ms(ctx, built.model, values)
        timings["latency_s"] = time.perf_counter() - tick
    del built
    candidate.release()
    return accuracy, ms


def _front(scored: list[Any], objective: str) -> list[Any]:
    """Candidates on the Pareto front of validation accuracy against ``objective``."""
    complete = [c for c in scored if c.status == CandidateStatus.complete]
    by_id = {c.id: c for c in complete}
    return [by_id[p.id] for p in pareto_front(ladder.points(complete, objective))]


@stoppable
def finalize(job_id: str, settings: Settings | None = None) -> None:
    """Fine-tune the best candidate, measure it, export it, mark the job done."""
    settings = settings or Settings()
    start = time.perf_counter()
    try:
        with _session(settings) as s:
            repo.transition(
                s,
                job_id,
                JobStatus.finalizing,
                allowed_from={JobStatus.searching, JobStatus.finalizing},  # a retried finalize
            )
    except InvalidTransition:  # already finalized, or the job failed
        log.warning("finalize(%s) skipped: job is not searching", job_id)
        return
    try:
        _finalize(job_id, settings, start)
    except Exception as exc:
        _fail(job_id, settings, "finalize", exc)
    finally:
        forget(job_id)


def _stopped_early(spec: JobSpec, search_s: float, scored: list[Any]) -> str | None:
    """Why the search ended before its last trial, or None when every trial ran."""
    limit = spec.limits.search_s
    ran = sum(1 for c in scored if c.status != CandidateStatus.lost)
    if limit is None or search_s <= limit or ran >= spec.search.n_trials:
        return None
    return f"limits.search_s: {ran} of {spec.search.n_trials} trials ran in {limit:g} s"


def _finalize(job_id: str, settings: Settings, start: float) -> None:
    _, ctx = _load(job_id, settings)
    with _session(settings) as s:
        job = repo.get_job(s, job_id)
        baseline, timings = dict(job.baseline or {}), dict(job.timings or {})
        scored = repo.list_candidates(s, job_id, limit=100_000, offset=0)
    objective = ctx.spec.search.objective
    front = [
        {
            "candidate_id": c.id,
            "val_accuracy": c.accuracy,
            objective: (c.objectives or {})[objective],
            "flops": c.flops,
            "params": c.params,
            "ratios": c.ratios,
        }
        for c in _front(scored, objective)
    ]
    ranked, why = ladder.pool(ctx, scored)
    if not ranked:
        raise RuntimeError("no candidate completed within the budget; nothing to fine-tune")
    tick = time.perf_counter()
    decision = ladder.climb(ctx, ranked, why)
    timings["ladder_s"] = time.perf_counter() - tick
    with _session(settings) as s:
        for cand_id, rungs in decision.rungs.items():
            repo.set_rungs(s, cand_id, rungs)
    best = decision.winner
    chosen: dict[str, Any] = {
        "candidate_id": best.id,
        "trial_number": best.trial_number,
        "search_score": best.score,
        "search_val_accuracy": best.accuracy,
        "ratios": best.ratios,
        "counts": best.counts,
    }
    timings["search_s"] = _search_elapsed(timings)

    spec = ctx.spec
    built = candidate.build(
        ctx, chosen["counts"], epochs=spec.final.finetune_epochs, distill=spec.final.distill
    )
    model = built.model
    out = ctx.job_dir
    recipe = export.Recipe(
        arch=spec.model.arch,
        arch_kwargs={
            "in_channels": ctx.data.in_channels,
            "num_classes": ctx.data.num_classes,
            "input_size": ctx.data.size,
        },
        kept=built.kept,
        input_shape=ctx.input_shape,
        lowrank=built.lowrank,
    )
    export.save(out, model, recipe)
    onnx_path = export.export_onnx(out, model, ctx.input_shape)
    # Final numbers come from the exported files, so they are what the user gets.
    exported = export.load(out, device=str(ctx.device))
    final = {
        "accuracy": _accuracy(ctx, exported, "test"),
        "val_accuracy": _accuracy(ctx, exported, "val"),
        **_costs(ctx, exported),
        **chosen,
        "criterion": spec.search.criterion,
        "masking": spec.search.masking,
        "operator": spec.search.operator,
        "distill": spec.final.distill,
        "lowrank": built.lowrank,
        "notes": built.notes,
        "build_timings": built.timings,
    }
    # Latency is compared side by side, in this process, alternating the two
    # networks; the prepare-time figure of the baseline came from another moment.
    base_ms, best_ms = _paired_latency(ctx, ctx.baseline(), exported)
    baseline["latency_ms"], final["latency_ms"] = base_ms, best_ms
    final["flops_ratio"] = final["flops"] / baseline["flops"]
    final["params_ratio"] = final["params"] / baseline["params"]
    timings["finalize_s"] = time.perf_counter() - start
    result = {
        "job_id": job_id,
        "name": spec.name,
        "device": str(ctx.device),
        "baseline": baseline,
        "best": final,
        "pareto": front,
        "objective": objective,
        "ladder": decision.record,
        "timings": {k: timings[k] for k in ("prepare_s", "search_s", "ladder_s", "finalize_s")},
        "stopped_early": _stopped_early(spec, timings["search_s"], scored),
        "artifacts": ["model.safetensors", "recipe.json", "pareto.json"]
        + (["model.onnx"] if onnx_path else [])
        + (["sensitivity.json"] if (out / "sensitivity.json").is_file() else []),
        "spec": spec.model_dump(mode="json"),
    }
    (out / "pareto.json").write_text(json.dumps({"objective": objective, "front": front}, indent=2))
    (out / "result.json").write_text(json.dumps(result, indent=2))
    with _session(settings) as s:
        repo.update_job(s, job_id, result=result, timings=timings, baseline=baseline)
        repo.transition(s, job_id, JobStatus.done, allowed_from={JobStatus.finalizing})
    del model, exported, built
    candidate.release()
