"""Low-rank decomposition: exact where the weight has the rank, Eckart-Young error otherwise."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from workers.compress import lowrank
from workers.errors import PruneError
from workers.nets import zoo


def _low_rank_conv(rank: int, slices: int) -> nn.Conv2d:
    """A strided, padded, dilated conv whose every input slice has exactly ``rank``."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, bias=True)
    per_slice = 8 // slices * 9
    parts = [torch.randn(12, rank) @ torch.randn(rank, per_slice) for _ in range(slices)]
    weight = torch.stack(parts).reshape(slices, 12, 8 // slices, 3, 3).permute(1, 0, 2, 3, 4)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(12, 8, 3, 3))
    return conv


@pytest.mark.parametrize("slices", [1, 2])
def test_a_conv_of_that_rank_is_reproduced(slices: int) -> None:
    model = nn.Sequential(_low_rank_conv(2, slices))
    x = torch.randn(3, 8, 11, 11)
    with torch.no_grad():
        before = model(x)
    assert lowrank.decompose(model, {"0": 2}, slices) == {"0": (2, slices)}
    first, second = model[0].children()
    assert isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
    assert (first.groups, first.out_channels, first.stride, first.dilation) == (
        slices,
        2 * slices,
        (2, 2),
        (2, 2),
    )
    assert second.kernel_size == (1, 1) and second.bias is not None
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)


def test_linear_truncation_error_is_eckart_young() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(20, 30)
    errors = lowrank.relative_errors(nn.Sequential(layer), "0")
    assert len(errors) == 20 and errors[-1] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(errors))
    eye = torch.eye(20)
    with torch.no_grad():
        exact = layer(eye) - layer.bias
    for rank in (1, 4, 9):
        model = nn.Sequential(copy.deepcopy(layer))
        assert lowrank.decompose(model, {"0": rank}) == {"0": (rank, 1)}
        with torch.no_grad():
            approx = model(eye) - layer.bias
        measured = float((approx - exact).norm() / exact.norm())
        assert measured == pytest.approx(errors[rank - 1], rel=1e-4)


def test_errors_aggregate_slices_in_frobenius_norm() -> None:
    values = torch.tensor([[3.0, 1.0], [2.0, 0.0]])
    # rank 1 drops 1^2 + 0^2 out of 9 + 1 + 4 + 0
    assert lowrank.errors_from_singular_values(values) == pytest.approx([(1 / 14) ** 0.5, 0.0])


def test_no_decomposition_at_or_above_break_even() -> None:
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False))
    # 16x16 3x3: decomposed costs r * (144 + 16) against 2304, cheaper only below 14.4.
    assert lowrank.decompose(model, {"0": 15}) == {}
    assert isinstance(model[0], nn.Conv2d)
    assert lowrank.decompose(model, {"0": 14}) == {"0": (14, 1)}


def test_rank_is_capped_and_slices_fall_back() -> None:
    model = nn.Sequential(nn.Conv2d(6, 4, 1), nn.Conv2d(4, 40, 3))
    # 6 inputs, 4 slices: falls back to 1; 1x1 conv 6->4 has full rank 4, never cheaper.
    assert lowrank.full_rank(model[0], 4) == 4
    plans = lowrank.decompose(model, {"1": 100}, {"1": 4})
    assert plans == {}  # capped at full rank 9 (one input per slice, 3x3): not cheaper
    assert lowrank.decompose(model, {"1": 3}, {"1": 4}) == {"1": (3, 4)}


def test_decomposable_layers() -> None:
    model = zoo.build("lenet5", in_channels=1, num_classes=10, input_size=28)
    assert lowrank.decomposable(model) == ["features.0", "features.4", "fc1", "fc2"]
    tiny = nn.Sequential(
        nn.Conv2d(1, 1, 1), nn.Conv2d(4, 4, 3, groups=2), nn.Linear(3, 5), nn.Linear(5, 2)
    )
    assert lowrank.decomposable(tiny) == ["2"]  # "3" is the classifier (the last Linear)


def test_restructure_gives_the_same_shapes_and_refuses_other_plans() -> None:
    torch.manual_seed(0)
    model = zoo.build("resnet20", in_channels=1, num_classes=10, input_size=28)
    ranks = {"layer1.0.conv1": 3, "layer2.0.downsample.0": 5, "layer3.2.conv2": 100}
    plans = lowrank.decompose(model, ranks, 2)
    assert plans == {"layer1.0.conv1": (3, 2), "layer2.0.downsample.0": (5, 2)}
    fresh = zoo.build("resnet20", in_channels=1, num_classes=10, input_size=28)
    lowrank.restructure(fresh, {n: r for n, (r, _) in plans.items()}, 2)
    fresh.load_state_dict(model.state_dict(), strict=True)
    for bad in ({"layer3.2.conv2": 100}, {"nope": 3}, {"bn1": 3}, {"conv1": 0}):
        with pytest.raises(PruneError):
            lowrank.restructure(
                zoo.build("resnet20", in_channels=1, num_classes=10, input_size=28), bad
            )
