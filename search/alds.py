"""ALDS rank allocation (Liebenwein et al. 2021, arXiv:2107.11442) and its uniform baseline.

Given every decomposable layer's relative error at every rank (from its
singular values, Eckart-Young-Mirsky), ALDS chooses the ranks that minimise
the *largest* relative error over the layers while meeting the budget. For
a threshold ``eps`` each layer takes the smallest rank whose error is at most
``eps``; a lower threshold costs more, so a binary search over the finitely
many error values finds the lowest threshold that still fits. The layers'
slice counts ``k`` are taken from the profile rather than searched.

The uniform baseline gives every layer the same fraction of its full rank,
bisected to the budget. Both return a full ratio vector of the space (the
channel groups at their upper bound, 1.0 unless narrowed), ready for
:meth:`SearchSpace.counts`, a seed for the search, or a candidate itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search.budget import Budget
from search.errors import InfeasibleBudget, SearchError
from search.space import SearchSpace

_BISECT_STEPS = 40


def alds_allocate(
    space: SearchSpace, errors: Sequence[Sequence[float]], budget: Budget
) -> tuple[float, ...]:
    """Ranks with the smallest maximum relative error that fit ``budget``.

    Args:
        space: A ``lowrank`` or ``mixed`` space; its rank bounds are respected.
        errors: ``errors[j][r - 1]``: relative error of slot ``j`` at rank ``r``,
            one entry per rank up to the slot's full rank.
        budget: FLOPs and/or parameter limits.

    Returns:
        The ratio vector over all variables of ``space``.

    Raises:
        SearchError: The space has no rank variables or ``errors`` does not fit it.
        InfeasibleBudget: Even the lowest ranks allowed exceed the budget.
    """
    tables = _tables(space, errors)
    floor, ceiling = _rank_limits(space)
    channels = _channels(space)

    def ranks_at(eps: float) -> list[int]:
        ranks = []
        for table, lo, hi in zip(tables, floor, ceiling, strict=True):
            fits = np.flatnonzero(table <= eps)
            rank = int(fits[0]) + 1 if fits.size else len(table)
            ranks.append(min(hi, max(lo, rank)))
        return ranks

    def fits(eps: float) -> bool:
        return budget.fill(space.profile, channels + ranks_at(eps)) <= 1.0

    thresholds = np.unique(np.concatenate([np.zeros(1), *tables]))
    if not fits(float(thresholds[-1])):
        raise InfeasibleBudget(
            f"the budget is below what min_ratio={space.min_ratio} allows for the ranks; "
            "lower min_ratio"
        )
    # Cost falls as the threshold rises: find the first (lowest) threshold that fits.
    lo, hi = 0, len(thresholds) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(float(thresholds[mid])):
            hi = mid
        else:
            lo = mid + 1
    return _ratios(space, ranks_at(float(thresholds[lo])))


def uniform_rank(space: SearchSpace, budget: Budget) -> tuple[float, ...]:
    """One rank ratio for every slot, the largest that fits ``budget`` (the baseline).

    Raises:
        SearchError: The space has no rank variables.
        InfeasibleBudget: Even the lowest rank ratio exceeds the budget.
    """
    _check_space(space)
    offset = space.rank_offset
    bounds = space.bounds

    def ratios_at(rho: float) -> tuple[float, ...]:
        return tuple(
            hi if i < offset else min(hi, max(lo, rho)) for i, (lo, hi) in enumerate(bounds)
        )

    def fits(rho: float) -> bool:
        return budget.fill(space.profile, space.counts(ratios_at(rho))) <= 1.0

    low, high = min(lo for lo, _ in bounds[offset:]), 1.0
    if fits(high):
        return ratios_at(high)
    if not fits(low):
        raise InfeasibleBudget(
            f"the budget is below what min_ratio={space.min_ratio} allows for the ranks; "
            "lower min_ratio"
        )
    for _ in range(_BISECT_STEPS):
        mid = (low + high) / 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return ratios_at(low)


def max_error(
    space: SearchSpace, errors: Sequence[Sequence[float]], ratios: Sequence[float]
) -> float:
    """Largest relative error over the layers ``ratios`` actually decomposes (0 if none)."""
    tables = _tables(space, errors)
    plans = space.profile.decomposition(space.counts(ratios))
    worst = 0.0
    for slot, table in zip(space.profile.ranks, tables, strict=True):
        if slot.name in plans:
            worst = max(worst, float(table[plans[slot.name][0] - 1]))
    return worst


def _check_space(space: SearchSpace) -> None:
    if space.size == space.rank_offset:  # nothing to decompose
        raise SearchError("rank allocation needs a 'lowrank' or 'mixed' space")


def _tables(space: SearchSpace, errors: Sequence[Sequence[float]]) -> list[np.ndarray]:
    _check_space(space)
    slots = space.profile.ranks
    if len(errors) != len(slots):
        raise SearchError(f"expected errors for {len(slots)} rank slots, got {len(errors)}")
    tables = [np.asarray(e, dtype=np.float64) for e in errors]
    for slot, table in zip(slots, tables, strict=True):
        if table.shape != (slot.full_rank,) or not np.all(np.isfinite(table)):
            raise SearchError(
                f"slot {slot.name}: expected {slot.full_rank} finite errors, got {table.shape}"
            )
    return tables


def _rank_limits(space: SearchSpace) -> tuple[list[int], list[int]]:
    offset = space.rank_offset
    floor = space.counts([lo for lo, _ in space.bounds])[offset:]
    ceiling = space.counts([hi for _, hi in space.bounds])[offset:]
    return list(floor), list(ceiling)


def _channels(space: SearchSpace) -> list[int]:
    return list(space.counts([hi for _, hi in space.bounds])[: space.rank_offset])


def _ratios(space: SearchSpace, ranks: Sequence[int]) -> tuple[float, ...]:
    offset = space.rank_offset
    groups = tuple(hi for _, hi in space.bounds[:offset])
    return groups + tuple(r / s for r, s in zip(ranks, space.sizes[offset:], strict=True))
