"""The ``prepare`` stage: the baseline, its profile, the triage report and the study.

It runs once per job, before any trial (DESIGN.md, "The flow of one job"),
and is the only stage that may refuse the user's network: the structure
check and the budget's feasibility are tried here, in seconds and before
any training, so a job that cannot work fails with the reason instead of
after an hour. Everything the trials need that is the same for all of them
(the profile, the baseline's figures, the triage bounds, the allocations
of the rule-based samplers) is computed here once and stored on the job.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch

from core.db import repo
from core.db.models import JobStatus
from core.errors import InvalidTransition
from core.settings import Settings
from search import InfeasibleBudget, catalogue, create_study, repair
from workers.compress.structure import check as check_structure
from workers.steps import allocation, baselines, triage_report
from workers.steps.context import JobContext
from workers.steps.latency import latency_ms
from workers.steps.lifecycle import stoppable
from workers.steps.stage import accuracy, costs, fail, now, read_job, session

log = logging.getLogger(__name__)


@stoppable
def prepare(job_id: str, settings: Settings | None = None) -> None:
    """Train (or load) the baseline, profile it and open the study."""
    settings = settings or Settings()
    start = time.perf_counter()
    try:
        with session(settings) as s:
            # From ``preparing`` too: the queue re-runs a prepare whose worker died.
            repo.transition(
                s, job_id, JobStatus.preparing, allowed_from={JobStatus.queued, JobStatus.preparing}
            )
    except InvalidTransition:  # already prepared (a retried task) or cancelled
        log.warning("prepare(%s) skipped: job is not queued", job_id)
        return
    try:
        ctx = read_job(settings, job_id).context(settings)
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
            "accuracy": accuracy(ctx, model, "test"),
            "val_accuracy": accuracy(ctx, model, "val"),
            **costs(ctx, model),
            # No latency here: finalize times baseline and pruned network side by
            # side and stores that one figure (a second, earlier one disagreed).
            "profile_flops": profile.base_flops,
            "profile_params": profile.base_params,
        }
        if spec.search.objective == "latency_ratio":
            baseline["objective_latency_ms"] = latency_ms(ctx, model, ctx.space().sizes)
        needs_curves = spec.triage.enabled or catalogue.sampler(spec.search.sampler).needs_curves
        report = _triage(ctx, full=spec.triage.enabled) if needs_curves else None
        create_study(job_id, settings.optuna_url, spec.search.sampler)
        baseline["plan"] = allocation.plan(ctx, model, report)
        with session(settings) as s:
            repo.update_job(
                s,
                job_id,
                profile=profile.to_dict(),
                baseline=baseline,
                triage=report,
                timings={"prepare_s": time.perf_counter() - start, "search_started": now()},
            )
            repo.transition(s, job_id, JobStatus.searching, allowed_from={JobStatus.preparing})
    except Exception as exc:
        fail(job_id, settings, "prepare", exc)


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
