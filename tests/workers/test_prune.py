"""Physical pruning keeps the most important channels and leaves a working network."""

from __future__ import annotations

from typing import TypeVar

import pytest
import torch

from workers.compress.criteria import DATA_CRITERIA, select
from workers.compress.profiling import channel_groups
from workers.compress.prune import apply_kept, kept_counts, prune
from workers.errors import PruneError
from workers.nets import data, train, zoo

SHAPE = (1, 28, 28)


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.build("lenet5", in_channels=1, num_classes=10, input_size=28).eval()


M = TypeVar("M", bound=torch.nn.Module)


def _layer(model: torch.nn.Module, name: str, kind: type[M]) -> M:
    module = model.get_submodule(name)
    assert isinstance(module, kind)
    return module


def _silence(model: torch.nn.Module, channels: list[int]) -> None:
    """Zero every slice of conv1's channels: filter, BN affine and conv2's input."""
    conv1 = _layer(model, "features.0", torch.nn.Conv2d)
    bn1 = _layer(model, "features.1", torch.nn.BatchNorm2d)
    conv2 = _layer(model, "features.4", torch.nn.Conv2d)
    with torch.no_grad():
        for c in channels:
            conv1.weight[c].zero_()
            bn1.weight[c] = 0.0
            bn1.bias[c] = 0.0
            conv2.weight[:, c].zero_()


def test_keeps_the_top_l1_channels() -> None:
    model = _lenet()
    _silence(model, [1, 3])
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(model, example)
    names = [g.name for g in groups]
    assert names[0] == "features.0"
    counts = [4, *(g.channels for g in groups[1:])]
    kept = prune(model, counts, example_inputs=example)
    assert kept["features.0"] == [0, 2, 4, 5]
    assert _layer(model, "features.0", torch.nn.Conv2d).out_channels == 4
    assert _layer(model, "features.4", torch.nn.Conv2d).in_channels == 4
    assert kept_counts(kept, names) == counts


def test_scaled_filters_rank_by_magnitude() -> None:
    model = _lenet()
    conv2 = _layer(model, "features.4", torch.nn.Conv2d)
    with torch.no_grad():
        for c in range(conv2.out_channels):
            scale = 0.01 if c in (2, 7, 11) else 10.0
            conv2.weight[c] *= scale
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(model, example)
    counts = [g.channels for g in groups]
    index = [g.name for g in groups].index("features.4")
    counts[index] = 13
    kept = prune(model, counts, example_inputs=example)
    assert kept["features.4"] == [c for c in range(16) if c not in (2, 7, 11)]


@pytest.mark.parametrize("arch", zoo.ARCHS)
def test_minimal_network_runs(arch: str) -> None:
    torch.manual_seed(0)
    model = zoo.build(arch, in_channels=1, num_classes=10, input_size=28).eval()
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(model, example)
    kept = prune(model, [1] * len(groups), example_inputs=example)
    # One position per part: grouped convs keep the same position in each of their parts.
    assert [len(kept[g.name]) for g in groups] == [g.slices for g in groups]
    name, _ = zoo.classifier_of(model)
    assert _layer(model, name, torch.nn.Linear).out_features == 10
    with torch.no_grad():
        assert model(torch.randn(3, *SHAPE)).shape == (3, 10)


def test_rejects_zero_and_wrong_length() -> None:
    model = _lenet()
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(model, example)
    with pytest.raises(PruneError, match="cannot keep 0"):
        prune(model, [0] + [g.channels for g in groups[1:]], example_inputs=example)
    with pytest.raises(PruneError, match="channel counts"):
        prune(model, [1], example_inputs=example)
    full = [g.channels for g in groups]
    with pytest.raises(PruneError, match="'taylor' needs calibration batches"):
        prune(model, full, example_inputs=example, criterion="taylor")
    with pytest.raises(PruneError, match="unknown criterion"):
        prune(model, full, example_inputs=example, criterion="hrank")
    with pytest.raises(PruneError, match="fold"):
        prune(model, full, example_inputs=example, criterion="l2", fold=True)


def test_apply_kept_reproduces_the_architecture() -> None:
    torch.manual_seed(0)
    model = zoo.build("resnet20", in_channels=1, num_classes=10, input_size=28).eval()
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(model, example)
    kept = prune(model, [max(1, g.channels // 2) for g in groups], example_inputs=example)
    fresh = zoo.build("resnet20", in_channels=1, num_classes=10, input_size=28).eval()
    apply_kept(fresh, kept, example)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in fresh.state_dict().items()}


def test_apply_kept_rejects_bad_recipes() -> None:
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(_lenet(), example)
    full = {g.name: list(range(g.channels)) for g in groups}
    bad = [
        {**full, "features.0": [0, 6]},
        {**full, "features.0": [1, 1]},
        {**full, "features.0": []},
        {k: v for k, v in full.items() if k != "fc1"},
        {**full, "nonsense": [0]},
    ]
    for recipe in bad:
        with pytest.raises(PruneError):
            apply_kept(_lenet(), recipe, example)


def test_pruning_keeps_weights_and_statistics() -> None:
    model = _lenet()
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *SHAPE))  # non-trivial running statistics
    bn = _layer(model, "features.5", torch.nn.BatchNorm2d)
    conv = _layer(model, "features.4", torch.nn.Conv2d)
    mean, weight = bn.running_mean.clone(), conv.weight.clone()  # type: ignore[union-attr]
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(model, example)
    counts = [g.channels if g.name != "features.4" else 5 for g in groups]
    kept = prune(model, counts, example_inputs=example)["features.4"]
    assert model.training
    torch.testing.assert_close(bn.running_mean, mean[kept])
    torch.testing.assert_close(conv.weight, weight[kept])


def test_l1_and_l2_disagree_where_they_should() -> None:
    """Many small weights beat one large weight under L1, and lose under L2."""
    example = torch.zeros(1, *SHAPE)
    kept = {}
    for criterion in ("l1", "l2"):
        model = _lenet()
        _silence(model, [0, 1, 2, 3, 4, 5])
        conv1 = _layer(model, "features.0", torch.nn.Conv2d)
        with torch.no_grad():
            conv1.weight[2].fill_(0.1)  # 25 weights: L1 2.5, L2 0.5
            conv1.weight[4, 0, 0, 0] = 1.0  # one weight: L1 1.0, L2 1.0
        _, groups = channel_groups(model, example)
        counts = [1, *(g.channels for g in groups[1:])]
        kept[criterion] = prune(model, counts, example_inputs=example, criterion=criterion)
    assert kept["l1"]["features.0"] == [2]
    assert kept["l2"]["features.0"] == [4]


@pytest.mark.parametrize("criterion", ["bn_scale", *sorted(DATA_CRITERIA)])
def test_prune_cuts_what_the_criterion_selects(criterion: str) -> None:
    """prune() keeps exactly criteria.select's choice, made on the unpruned network."""
    splits = data.load("synthetic", seed=0, val_fraction=0.1)
    batches = train.calibration_batches(splits.train, 1, batch_size=32)
    example = torch.zeros(1, *SHAPE)
    model = _lenet()
    _, groups = channel_groups(model, example)
    counts = [max(1, g.channels // 3) for g in groups]
    chosen = select(model, groups, counts, criterion, batches)
    kept = prune(model, counts, example_inputs=example, criterion=criterion, batches=batches)
    assert kept == chosen
    assert _layer(model, "features.4", torch.nn.Conv2d).in_channels == counts[0]


def test_prune_folds_a_duplicate_before_cutting() -> None:
    """With fold, cutting one of two identical channels leaves the output unchanged."""
    splits = data.load("synthetic", seed=0, val_fraction=0.1)
    batches = train.calibration_batches(splits.train, 1, batch_size=32)
    example = torch.zeros(1, *SHAPE)
    model = _lenet()
    conv1 = _layer(model, "features.0", torch.nn.Conv2d)
    with torch.no_grad():
        conv1.weight[4] = conv1.weight[1]
        expected = model(batches[0][0])
    _, groups = channel_groups(model, example)
    counts = [5, *(g.channels for g in groups[1:])]
    kept = prune(
        model, counts, example_inputs=example, criterion="similarity", batches=batches, fold=True
    )
    assert len({1, 4} & set(kept["features.0"])) == 1
    with torch.no_grad():
        torch.testing.assert_close(model(batches[0][0]), expected, rtol=1e-4, atol=1e-5)
