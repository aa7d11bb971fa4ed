"""Budget repair: turn any proposal into a network just under the budget.

A sampler proposes ratios freely; before anything is dispatched the proposal
is moved onto the budget using the ModelProfile alone, so no GPU time is
spent on an infeasible candidate and no budget is left unused (a network at
40% of the FLOPs when 50% are allowed is a wasted evaluation).

The repair keeps the *shape* of the proposal: it moves every ratio along one
monotone path, from the lower bound (t=0) through the proposal (t=1) to the
upper bound (t=2), bisects for the largest feasible point, and then adds
single channel steps, most under-served group first, until nothing more fits.
With ``round_to=1`` this lands within ``tolerance`` (1%) under the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.errors import InfeasibleBudget, SearchError
from search.space import SearchSpace

_BISECT_STEPS = 40


@dataclass(frozen=True)
class Budget:
    """Upper limits as fractions of the unpruned network; at least one is set."""

    flops_ratio: float | None = None
    params_ratio: float | None = None
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.flops_ratio is None and self.params_ratio is None:
            raise SearchError("a budget needs flops_ratio, params_ratio or both")
        for value in (self.flops_ratio, self.params_ratio):
            if value is not None and not 0.0 < value <= 1.0:
                raise SearchError(f"budget ratios must be in (0, 1], got {value}")


@dataclass(frozen=True)
class Repaired:
    """A budget-feasible candidate.

    Attributes:
        ratios: Effective keep ratios (kept / channels) per group.
        counts: Kept channels per group.
        flops: FLOPs (MACs) from the profile.
        params: Parameters from the profile.
        fill: Largest ``used / limit`` over the budget's limits (at most 1).
    """

    ratios: tuple[float, ...]
    counts: tuple[int, ...]
    flops: float
    params: float
    fill: float


def repair(space: SearchSpace, proposed: Sequence[float], budget: Budget) -> Repaired:
    """Move ``proposed`` onto the budget, keeping its shape (see module docstring).

    Raises:
        InfeasibleBudget: even every group at ``min_ratio`` exceeds the budget.
    """
    profile = space.profile
    limits: list[tuple[Callable[[Sequence[int]], float], float]] = []
    if budget.flops_ratio is not None:
        limits.append((profile.flops, budget.flops_ratio * profile.base_flops))
    if budget.params_ratio is not None:
        limits.append((profile.params, budget.params_ratio * profile.base_params))

    def fill(counts: Sequence[int]) -> float:
        return max(metric(counts) / limit for metric, limit in limits)

    proposal = space.clip(proposed)

    def along(t: float) -> tuple[float, ...]:
        if t <= 1.0:
            return tuple(space.min_ratio + t * (r - space.min_ratio) for r in proposal)
        return tuple(r + (t - 1.0) * (space.max_ratio - r) for r in proposal)

    lowest = space.counts(along(0.0))
    if fill(lowest) > 1.0:
        raise InfeasibleBudget(
            f"the budget is below what min_ratio={space.min_ratio} allows "
            f"({fill(lowest):.3f} of the limit at the smallest network); lower min_ratio"
        )
    lo, hi = 0.0, 2.0
    if fill(space.counts(along(hi))) <= 1.0:
        lo = hi
    else:
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            if fill(space.counts(along(mid))) <= 1.0:
                lo = mid
            else:
                hi = mid
    counts = list(space.counts(along(lo)))
    if lo < 2.0:
        top = space.counts([space.max_ratio] * space.size)
        _fill_up(space, counts, along(hi), space.counts(along(hi)), fill)  # shape first
        _fill_up(space, counts, along(hi), top, fill)  # then whatever still fits
        if fill(counts) < 1.0 - budget.tolerance:
            counts = _swap_up(space, counts, along(hi), top, fill, 1.0 - budget.tolerance)
            _fill_up(space, counts, along(hi), top, fill)
    channels = profile.channels
    return Repaired(
        ratios=tuple(n / c for n, c in zip(counts, channels, strict=True)),
        counts=tuple(counts),
        flops=profile.flops(counts),
        params=profile.params(counts),
        fill=fill(counts),
    )


def _fill_up(
    space: SearchSpace,
    counts: list[int],
    shape: Sequence[float],
    ceiling: Sequence[int],
    fill: Callable[[Sequence[int]], float],
    frozen: int | None = None,
) -> None:
    """Add channel steps in place, largest shortfall against ``shape`` first."""
    channels = space.profile.channels
    open_groups = {g for g in range(space.size) if counts[g] < ceiling[g] and g != frozen}
    while open_groups:
        g = max(open_groups, key=lambda i: (shape[i] - counts[i] / channels[i], -i))
        step = space.round_to if channels[g] > space.round_to else 1
        counts[g] += step
        if counts[g] > ceiling[g] or fill(counts) > 1.0:
            counts[g] -= step
            open_groups.discard(g)


def _swap_up(
    space: SearchSpace,
    counts: list[int],
    shape: Sequence[float],
    ceiling: Sequence[int],
    fill: Callable[[Sequence[int]], float],
    good_enough: float,
) -> list[int]:
    """Trade one coarse step of a group for finer steps elsewhere.

    Greedy filling stops when the next step of every open group is too
    expensive, which on small networks (a 16-channel residual group couples
    seven convolutions) can leave a few percent of the budget unused. Taking
    one step back in a group and refilling the others often gets closer.
    """
    best, best_fill = counts, fill(counts)
    floor = space.counts([space.min_ratio] * space.size)
    for _ in range(3):
        improved = False
        for g in range(space.size):
            step = space.round_to if space.profile.channels[g] > space.round_to else 1
            if best[g] - step < floor[g]:
                continue
            trial = list(best)
            trial[g] -= step
            _fill_up(space, trial, shape, ceiling, fill, frozen=g)
            if best_fill < fill(trial) <= 1.0:
                best, best_fill, improved = trial, fill(trial), True
        if not improved or best_fill >= good_enough:
            break
    return best
