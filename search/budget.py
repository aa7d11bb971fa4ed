"""Budget repair: turn any proposal into a network just under the budget.

A sampler proposes ratios freely; before anything is dispatched the proposal
is moved onto the budget using the ModelProfile alone, so no GPU time is
spent on an infeasible candidate and no budget is left unused (a network at
40% of the FLOPs when 50% are allowed is a wasted evaluation).

The repair keeps the *shape* of the proposal: it moves every variable along
one monotone path, from its lower bound (t=0) through the proposal (t=1) to
its upper bound (t=2), bisects for the largest feasible point, and then adds
single steps (channels or ranks), most under-served variable first, until
nothing more fits. Bounds are per variable (:attr:`SearchSpace.bounds`), so a
fixed variable (``lo == hi``) never moves. With ``round_to=1`` this usually
lands within ``tolerance`` (1%) under the limit; the fill is greedy, so very
small budgets on tiny groups can end up to ~1.5% under.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.errors import InfeasibleBudget, SearchError
from search.profile import ModelProfile
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

    def fill(self, profile: ModelProfile, values: Sequence[int]) -> float:
        """Largest ``used / limit`` of ``values`` (counts, then optional ranks); <= 1 fits."""
        return max(metric(values) / limit for metric, limit in self._limits(profile))

    def _limits(
        self, profile: ModelProfile
    ) -> list[tuple[Callable[[Sequence[int]], float], float]]:
        limits: list[tuple[Callable[[Sequence[int]], float], float]] = []
        if self.flops_ratio is not None:
            limits.append((profile.flops, self.flops_ratio * profile.base_flops))
        if self.params_ratio is not None:
            limits.append((profile.params, self.params_ratio * profile.base_params))
        return limits


@dataclass(frozen=True)
class Repaired:
    """A budget-feasible candidate.

    Attributes:
        ratios: Effective keep ratios (count / unpruned size) per variable.
        counts: Kept channels per group, then (``lowrank``/``mixed``) the
            rank built per slot, canonical (:meth:`SearchSpace.canonical`).
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
        InfeasibleBudget: even every variable at its lower bound exceeds the budget.
    """
    profile = space.profile
    limits = budget._limits(profile)

    def fill(counts: Sequence[int]) -> float:
        return max(metric(counts) / limit for metric, limit in limits)

    proposal = space.clip(proposed)
    bounds = space.bounds

    def along(t: float) -> tuple[float, ...]:
        if t <= 1.0:
            return tuple(lo + t * (r - lo) for r, (lo, _) in zip(proposal, bounds, strict=True))
        return tuple(r + (t - 1.0) * (hi - r) for r, (_, hi) in zip(proposal, bounds, strict=True))

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
        top = space.counts([hi for _, hi in bounds])
        _fill_up(space, counts, along(hi), space.counts(along(hi)), fill)  # shape first
        _fill_up(space, counts, along(hi), top, fill)  # then whatever still fits
        if fill(counts) < 1.0 - budget.tolerance:
            counts = _swap_up(space, counts, along(hi), top, fill, 1.0 - budget.tolerance)
            _fill_up(space, counts, along(hi), top, fill)
    counts = list(space.canonical(counts))
    return Repaired(
        ratios=tuple(n / c for n, c in zip(counts, space.sizes, strict=True)),
        counts=tuple(counts),
        flops=profile.flops(counts),
        params=profile.params(counts),
        fill=fill(counts),
    )


def unrepaired(space: SearchSpace, proposed: Sequence[float], budget: Budget) -> Repaired:
    """The proposal as it stands (clipped, rounded), possibly over the budget.

    For ``search.repair: false``: the sampler then learns the budget from the
    FLOPs-aware objective (``fill`` > 1 is penalised) instead of having every
    proposal moved onto it, as in AutoPruning.
    """
    counts = space.canonical(space.counts(space.clip(proposed)))
    return Repaired(
        ratios=tuple(n / c for n, c in zip(counts, space.sizes, strict=True)),
        counts=counts,
        flops=space.profile.flops(counts),
        params=space.profile.params(counts),
        fill=budget.fill(space.profile, counts),
    )


def cap(space: SearchSpace, proposed: Sequence[float], budget: Budget) -> Repaired:
    """The proposal as it stands when it fits, else repaired onto the budget.

    For multi-objective searches (``nsga2``): cost is an objective there, so
    a proposal under the budget is a point of the front and must not be
    grown onto the limit; only infeasible proposals move.
    """
    fixed = unrepaired(space, proposed, budget)
    return fixed if fixed.fill <= 1.0 else repair(space, proposed, budget)


def _fill_up(
    space: SearchSpace,
    counts: list[int],
    shape: Sequence[float],
    ceiling: Sequence[int],
    fill: Callable[[Sequence[int]], float],
    frozen: int | None = None,
) -> None:
    """Add steps in place, largest shortfall against ``shape`` first."""
    sizes = space.sizes
    open_groups = {g for g in range(space.size) if counts[g] < ceiling[g] and g != frozen}
    while open_groups:
        g = max(open_groups, key=lambda i: (shape[i] - counts[i] / sizes[i], -i))
        step = space.step(g)
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
    floor = space.counts([lo for lo, _ in space.bounds])
    for _ in range(3):
        improved = False
        for g in space.searched:
            step = space.step(g)
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
