"""The ``finalize`` stage: choose, fine-tune, measure and export the job's network.

It runs once, after every trial (RQ holds it until the trials are done).
It ranks what the search found and climbs the ladder (``workers.steps.ladder``)
to choose the winner, fine-tunes that one fully, exports it, and measures the
exported files, so the figures in ``result.json`` are those of what the user
downloads. The baseline's latency is measured again here, side by side with
the winner's, because two timings taken at different moments disagree.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from core.db import repo
from core.db.models import Candidate, CandidateStatus, JobStatus
from core.errors import InvalidTransition
from core.settings import Settings
from core.spec import JobSpec
from search import pareto_front
from workers import export
from workers.nets import measure
from workers.steps import candidate, ladder
from workers.steps.context import JobContext, forget
from workers.steps.lifecycle import stoppable
from workers.steps.stage import JobRow, accuracy, costs, fail, now, search_elapsed, session

log = logging.getLogger(__name__)


@stoppable
def finalize(job_id: str, settings: Settings | None = None) -> None:
    """Fine-tune the best candidate, measure it, export it, mark the job done."""
    settings = settings or Settings()
    start, started_at = time.perf_counter(), now()
    try:
        with session(settings) as s:
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
        _finalize(job_id, settings, start, started_at)
    except Exception as exc:
        fail(job_id, settings, "finalize", exc)
    finally:
        forget(job_id)


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


def _front(scored: Sequence[Candidate], objective: str) -> list[Candidate]:
    """Candidates on the Pareto front of validation accuracy against ``objective``."""
    complete = [c for c in scored if c.status == CandidateStatus.complete]
    by_id = {c.id: c for c in complete}
    return [by_id[p.id] for p in pareto_front(ladder.points(complete, objective))]


def _stopped_early(spec: JobSpec, search_s: float, scored: Sequence[Candidate]) -> str | None:
    """Why the search ended before its last trial, or None when every trial ran."""
    limit = spec.limits.search_s
    ran = sum(1 for c in scored if c.status != CandidateStatus.lost)
    if limit is None or search_s <= limit or ran >= spec.search.n_trials:
        return None
    return f"limits.search_s: {ran} of {spec.search.n_trials} trials ran in {limit:g} s"


def _finalize(job_id: str, settings: Settings, start: float, started_at: str) -> None:
    """The phases add up: ``search_s`` ends where ``finalize`` starts (``finalize_started``),
    and ``ladder_s`` is part of ``finalize_s``, never of ``search_s``."""
    with session(settings) as s:  # the job and its candidates, read together once
        row = JobRow.of(repo.get_job(s, job_id))
        scored = repo.list_candidates(s, job_id, limit=100_000, offset=0)
    ctx = row.context(settings)
    baseline, timings = dict(row.baseline), dict(row.timings)
    timings["finalize_started"] = started_at
    timings["search_s"] = search_elapsed(timings, until=started_at)
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
    with session(settings) as s:
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
        "accuracy": accuracy(ctx, exported, "test"),
        "val_accuracy": accuracy(ctx, exported, "val"),
        **costs(ctx, exported),
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
    with session(settings) as s:
        repo.update_job(s, job_id, result=result, timings=timings, baseline=baseline)
        repo.transition(s, job_id, JobStatus.done, allowed_from={JobStatus.finalizing})
    del model, exported, built
    candidate.release()
