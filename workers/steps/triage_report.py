"""A job's triage report: run :mod:`workers.compress.triage` with the job's data and recipe.

:mod:`workers.compress.triage` decides what to measure and takes the scoring and the
fine-tuning as arguments; this module supplies the job's own (adaptive BN on
the job's calibration batches, then validation accuracy; its training
recipe; distillation from its baseline) and turns the curves into the
search-space bounds and the seed trials (:mod:`search.triage`). The report
is plain JSON: it is stored on the job row, served by the API and written
next to the local output.
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from search import triage as narrowing
from workers.compress.criteria import DATA_CRITERIA
from workers.compress.distill import distill_loss
from workers.compress.triage import (
    Finetune,
    block_criticality,
    blocks,
    sensitivity_curves,
    triage_findings,
)
from workers.nets import train
from workers.steps.candidate import calibrate, fit
from workers.steps.context import JobContext

CHECKPOINTS = 4  # accuracy checkpoints per block fine-tune (convergence, then the end)


def run(ctx: JobContext, *, full: bool = True) -> dict[str, Any]:
    """Sensitivity curves, block criticality, the findings, and the narrowed bounds.

    With ``full=False`` only the curves (and the allocations read from them)
    are computed: what the ``genetic`` and ``sensitivity`` samplers need when
    the spec did not ask for a triage; blocks and narrowing are skipped.

    Returns:
        ``{reference, curves, blocks, findings, bounds, reasons, seeds, timings}``;
        ``bounds`` is None unless the spec narrows the space, ``seeds`` are
        ratio vectors over the channel groups.
    """
    spec, t = ctx.spec, ctx.spec.triage
    timings: dict[str, float] = {}

    def score(model: nn.Module) -> float:
        calibrate(ctx, model)
        return train.evaluate(model, ctx.data.val, batch_size=512, device=ctx.device)

    tick = time.perf_counter()
    reference = score(ctx.baseline())
    curves = sensitivity_curves(
        ctx.baseline,
        ctx.example_inputs(),
        score,
        ratios=t.ratios,
        # The job's criterion where it needs no data; l1 for the data criteria,
        # which would otherwise be paid once per point (12 groups x 9 ratios).
        criterion="l1" if spec.search.criterion in DATA_CRITERIA else spec.search.criterion,
        round_to=spec.search.round_to,
    )
    timings["curves_s"] = time.perf_counter() - tick

    reports: list[dict[str, Any]] = []
    findings: dict[str, Any] | None = None
    if full and t.blocks and blocks(ctx.baseline()):
        tick = time.perf_counter()
        found = block_criticality(
            ctx.baseline,
            score,
            _finetune(ctx),
            steps=t.block_steps,
            teacher_factory=ctx.baseline,
            seed=spec.seed,
        )
        parent = train.evaluate(ctx.baseline(), ctx.data.val, batch_size=512, device=ctx.device)
        findings = triage_findings(parent, found)
        reports = [r.to_dict() for r in found]
        timings["blocks_s"] = time.perf_counter() - tick

    assert ctx.profile is not None
    names = [g.name for g in ctx.profile.groups]
    narrowed = narrowing.narrow(
        names, curves, reference, tolerance=t.tolerance, min_ratio=spec.search.min_ratio
    )
    seeds = narrowing.seed_vectors(
        names, curves, reference, tolerance=t.tolerance, count=t.seed_trials
    )
    return {
        "reference": reference,
        "ratios": [r for r, _ in next(iter(curves.values()), [])],
        "curves": {name: [[r, a] for r, a in curve] for name, curve in curves.items()},
        "blocks": reports,
        "findings": findings,
        "bounds": [list(b) for b in narrowed.bounds] if full and t.narrow else None,
        "reasons": narrowed.reasons,
        "seeds": [list(s) for s in seeds],
        "timings": timings,
    }


def _finetune(ctx: JobContext) -> Finetune:
    """The block fine-tune: the job's recipe, validation accuracy at a few checkpoints.

    One run with checkpoints rather than one run per segment: segments would
    restart the warm-up and cosine schedule each time.
    """
    d = ctx.spec.distillation

    def finetune(model: nn.Module, n: int, teacher: nn.Module | None) -> list[tuple[int, float]]:
        marks = {max(1, round(n * (i + 1) / CHECKPOINTS)) for i in range(CHECKPOINTS)}
        points: list[tuple[int, float]] = []

        def on_step(step: int, _loss: float) -> None:
            if step in marks and step < n:
                points.append((step, _val(ctx, model)))

        loss_fn = None
        if teacher is not None:
            loss_fn = distill_loss(teacher, temperature=d.temperature, weight=d.weight)
        fit(ctx, model, steps=n, loss_fn=loss_fn, on_step=on_step)
        return [*points, (n, _val(ctx, model))]

    return finetune


def _val(ctx: JobContext, model: nn.Module) -> float:
    return train.evaluate(model, ctx.data.val, batch_size=512, device=ctx.device, limit=4)
