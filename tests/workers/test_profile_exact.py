"""The ModelProfile's costs equal torch-pruning's count of the pruned (and decomposed) network.

This is the contract that lets the search side repair candidates to a budget
without building them: if the profile and the measured network disagree, the
search accepts candidates that are over budget.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch_pruning as tp

from search.profile import ModelProfile, kept_channels
from search.space import SearchSpace
from workers.compress import lowrank
from workers.compress.profiling import ChannelGroup, build_profile, channel_groups
from workers.compress.prune import prune
from workers.nets import zoo

SHAPE = (1, 28, 28)
TRIALS = 20


def _fresh(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.build(arch, in_channels=SHAPE[0], num_classes=10, input_size=SHAPE[1]).eval()


@pytest.fixture(scope="module", params=zoo.ARCHS)
def arch_profile(request: pytest.FixtureRequest) -> tuple[str, ModelProfile]:
    arch = request.param
    return arch, build_profile(_fresh(arch), arch=arch, input_shape=SHAPE, num_classes=10)


def _measure(model: torch.nn.Module) -> tuple[float, float]:
    flops, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *SHAPE))
    return float(flops), float(params)


def test_base_matches(arch_profile: tuple[str, ModelProfile]) -> None:
    arch, profile = arch_profile
    flops, params = _measure(_fresh(arch))
    assert profile.base_flops == flops
    assert profile.base_params == params


def test_groups_match_channel_groups(arch_profile: tuple[str, ModelProfile]) -> None:
    arch, profile = arch_profile
    model = _fresh(arch)
    _, groups = channel_groups(model, torch.zeros(1, *SHAPE))
    assert [g.name for g in profile.groups] == [g.name for g in groups]
    assert profile.channels == tuple(g.units for g in groups)
    assert [g.network_channels for g in profile.groups] == [g.channels for g in groups]
    assert all(g.name in g.layers for g in profile.groups)
    classifier, _ = zoo.classifier_of(model)
    assert classifier not in {g.name for g in profile.groups}


def test_profile_survives_json(arch_profile: tuple[str, ModelProfile]) -> None:
    _, profile = arch_profile
    assert ModelProfile.from_json(profile.to_json()) == profile


@pytest.mark.parametrize("round_to", [1, 4])
def test_pruned_networks_match(arch_profile: tuple[str, ModelProfile], round_to: int) -> None:
    arch, profile = arch_profile
    rng = np.random.default_rng(1234 + round_to)
    example = torch.zeros(1, *SHAPE)
    for _ in range(TRIALS):
        ratios = rng.uniform(0.1, 1.0, size=len(profile.groups))
        counts = [
            kept_channels(float(r), c, round_to)
            for r, c in zip(ratios, profile.channels, strict=True)
        ]
        model = _fresh(arch)
        prune(model, counts, example_inputs=example)
        flops, params = _measure(model)
        assert profile.flops(counts) == pytest.approx(flops, rel=1e-9), counts
        assert profile.params(counts) == pytest.approx(params, rel=1e-9), counts


def test_extremes_match(arch_profile: tuple[str, ModelProfile]) -> None:
    arch, profile = arch_profile
    for counts in ([1] * len(profile.groups), [max(1, c - 1) for c in profile.channels]):
        model = _fresh(arch)
        prune(model, counts, example_inputs=torch.zeros(1, *SHAPE))
        flops, params = _measure(model)
        assert profile.flops(counts) == flops
        assert profile.params(counts) == params


def test_three_channel_input_matches() -> None:
    shape = (3, 32, 32)
    model = zoo.build("resnet20", in_channels=3, num_classes=7, input_size=32).eval()
    profile = build_profile(model, arch="resnet20", input_shape=shape, num_classes=7)
    counts = [max(1, c // 3) for c in profile.channels]
    prune(model, counts, example_inputs=torch.zeros(1, *shape))
    flops, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *shape))
    assert profile.flops(counts) == flops
    assert profile.params(counts) == params


def _pruned_and_decomposed(
    arch: str, profile: ModelProfile, values: tuple[int, ...]
) -> torch.nn.Module:
    """The network ``values`` describes: channels pruned first, then layers decomposed."""
    space = SearchSpace(profile, operator="mixed")
    counts, ranks = space.split(values)
    model = _fresh(arch)
    if counts != profile.channels:
        prune(model, counts, example_inputs=torch.zeros(1, *SHAPE))
    plans = lowrank.decompose(model, ranks, {s.name: s.slices for s in profile.ranks})
    assert plans == profile.decomposition(values)
    return model


def test_rank_slots_are_the_decomposable_layers(arch_profile: tuple[str, ModelProfile]) -> None:
    arch, profile = arch_profile
    model = _fresh(arch)
    _, groups = channel_groups(model, torch.zeros(1, *SHAPE))
    names = {module: name for name, module in model.named_modules()}

    def sides(g: ChannelGroup, inputs: bool) -> set[str]:
        dg = g.group._DG
        pick = dg.is_in_channel_pruning_fn if inputs else dg.is_out_channel_pruning_fn
        found = {names.get(d.target.module) for d, _ in g.group if pick(d.handler)}
        return found & set(g.layers)

    sliced = {name for g in groups if g.slices > 1 for name in sides(g, inputs=False)}
    reads = Counter(name for g in groups for name in sides(g, inputs=True))
    concatenated = {name for name, count in reads.items() if count > 1}
    # A slot's cost model has one group per side, and one output per channel: a layer
    # whose outputs grouped convs cut in parts, or that reads a concatenation, stays whole.
    whole = sliced | concatenated
    assert [s.name for s in profile.ranks] == [
        name for name in lowrank.decomposable(model) if name not in whole
    ]
    if arch in ("lenet5", "vgg11s", "resnet20", "resnet56", "mobilenetv2"):
        assert [s.name for s in profile.ranks] == lowrank.decomposable(model)
    for slot in profile.ranks:
        assert slot.full_rank == lowrank.full_rank(model.get_submodule(slot.name))


def test_pruned_and_decomposed_networks_match(arch_profile: tuple[str, ModelProfile]) -> None:
    arch, profile = arch_profile
    space = SearchSpace(profile, min_ratio=0.05, operator="mixed")
    rng = np.random.default_rng(99)
    n = len(profile.groups)
    decomposed = 0
    # Full width once, then pruned: every network costs one dependency graph on resnet56.
    for trial in range(2 if arch == "resnet56" else 4):
        ratios = rng.uniform(0.05, 1.0, size=space.size)
        if trial == 0:
            ratios[:n] = 1.0
        values = space.counts(ratios.tolist())
        model = _pruned_and_decomposed(arch, profile, values)
        decomposed += len(profile.decomposition(values))
        flops, params = _measure(model)
        assert profile.flops(values) == flops, values
        assert profile.params(values) == params, values
    assert decomposed >= 2


@pytest.mark.parametrize(("arch", "slices"), [("lenet5", 2), ("resnet20", 4)])
def test_sliced_decompositions_match(arch: str, slices: int) -> None:
    model = _fresh(arch)
    profile = build_profile(model, arch=arch, input_shape=SHAPE, num_classes=10, slices=slices)
    assert any(s.slices == slices for s in profile.ranks)
    space = SearchSpace(profile, min_ratio=0.05, operator="mixed")
    rng = np.random.default_rng(7)
    n = len(profile.groups)
    built: set[int] = set()
    for trial in range(3):
        values = space.counts(rng.uniform(0.05, 0.5, size=space.size).tolist())
        if trial == 0:  # full width: the slices divide every input
            values = profile.channels + values[n:]
        elif trial == 1:  # odd widths: no slices divide them
            values = tuple(c - 1 + c % 2 for c in profile.channels) + values[n:]
        model = _pruned_and_decomposed(arch, profile, values)
        plans = profile.decomposition(values)
        built |= {plans[s.name][1] for s in profile.ranks if s.slices > 1 and s.name in plans}
        flops, params = _measure(model)
        assert profile.flops(values) == flops, values
        assert profile.params(values) == params, values
    # Sliced layers were built, and pruned inputs that slices do not divide fell back to one.
    assert built == {1, slices}
