"""Build one candidate network from the baseline, as the JobSpec says.

A candidate is a vector of kept channels per group, then a rank per
decomposable layer (``SearchSpace.split``). Turning it into a network is the
same recipe for a trial and for the final fine-tune, only the training
budget differs, so it lives here once:

1. optional *push* (discriminant regulariser) on a copy of the baseline;
2. choose the channels by the criterion: once (static masks), or
   repeatedly while fine-tuning (dynamic masks, AutoPruning), then remove
   them physically;
3. optional least-squares *reconstruction* of the layers that lost inputs;
4. optional *low-rank decomposition* of the layers whose rank is below
   break-even (ALDS operator);
5. fine-tune (optionally distilled from the baseline).

Every option is measured in ``notes`` (what it did), so a candidate row
and ``result.json`` show it rather than merely claiming it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.spec import JobSpec
from workers.compress import criteria, lowrank, prune
from workers.compress.distill import distill_loss
from workers.compress.masking import DynamicMasks
from workers.compress.profiling import channel_groups
from workers.compress.reconstruct import reconstruct
from workers.nets import train
from workers.steps.context import JobContext


@dataclass
class Built:
    """A candidate network and what building it did.

    Attributes:
        model: The physically pruned (and decomposed) network, in eval mode.
        kept: Kept original channel indices per group name (the recipe).
        lowrank: ``{layer: {"rank", "slices"}}`` of the decomposed layers.
        notes: Measured side facts: mask swaps, reconstruction errors, ...
        timings: Seconds per step (``prune_s``, ``finetune_s``, ...).
    """

    model: nn.Module
    kept: dict[str, list[int]]
    lowrank: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def needs_batches(spec: JobSpec) -> bool:
    """Whether building needs calibration batches (data criteria or reconstruction)."""
    return spec.search.criterion in criteria.DATA_CRITERIA or spec.search.reconstruct


def build(
    ctx: JobContext,
    values: list[int],
    *,
    steps: int = 0,
    epochs: float = 0.0,
    distill: bool = False,
) -> Built:
    """Prune (and decompose) the baseline to ``values`` and fine-tune it.

    Args:
        ctx: The job's context (spec, data, baseline, profile).
        values: Kept channels per group, then ranks per slot (a repaired candidate).
        steps: Fine-tune budget in steps (a trial), or
        epochs: in epochs (the final fine-tune); both 0 means no fine-tune.
        distill: Distil from the unpruned baseline while fine-tuning.
    """
    spec, s = ctx.spec, ctx.spec.search
    counts, ranks = ctx.space().split(values)
    timings: dict[str, float] = {}
    notes: dict[str, Any] = {}
    tick = time.perf_counter()
    model = ctx.baseline()
    example = ctx.example_inputs()
    batches = (
        train.calibration_batches(
            ctx.data.train, s.criterion_batches, batch_size=spec.train.batch_size, seed=spec.seed
        )
        if needs_batches(spec)
        else None
    )
    if s.push_steps:
        _, groups = channel_groups(model, example)
        with criteria.PUSHERS[s.criterion](model, groups, weight=s.push_weight) as push:
            fit(ctx, model, steps=s.push_steps, loss_fn=push.loss_fn)
        timings["push_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
    loss_fn = _distill(ctx) if distill else None
    tuned = False
    if s.masking == "dynamic" and (steps or epochs):
        _, groups = channel_groups(model, example)

        def select() -> dict[str, list[int]]:
            return criteria.select(model, groups, counts, s.criterion, batches)

        with DynamicMasks(model, groups, counts, select, every=s.mask_every) as masks:
            fit(ctx, model, steps=steps, epochs=epochs, loss_fn=loss_fn, on_step=masks.on_step)
        kept = masks.kept
        notes["mask_updates"], notes["mask_swaps"] = masks.updates, masks.swaps
        prune.apply_kept(model, kept, example)
        tuned = True
        timings["finetune_s"] = time.perf_counter() - tick
    else:
        kept = prune.prune(
            model,
            counts,
            example_inputs=example,
            criterion=s.criterion,
            batches=batches,
            fold=s.fold,
        )
        timings["prune_s"] = time.perf_counter() - tick
        if s.reconstruct:
            tick = time.perf_counter()
            assert batches is not None
            fits = reconstruct(model, ctx.baseline(), kept, batches, seed=spec.seed)
            notes["reconstruct"] = [
                {"layer": f.name, "error_before": f.error_before, "error_after": f.error_after}
                for f in fits
            ]
            timings["reconstruct_s"] = time.perf_counter() - tick
    decomposed: dict[str, dict[str, int]] = {}
    if ranks:
        tick = time.perf_counter()
        plans = lowrank.decompose(model, ranks, s.lowrank_slices)
        decomposed = {name: {"rank": r, "slices": k} for name, (r, k) in plans.items()}
        timings["decompose_s"] = time.perf_counter() - tick
    if (steps or epochs) and not tuned:
        tick = time.perf_counter()
        fit(ctx, model, steps=steps, epochs=epochs, loss_fn=loss_fn)
        timings["finetune_s"] = time.perf_counter() - tick
    model.eval()
    return Built(model, kept, decomposed, notes, timings)


def _distill(ctx: JobContext) -> train.LossFn:
    d = ctx.spec.distillation
    return distill_loss(ctx.baseline(), temperature=d.temperature, weight=d.weight)


def fit(
    ctx: JobContext,
    model: nn.Module,
    *,
    steps: int = 0,
    epochs: float = 0.0,
    loss_fn: train.LossFn | None = None,
    on_step: train.StepCallback | None = None,
) -> None:
    """The job's training recipe (``spec.train``) on its training split."""
    t = ctx.spec.train
    train.fit(
        model,
        ctx.data.train,
        epochs=epochs or None,
        steps=steps or None,
        lr=t.lr,
        weight_decay=t.weight_decay,
        batch_size=t.batch_size,
        device=ctx.device,
        seed=ctx.spec.seed,
        augment=True,
        loss_fn=loss_fn,
        on_step=on_step,
    )


def calibrate(ctx: JobContext, model: nn.Module) -> None:
    """Adaptive BN with the job's calibration settings: the proxy score's first half."""
    train.adaptive_bn(
        model,
        ctx.data.train,
        calib_batches=ctx.spec.scoring.calib_batches,
        batch_size=ctx.spec.train.batch_size,
        device=ctx.device,
        seed=ctx.spec.seed,
    )


def release() -> None:
    """Hand cached GPU memory back once a candidate's tensors are dropped (no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
