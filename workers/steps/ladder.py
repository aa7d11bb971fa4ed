"""The multi-fidelity ladder: which candidate earns the final fine-tune.

Rung 1 is the search itself: every candidate gets the cheap score (adaptive
BN, or the short trial fine-tune). Rung 2 gives the ``promote_top_k`` best a
short fine-tune (``promote_steps``) and ranks them again by validation
accuracy: the cheap score ranks candidates only roughly (the Spearman
figures in docs/benchmarks.md), and a few hundred steps separate the ones
that recover from the ones that merely calibrate well. Rung 3 is the final
fine-tune of the winner, in ``finalize``. Each promotion is recorded on the
candidate (``rungs``) and in ``result.json`` with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.db.models import Candidate, CandidateStatus
from search import Point, catalogue, pareto_front
from workers.nets import train
from workers.steps import candidate
from workers.steps.context import JobContext


@dataclass(frozen=True)
class Decision:
    """The winner of the ladder and the record of how it was reached."""

    winner: Candidate
    record: dict[str, Any]
    rungs: dict[int, dict[str, Any]]  # candidate id -> its rung-2 record


def pool(ctx: JobContext, scored: Sequence[Candidate]) -> tuple[list[Candidate], str]:
    """Candidates that may win, best search score first, and why these.

    Only complete candidates within the budget qualify (``repair: false``
    lets over-budget ones into the search). For a two-objective sampler (``nsga2``) only the Pareto
    front of accuracy against the job's objective qualifies: a dominated
    candidate is never the best trade-off.
    """
    budget, profile = ctx.budget(), ctx.space().profile
    fits = [
        c
        for c in scored
        if c.status == CandidateStatus.complete
        and c.score is not None
        and budget.fill(profile, c.counts) <= 1.0
    ]
    why = "complete candidates within the budget"
    if catalogue.sampler(ctx.spec.search.sampler).objectives == 2:
        front = {p.id for p in pareto_front(points(fits, ctx.spec.search.objective))}
        fits = [c for c in fits if c.id in front]
        why = f"the Pareto front (accuracy vs {ctx.spec.search.objective}) within the budget"
    return sorted(fits, key=lambda c: (-(c.score or 0.0), c.trial_number)), why


def points(candidates: Sequence[Candidate], objective: str) -> list[Point]:
    """Pareto points (accuracy, objective) of the candidates that have both."""
    return [
        Point(c.id, c.accuracy, float((c.objectives or {})[objective]))
        for c in candidates
        if c.accuracy is not None and (c.objectives or {}).get(objective) is not None
    ]


def climb(ctx: JobContext, ranked: Sequence[Candidate], why: str) -> Decision:
    """Promote the top ``promote_top_k`` of ``ranked`` to a short fine-tune; pick the best."""
    scoring = ctx.spec.scoring
    k = min(scoring.promote_top_k, len(ranked))
    record: dict[str, Any] = {
        "rung1": {"candidates": len(ranked), "pool": why, "score": scoring.mode},
    }
    if k <= 1:
        reason = "best search score" + (" (ladder off)" if k == 0 else " (only one candidate)")
        record["winner"] = {"candidate_id": ranked[0].id, "why": reason}
        return Decision(ranked[0], record, {})
    rungs: dict[int, dict[str, Any]] = {}
    for rank, cand in enumerate(ranked[:k]):
        tick = time.perf_counter()
        built = candidate.build(
            ctx, cand.counts, steps=scoring.promote_steps, distill=scoring.distill
        )
        accuracy = train.evaluate(built.model, ctx.data.val, batch_size=512, device=ctx.device)
        del built
        candidate.release()
        rungs[cand.id] = {
            "short_finetune": {
                "val_accuracy": accuracy,
                "steps": scoring.promote_steps,
                "seconds": time.perf_counter() - tick,
                "search_rank": rank + 1,
                "why": f"top {k} by search score ({cand.score:.4f})",
            }
        }
    winner = max(
        ranked[:k],
        key=lambda c: (rungs[c.id]["short_finetune"]["val_accuracy"], -c.trial_number),
    )
    record["rung2"] = {
        "promoted": [
            {"candidate_id": c.id, "search_score": c.score, **rungs[c.id]["short_finetune"]}
            for c in ranked[:k]
        ],
        "steps": scoring.promote_steps,
    }
    record["winner"] = {
        "candidate_id": winner.id,
        "why": f"best short fine-tune accuracy of the {k} promoted "
        f"(search rank {rungs[winner.id]['short_finetune']['search_rank']})",
    }
    return Decision(winner, record, rungs)
