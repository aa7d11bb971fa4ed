"""What ``prepare`` hands the sampler before the first trial.

Each sampler starts from something different, and all of it is computed
here, once, from the trained baseline, by the sampler's catalogue
capabilities (:mod:`search.catalogue`):

* an *allocator* replays one allocation, computed by its entry in
  :data:`ALLOCATORS` and stored on the study: ``tp_global`` is Torch-Pruning's
  own group importance (``GroupMagnitudeImportance`` with its default mean
  normaliser) of every channel, ranked globally by :func:`search.global_ranking`;
  ``sensitivity`` is the greedy walk down the sensitivity curves
  (:func:`search.greedy_sensitivity`).
* a *seeded* sampler (``genetic``): the same greedy allocation plus the
  triage's equal-drop allocations seed its first generation, and are its
  first trials.
* every other sampler: the ALDS allocation (operators that decompose) and
  the triage allocations (``triage: true``) are its first trials.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from search import (
    alds_allocate,
    catalogue,
    enqueue_trials,
    global_ranking,
    greedy_sensitivity,
    set_allocation,
    set_seeds,
)
from workers.compress import lowrank
from workers.compress.profiling import channel_groups
from workers.steps.context import JobContext

Ratios = tuple[float, ...]
# An allocator's rule: (job, trained baseline, greedy walk or None) -> ratio vector.
Allocator = Callable[[JobContext, nn.Module, Ratios | None], Ratios]


def tp_importance(model: nn.Module, example: torch.Tensor) -> list[list[float]]:
    """Torch-Pruning's group importance of every channel, per group in profile order.

    A group cut in parts by grouped convolutions gets one score per position
    (averaged over its parts, as torch-pruning does), like its profile variable.
    """
    importance = tp.importance.GroupMagnitudeImportance(p=2, normalizer="mean")
    _, groups = channel_groups(model, example)
    return [[float(v) for v in g.per_unit(importance(g.group))] for g in groups]


def plan(ctx: JobContext, model: nn.Module, report: dict[str, Any] | None) -> dict[str, Any]:
    """Store the sampler's allocation or seeds and enqueue the first trials.

    Returns:
        What was planned, for the job's record: ``{"allocation": [...]}``
        and/or ``{"seeds": [[...], ...]}`` (full ratio vectors).
    """
    spec, url = ctx.spec, ctx.settings.optuna_url
    sampler, how = catalogue.sampler(spec.search.sampler), spec.search.granularity
    space, budget = ctx.space(), ctx.budget()
    planned: dict[str, Any] = {}
    greedy = None
    if report is not None and sampler.needs_curves:
        curves = [report["curves"].get(g.name, []) for g in space.profile.groups]
        greedy = greedy_sensitivity(space, budget, curves, report["reference"])
    if sampler.allocator:
        planned["allocation"] = list(ALLOCATORS[spec.search.sampler](ctx, model, greedy))
        set_allocation(ctx.job_id, url, space, planned["allocation"], how)
        return planned
    seeds = _seeds(ctx, model, report)
    if greedy is not None:
        seeds.insert(0, greedy)
    if sampler.seeded and seeds:
        set_seeds(ctx.job_id, url, space, seeds, how)
    if seeds and not sampler.one_ratio:
        enqueue_trials(ctx.job_id, url, space, seeds, how)
        planned["seeds"] = [list(v) for v in seeds]
    return planned


def _seeds(
    ctx: JobContext, model: nn.Module, report: dict[str, Any] | None
) -> list[tuple[float, ...]]:
    """First trials: the ALDS allocation (low-rank operators) and the triage allocations.

    Seeds are full ratio vectors (every group, then every rank slot); the
    trial repairs them to the budget like any proposal.
    """
    space, seeds = ctx.space(), []
    ranks = (1.0,) * (space.size - len(space.profile.groups))
    operator = catalogue.operator(ctx.spec.search.operator)
    if operator.decomposes:
        errors = lowrank.error_table(model.cpu(), space.profile)
        seeds.append(alds_allocate(space, errors, ctx.budget()))
        model.to(ctx.device)
    if report is not None and operator.prunes:
        seeds += [tuple(v) + ranks for v in report["seeds"]]
    return seeds


def _global(ctx: JobContext, model: nn.Module, greedy: Ratios | None) -> Ratios:
    model.eval()
    scores = tp_importance(model, ctx.example_inputs())
    return global_ranking(ctx.space(), ctx.budget(), scores)


def _greedy(ctx: JobContext, model: nn.Module, greedy: Ratios | None) -> Ratios:
    assert greedy is not None, "prepare computes the curves for this sampler"
    return greedy


# The catalogue's allocators by name (tests/test_catalogue.py keeps them equal).
ALLOCATORS: Mapping[str, Allocator] = MappingProxyType(
    {"tp_global": _global, "sensitivity": _greedy}
)
