"""The ModelProfile's polynomials equal torch-pruning's count of the pruned network.

This is the contract that lets the search side repair candidates to a budget
without building them: if the profile and the measured network disagree, the
search accepts candidates that are over budget.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp

from search.profile import ModelProfile, kept_channels
from workers import zoo
from workers.profiling import build_profile, channel_groups
from workers.prune import prune

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
    assert profile.channels == tuple(g.channels for g in groups)
    assert all(g.name in g.layers for g in profile.groups)
    assert "fc" not in {g.name for g in profile.groups}


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
