"""The one-shot allocations (search/allocate.py) and the space/budget pieces they rely on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from search.allocate import global_ranking, greedy_sensitivity
from search.budget import Budget, cap, repair, unrepaired
from search.errors import SearchError
from search.profile import ModelProfile, RankSlot, kept_channels
from search.space import GRANULARITIES, SearchSpace

FLAT = [(0.25, 0.9), (0.5, 0.9), (0.75, 0.9)]
STEEP = [(0.25, 0.2), (0.5, 0.5), (0.75, 0.8)]


def fill(space: SearchSpace, budget: Budget, ratios: Sequence[float]) -> float:
    return budget.fill(space.profile, space.counts(ratios))


def staged(profile: ModelProfile, stages: Sequence[int] = (0, 0, 1, 1)) -> ModelProfile:
    """The chain profile with its groups spread over resolution stages."""
    groups = tuple(replace(g, stage=s) for g, s in zip(profile.groups, stages, strict=True))
    return replace(profile, groups=groups)


def even_scores(profile: ModelProfile, rng: np.random.Generator) -> list[list[float]]:
    """Importances close to their group mean (normalised ~1), at very different scales."""
    scales = [1e-3, 1.0, 1.0, 1e3]
    return [
        (scale * rng.uniform(0.9, 1.1, size=g.channels)).tolist()
        for g, scale in zip(profile.groups, scales, strict=True)
    ]


# -- global_ranking -----------------------------------------------------------------------------


def test_global_ranking_removes_the_least_important_channels_first(
    profile: ModelProfile,
) -> None:
    """Half of group 2 is nearly useless: those channels go first, nothing else moves.

    Group 0's importances are 1000x smaller and group 3's 1000x larger than
    the rest, but each group is normalised by its own mean, so raw scale
    must not decide (ranking raw values would strip group 0 first).
    """
    space = SearchSpace(profile, min_ratio=0.1)
    scores = even_scores(profile, np.random.default_rng(0))
    scores[2] = [0.01] * 32 + [1.0] * 32
    budget = Budget(flops_ratio=0.8)
    ratios = global_ranking(space, budget, scores)
    counts = space.counts(ratios)
    # Group 2 loses exactly as many channels as the budget needs, within its useless half.
    expected = max(n for n in range(32, 65) if budget.fill(profile, (16, 32, n, 64)) <= 1.0)
    assert counts == (16, 32, expected, 64)
    assert 32 < expected < 64
    assert fill(space, budget, ratios) <= 1.0


@pytest.mark.parametrize("target", [0.3, 0.5, 0.75])
def test_global_ranking_fits_the_budget(profile: ModelProfile, target: float) -> None:
    """Whatever the importances, the allocation meets the budget, and barely: no channel wasted."""
    space = SearchSpace(profile, min_ratio=0.1)
    budget = Budget(flops_ratio=target)
    rng = np.random.default_rng(1)
    for _ in range(5):
        scores = [rng.exponential(size=g.channels).tolist() for g in profile.groups]
        ratios = global_ranking(space, budget, scores)
        assert 0.9 <= fill(space, budget, ratios) <= 1.0
        assert all(0.1 <= r <= 1.0 for r in ratios)


def test_global_ranking_respects_lower_bounds(profile: ModelProfile) -> None:
    """The useless group stops at min_ratio (others pay the rest); a fixed group never moves."""
    space = SearchSpace(profile, min_ratio=0.75)
    scores = even_scores(profile, np.random.default_rng(2))
    scores[2] = [0.01] * 32 + [1.0] * 32
    budget = Budget(flops_ratio=0.8)
    counts = space.counts(global_ranking(space, budget, scores))
    assert counts[2] == 48  # 0.75 * 64, though its remaining channels are still the least useful
    assert counts[0] < 16 or counts[1] < 32 or counts[3] < 64
    assert budget.fill(profile, counts) <= 1.0

    bounds = [(0.5, 0.5), (0.3, 1.0), (0.6, 1.0), (0.2, 1.0)]
    bounded = SearchSpace(profile, group_bounds=bounds)
    ratios = global_ranking(bounded, Budget(flops_ratio=0.4), scores)
    assert ratios[0] == 0.5
    for n, c, (lo, hi) in zip(bounded.counts(ratios), profile.channels, bounds, strict=True):
        assert kept_channels(lo, c) <= n <= kept_channels(hi, c)


def test_global_ranking_stops_at_the_floor_when_the_budget_is_impossible(
    profile: ModelProfile,
) -> None:
    """An infeasible budget leaves every group at its lower bound (repair reports the rest)."""
    space = SearchSpace(profile, min_ratio=0.5)
    scores = even_scores(profile, np.random.default_rng(3))
    ratios = global_ranking(space, Budget(flops_ratio=0.05), scores)
    assert space.counts(ratios) == space.counts([0.5] * 4)


def test_global_ranking_rounds_to_the_step(profile: ModelProfile) -> None:
    """With round_to=8 channels leave eight at a time, so counts stay multiples of 8."""
    space = SearchSpace(profile, min_ratio=0.1, round_to=8)
    scores = even_scores(profile, np.random.default_rng(4))
    budget = Budget(flops_ratio=0.5)
    ratios = global_ranking(space, budget, scores)
    assert all(n % 8 == 0 for n in space.counts(ratios))
    assert fill(space, budget, ratios) <= 1.0


def test_global_ranking_refuses_wrong_lengths(profile: ModelProfile) -> None:
    space = SearchSpace(profile)
    scores = even_scores(profile, np.random.default_rng(5))
    with pytest.raises(SearchError, match="4 groups"):
        global_ranking(space, Budget(flops_ratio=0.5), scores[:3])
    scores[1] = scores[1][:-1]
    with pytest.raises(SearchError, match="conv1"):
        global_ranking(space, Budget(flops_ratio=0.5), scores)


# -- greedy_sensitivity -------------------------------------------------------------------------


@pytest.mark.parametrize("flat", [1, 2])
def test_greedy_sensitivity_lowers_the_insensitive_group_first(
    profile: ModelProfile, flat: int
) -> None:
    """Loss per FLOP saved decides: the flat curve pays the budget, steep ones stay whole."""
    space = SearchSpace(profile, min_ratio=0.1)
    curves = [FLAT if g == flat else STEEP for g in range(4)]
    budget = Budget(flops_ratio=0.7)
    ratios = greedy_sensitivity(space, budget, curves, reference=0.9)
    assert ratios[flat] < 1.0
    assert all(r == 1.0 for g, r in enumerate(ratios) if g != flat)
    assert fill(space, budget, ratios) <= 1.0
    # It stops as soon as the budget fits: one tested ratio higher would not.
    higher = list(ratios)
    higher[flat] = min(r for r, _ in [*FLAT, (1.0, 0.9)] if r > ratios[flat])
    assert fill(space, budget, higher) > 1.0


def test_greedy_sensitivity_prefers_small_losses_among_steep_groups(
    profile: ModelProfile,
) -> None:
    """Between two sensitive groups, the one losing less per FLOP saved moves first."""
    space = SearchSpace(profile, min_ratio=0.1)
    gentle = [(0.25, 0.7), (0.5, 0.8), (0.75, 0.88)]
    curves = [STEEP, STEEP, gentle, STEEP]
    ratios = greedy_sensitivity(space, Budget(flops_ratio=0.85), curves, reference=0.9)
    assert ratios[2] < 1.0 and (ratios[0], ratios[1], ratios[3]) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.02])
def test_greedy_sensitivity_fits_or_bottoms_out(profile: ModelProfile, target: float) -> None:
    """The walk ends inside the budget, or with every group at its lowest tested ratio in bounds."""
    space = SearchSpace(profile, min_ratio=0.3)
    rng = np.random.default_rng(int(target * 100))
    curves = []
    for _ in profile.groups:
        accs = np.sort(rng.uniform(0.1, 0.9, size=3))
        curves.append(list(zip([0.25, 0.5, 0.75], accs.tolist(), strict=True)))
    budget = Budget(flops_ratio=target)
    ratios = greedy_sensitivity(space, budget, curves, reference=0.9)
    assert all(r in (0.5, 0.75, 1.0) for r in ratios)  # tested ratios within bounds only
    if fill(space, budget, ratios) > 1.0:
        assert ratios == (0.5, 0.5, 0.5, 0.5)
    assert (fill(space, budget, ratios) > 1.0) == (target == 0.02)


def test_greedy_sensitivity_refuses_wrong_lengths(profile: ModelProfile) -> None:
    space = SearchSpace(profile)
    with pytest.raises(SearchError, match="4 groups"):
        greedy_sensitivity(space, Budget(flops_ratio=0.5), [FLAT] * 3, reference=0.9)


# -- SearchSpace granularities ------------------------------------------------------------------


def test_stage_variables_tie_the_groups_of_a_stage(profile: ModelProfile) -> None:
    """``stage`` gives one variable per resolution stage, named s0, s1..., over its groups."""
    space = SearchSpace(staged(profile), min_ratio=0.2)
    variables = space.variables("stage")
    assert [(v.name, v.members) for v in variables] == [("s0", (0, 1)), ("s1", (2, 3))]
    assert all((v.low, v.high) == (0.2, 1.0) for v in variables)
    assert space.expand("stage", {"s0": 0.4, "s1": 0.7}) == (0.4, 0.4, 0.7, 0.7)
    group = space.variables("group")
    assert [v.name for v in group] == ["r000", "r001", "r002", "r003"]
    assert all(len(v.members) == 1 for v in group)


def test_network_variable_is_one_ratio(profile: ModelProfile) -> None:
    space = SearchSpace(staged(profile), min_ratio=0.2)
    (variable,) = space.variables("network")
    assert variable.name == "ratio" and variable.members == (0, 1, 2, 3)
    assert space.expand("network", {"ratio": 0.6}) == (0.6,) * 4


def test_tied_variables_skip_fixed_groups_and_clip_into_each_bound(
    profile: ModelProfile,
) -> None:
    """A fixed group is in no variable; a tied value is clipped into each member's own bounds."""
    bounds = [(0.5, 0.5), (0.2, 0.6), (0.3, 1.0), (0.4, 0.9)]
    space = SearchSpace(staged(profile), group_bounds=bounds)
    variables = {v.name: v for v in space.variables("stage")}
    assert variables["s0"].members == (1,) and (variables["s0"].low, variables["s0"].high) == (
        0.2,
        0.6,
    )
    assert (variables["s1"].low, variables["s1"].high) == (0.3, 1.0)
    assert space.expand("stage", {"s0": 0.9, "s1": 0.95}) == (0.5, 0.6, 0.95, 0.9)
    (network,) = space.variables("network")
    assert network.members == (1, 2, 3) and (network.low, network.high) == (0.2, 1.0)


def test_stage_granularity_leaves_ranks_per_layer(profile: ModelProfile) -> None:
    """Under ``mixed`` only channel groups are tied by stage; every rank keeps its own variable."""
    slots = tuple(
        RankSlot(f"conv{g}", profile.channels[g - 1], profile.channels[g], 8, g - 1, g, kernel=9)
        for g in (1, 2)
    )
    space = SearchSpace(replace(staged(profile), ranks=slots), operator="mixed")
    names = [(v.name, v.members) for v in space.variables("stage")]
    assert names == [("s0", (0, 1)), ("s1", (2, 3)), ("r004", (4,)), ("r005", (5,))]


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_expand_and_collapse_round_trip(profile: ModelProfile, granularity: str) -> None:
    """collapse(expand(v)) == v for sampled values; expand(collapse(r)) == r for tied ratios."""
    space = SearchSpace(staged(profile), min_ratio=0.1)
    rng = np.random.default_rng(6)
    for _ in range(10):
        values = {v.name: float(rng.uniform(v.low, v.high)) for v in space.variables(granularity)}
        ratios = space.expand(granularity, values)
        assert space.collapse(granularity, ratios) == pytest.approx(values)
        assert space.expand(granularity, space.collapse(granularity, ratios)) == pytest.approx(
            ratios
        )
    # A tie collapses to its members' mean.
    if granularity == "stage":
        assert space.collapse("stage", [0.2, 0.4, 0.6, 1.0]) == pytest.approx(
            {"s0": 0.3, "s1": 0.8}
        )


def test_unknown_granularity_is_an_error(profile: ModelProfile) -> None:
    space = SearchSpace(profile)
    with pytest.raises(SearchError, match="granularity"):
        space.variables("layer")
    with pytest.raises(SearchError, match="granularity"):
        space.expand("layer", {})
    with pytest.raises(SearchError, match="granularity"):
        space.collapse("layer", [0.5] * 4)


# -- cap ----------------------------------------------------------------------------------------


def test_cap_leaves_a_proposal_under_the_budget_alone(profile: ModelProfile) -> None:
    """nsga2 searches cost too: a feasible proposal is a front point, not grown onto the limit."""
    space = SearchSpace(profile, min_ratio=0.1)
    budget = Budget(flops_ratio=0.5)
    proposal = [0.3, 0.4, 0.5, 0.6]
    capped = cap(space, proposal, budget)
    assert capped == unrepaired(space, proposal, budget)
    assert capped.counts == space.counts(proposal)
    assert capped.fill < 0.9  # repair would have filled it
    assert repair(space, proposal, budget).fill > 0.99


def test_cap_repairs_a_proposal_over_the_budget(profile: ModelProfile) -> None:
    space = SearchSpace(profile, min_ratio=0.1)
    budget = Budget(flops_ratio=0.5)
    rng = np.random.default_rng(7)
    for _ in range(20):
        proposal = rng.uniform(0.7, 1.0, size=4).tolist()
        assert unrepaired(space, proposal, budget).fill > 1.0
        capped = cap(space, proposal, budget)
        assert capped.fill <= 1.0
        assert capped == repair(space, proposal, budget)
