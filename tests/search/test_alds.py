"""ALDS rank allocation against the uniform-rank baseline on crafted spectra."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from search.alds import alds_allocate, max_error, uniform_rank
from search.budget import Budget
from search.errors import InfeasibleBudget, SearchError
from search.profile import Group, ModelProfile, RankSlot, Term
from search.space import SearchSpace

RANK = 16


def _two_layers() -> ModelProfile:
    """Two identical 3x3 convs 16->16 on 8x8 maps between fixed-width layers."""
    per_layer = 9 * 16 * 16 * 64
    slots = tuple(
        RankSlot(name, 16, 16, RANK, kernel=9, positions=64) for name in ("flat", "steep")
    )
    return ModelProfile(
        arch="two",
        input_shape=(16, 8, 8),
        num_classes=10,
        groups=(Group("g", 8),),
        flops_terms=(Term(2.0 * per_layer), Term(100.0, (0,))),
        params_terms=(Term(2.0 * 9 * 16 * 16), Term(10.0, (0,))),
        ranks=slots,
    )


def _errors(spectrum: np.ndarray) -> list[float]:
    energy = spectrum**2
    tail = energy[::-1].cumsum()[::-1]
    return [math.sqrt(t / energy.sum()) for t in [*tail[1:], 0.0]]


def _worst(profile: ModelProfile, errors: list[list[float]], values: tuple[int, ...]) -> float:
    """Largest error over the decomposed layers (a layer left whole has none)."""
    plans = profile.decomposition(values)
    return max(
        (errors[j][plans[s.name][0] - 1] for j, s in enumerate(profile.ranks) if s.name in plans),
        default=0.0,
    )


FLAT = _errors(np.ones(RANK))
STEEP = _errors(0.5 ** np.arange(RANK))


def test_alds_gives_the_steep_spectrum_fewer_ranks_and_a_lower_max_error() -> None:
    profile = _two_layers()
    space = SearchSpace(profile, min_ratio=0.05, operator="lowrank")
    errors = [FLAT, STEEP]
    budget = Budget(flops_ratio=0.5)
    alds = alds_allocate(space, errors, budget)
    uniform = uniform_rank(space, budget)
    limit = 0.5 * profile.base_flops
    a, u = space.counts(alds), space.counts(uniform)
    assert profile.flops(a) <= limit and profile.flops(u) <= limit
    assert a[0] == u[0] == 8  # the channel group stays whole
    assert a[2] < a[1] and u[1] == u[2]
    assert max_error(space, errors, alds) < max_error(space, errors, uniform) - 0.1
    # Same FLOPs within one rank step of one layer.
    assert abs(profile.flops(a) - profile.flops(u)) <= 64 * (9 * 16 + 16)


def test_alds_minimises_the_maximum_error() -> None:
    profile = _two_layers()
    space = SearchSpace(profile, min_ratio=0.05, operator="lowrank")
    errors = [FLAT, _errors(np.linspace(3.0, 0.1, RANK))]
    for target in (0.2, 0.35, 0.5, 0.7):
        budget = Budget(flops_ratio=target)
        best = min(
            _worst(profile, errors, (8, r0, r1))
            for r0, r1 in itertools.product(range(1, RANK + 1), repeat=2)
            if budget.fill(profile, (8, r0, r1)) <= 1.0
        )
        found = alds_allocate(space, errors, budget)
        assert budget.fill(profile, space.counts(found)) <= 1.0
        assert max_error(space, errors, found) == pytest.approx(best)


def test_generous_budgets_leave_layers_whole() -> None:
    profile = _two_layers()
    space = SearchSpace(profile, operator="lowrank")
    full = (1.0, 1.0, 1.0)
    assert uniform_rank(space, Budget(flops_ratio=1.0)) == full
    assert space.counts(alds_allocate(space, [FLAT, STEEP], Budget(flops_ratio=1.0))) == (
        8,
        RANK,
        RANK,
    )


def test_refusals() -> None:
    profile = _two_layers()
    space = SearchSpace(profile, min_ratio=0.5, operator="lowrank")
    with pytest.raises(InfeasibleBudget):
        alds_allocate(space, [FLAT, STEEP], Budget(flops_ratio=0.1))
    with pytest.raises(InfeasibleBudget):
        uniform_rank(space, Budget(flops_ratio=0.1))
    with pytest.raises(SearchError, match="rank slots"):
        alds_allocate(space, [FLAT], Budget(flops_ratio=0.5))
    with pytest.raises(SearchError, match="16 finite"):
        alds_allocate(space, [FLAT, STEEP[:3]], Budget(flops_ratio=0.5))
    with pytest.raises(SearchError, match="lowrank"):
        uniform_rank(SearchSpace(profile), Budget(flops_ratio=0.5))
