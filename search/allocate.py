"""One-shot allocations: the per-group ratios of the two rule-based baselines.

Both take numbers the workers measured (channel importances, sensitivity
curves) and the ModelProfile, and return a ratio vector over the channel
groups; the trial then repairs it onto the budget like any proposal. They
are plain arithmetic, so the samplers that replay them (``tp_global``,
``sensitivity``) stay pure.

* :func:`global_ranking` is Torch-Pruning's global pruning: every channel of
  every group is ranked by its importance divided by its group's mean
  importance, and the least important channels go first, wherever they are,
  until the budget fits.
* :func:`greedy_sensitivity` walks the sensitivity curves: repeatedly lower
  the group whose next tested ratio loses the least accuracy per FLOP saved.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from itertools import pairwise

from search.budget import Budget
from search.errors import SearchError
from search.space import SearchSpace

Curve = Sequence[tuple[float, float]]  # (ratio, proxy accuracy)


def global_ranking(
    space: SearchSpace, budget: Budget, scores: Sequence[Sequence[float]]
) -> tuple[float, ...]:
    """Ratios after removing globally least important channels until the budget fits.

    Args:
        space: The job's space; only its channel groups move (ranks stay whole).
        budget: Limit to meet.
        scores: Per channel group, the importance of each of its channels
            (any scale: each group is normalised by its mean, as
            Torch-Pruning's ``normalizer="mean"`` does).
    """
    groups = space.profile.groups
    if len(scores) != len(groups):
        raise SearchError(f"expected importances for {len(groups)} groups, got {len(scores)}")
    counts = list(space.counts([hi for _, hi in space.bounds]))
    floor = space.counts([lo for lo, _ in space.bounds])
    ordered: list[list[float]] = []
    for g, values in enumerate(scores):
        if len(values) != groups[g].channels:
            raise SearchError(f"group {groups[g].name}: {len(values)} importances, not channels")
        mean = sum(values) / len(values) or 1.0
        ordered.append(sorted(v / mean for v in values))
    removed = [groups[g].channels - counts[g] for g in range(len(groups))]
    heap = [(ordered[g][removed[g]], g) for g in range(len(groups)) if counts[g] > floor[g]]
    heapq.heapify(heap)
    while heap and budget.fill(space.profile, counts) > 1.0:
        _, g = heapq.heappop(heap)
        step = space.step(g)
        if counts[g] - step < floor[g]:
            continue
        counts[g] -= step
        removed[g] += step
        if counts[g] - step >= floor[g]:
            heapq.heappush(heap, (ordered[g][removed[g]], g))
    return tuple(n / size for n, size in zip(counts, space.sizes, strict=True))


def greedy_sensitivity(
    space: SearchSpace, budget: Budget, curves: Sequence[Curve], reference: float
) -> tuple[float, ...]:
    """Greedy descent along the sensitivity curves until the budget fits.

    Each group starts at its upper bound and may step down to any tested
    ratio of its curve within its bounds; the next move is the one with the
    smallest accuracy loss per FLOP (or parameter) saved. Losses are read by
    linear interpolation, with the unpruned group at ``reference``. Stops
    when the budget fits or no group can move; the repair does the rest.
    """
    groups = space.profile.groups
    if len(curves) != len(groups):
        raise SearchError(f"expected curves for {len(groups)} groups, got {len(curves)}")
    bounds = space.bounds
    ratios = [hi for _, hi in bounds]
    points = [sorted([(1.0, reference), *[(float(r), float(a)) for r, a in c]]) for c in curves]

    def fill(values: Sequence[float]) -> float:
        return budget.fill(space.profile, space.counts(values))

    while fill(ratios) > 1.0:
        best: tuple[float, int, float] | None = None
        now = fill(ratios)
        for g in space.searched:
            if g >= len(groups):
                continue
            lower = [r for r, _ in points[g] if bounds[g][0] <= r < ratios[g]]
            if not lower:
                continue
            target = max(lower)
            trial = list(ratios)
            trial[g] = target
            saved = now - fill(trial)
            if saved <= 0.0:
                continue
            loss = max(0.0, _at(points[g], ratios[g]) - _at(points[g], target))
            cost = (loss + 1e-6) / saved
            if best is None or cost < best[0]:
                best = (cost, g, target)
        if best is None:
            break
        ratios[best[1]] = best[2]
    return tuple(ratios)


def _at(points: Sequence[tuple[float, float]], ratio: float) -> float:
    """Accuracy at ``ratio`` by linear interpolation between tested points."""
    for (r0, a0), (r1, a1) in pairwise(points):
        if r0 <= ratio <= r1:
            return a0 if r1 == r0 else a0 + (a1 - a0) * (ratio - r0) / (r1 - r0)
    return points[0][1] if ratio < points[0][0] else points[-1][1]
