"""Channel criteria pick the channels their papers say they should, on crafted networks."""

from __future__ import annotations

import copy
import functools
from typing import TypeVar

import pytest
import torch
from torch import Tensor, nn

from workers.compress.criteria import (
    CRITERIA,
    DATA_CRITERIA,
    Batches,
    DiscriminantPush,
    importance,
    select,
)
from workers.compress.profiling import channel_groups
from workers.compress.prune import prune
from workers.errors import PruneError
from workers.nets import data, train, zoo

SHAPE = (1, 28, 28)
M = TypeVar("M", bound=nn.Module)


@functools.cache
def _splits() -> data.DataSplits:
    return data.load("synthetic", seed=0, val_fraction=0.1)


def _batches(count: int = 2, size: int = 64) -> Batches:
    return train.calibration_batches(_splits().train, count, batch_size=size)


def _layer(model: nn.Module, name: str, kind: type[M]) -> M:
    module = model.get_submodule(name)
    assert isinstance(module, kind)
    return module


def _lenet(in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return zoo.build("lenet5", in_channels=in_channels, num_classes=10, input_size=28).eval()


def _first(
    model: nn.Module, criterion: str, keep: int, batches: Batches | None = None
) -> list[int]:
    """Kept channels of lenet's first group when it keeps ``keep`` and the others keep all."""
    _, groups = channel_groups(model, torch.zeros(1, *_in_shape(model)))
    counts = [keep, *(g.channels for g in groups[1:])]
    return select(model, groups, counts, criterion, batches)["features.0"]


def _in_shape(model: nn.Module) -> tuple[int, int, int]:
    return (_layer(model, "features.0", nn.Conv2d).in_channels, 28, 28)


def test_similarity_keeps_one_of_two_duplicates_where_l1_keeps_both() -> None:
    model = _lenet()
    conv1 = _layer(model, "features.0", nn.Conv2d)
    with torch.no_grad():
        conv1.weight[0] *= 3.0
        conv1.weight[1] = conv1.weight[0]
    batches = _batches()
    assert {0, 1} <= set(_first(model, "l1", 5))
    kept = _first(model, "similarity", 5, batches)
    assert len(kept) == 5
    assert len({0, 1} & set(kept)) == 1


def test_similarity_scores_are_nested_cluster_choices() -> None:
    """Top-k of the ordinal score is the k-cluster choice for every k (one tree)."""
    model = _lenet()
    conv1 = _layer(model, "features.0", nn.Conv2d)
    with torch.no_grad():
        conv1.weight[4] = 0.5 * conv1.weight[2]
    batches = _batches()
    _, groups = channel_groups(model, torch.zeros(1, *SHAPE))
    scores = importance(model, groups[:1], "similarity", batches)[0]
    assert sorted(scores.tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert min(int(scores[2]), int(scores[4])) == 0  # the scaled twin goes first


def test_discriminant_drops_class_independent_channels_first() -> None:
    """Channel 0 sees only noise (large weights), channel 1 is constant; the rest see gratings."""
    model = _lenet(in_channels=2)
    conv1 = _layer(model, "features.0", nn.Conv2d)
    bn1 = _layer(model, "features.1", nn.BatchNorm2d)
    with torch.no_grad():
        conv1.weight[:, 1] = 0.0
        conv1.weight[0, 0] = 0.0
        conv1.weight[0, 1] = 2.0 * conv1.weight[0, 1].sign()
        _layer(model, "features.4", nn.Conv2d).weight[:, 0] *= 3.0
        conv1.weight[1] = 0.0
        bn1.bias[1] = 3.0
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.cat([x, torch.randn(x.shape, generator=generator)], dim=1), y)
        for x, y in _batches(4)
    ]
    _, groups = channel_groups(model, torch.zeros(1, 2, 28, 28))
    scores = importance(model, groups[:1], "discriminant", batches)[0]
    assert scores[1] == 0.0
    assert scores[0] < 0.5 * scores[2:].min()
    assert _first(model, "discriminant", 4, batches) == [2, 3, 4, 5]
    assert 0 in _first(model, "l1", 4)  # the noise channel has the largest norm


def test_bn_scale_follows_gamma_and_falls_back_to_l1() -> None:
    model = _lenet()
    bn1 = _layer(model, "features.1", nn.BatchNorm2d)
    gamma = torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2, 1.0])
    with torch.no_grad():
        bn1.weight.copy_(gamma)
    _, groups = channel_groups(model, torch.zeros(1, *SHAPE))
    scores = importance(model, groups, "bn_scale")
    torch.testing.assert_close(scores[0], gamma.abs())
    assert _first(model, "bn_scale", 3) == [1, 3, 5]
    fc1 = [g.name for g in groups].index("fc1")  # fc1 -> fc2 has no BatchNorm
    torch.testing.assert_close(scores[fc1], importance(model, groups, "l1")[fc1])


def test_taylor_ranks_a_channel_without_downstream_weight_last() -> None:
    model = _lenet()
    conv1 = _layer(model, "features.0", nn.Conv2d)
    conv2 = _layer(model, "features.4", nn.Conv2d)
    with torch.no_grad():
        conv1.weight[2] *= 30.0
        conv2.weight[:, 2] = 0.0
    model.train()
    batches = _batches()
    _, groups = channel_groups(model, torch.zeros(1, *SHAPE))
    conv1.weight.requires_grad_(False)  # after tracing: torch-pruning skips frozen layers
    scores = importance(model, groups[:1], "taylor", batches)[0]
    assert scores[2] == 0.0
    assert bool((scores[[0, 1, 3, 4, 5]] > 0).all())
    # Mode, grads and requires_grad flags are as before.
    assert model.training
    assert not conv1.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    conv1.weight.requires_grad_(True)
    assert _first(model, "taylor", 5, batches) == [0, 1, 3, 4, 5]
    assert 2 in _first(model, "l1", 5)


def _output_error(reference: nn.Module, pruned: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        ref = reference(x)
        return float((pruned(x) - ref).pow(2).mean() / ref.pow(2).mean())


def test_fold_brings_the_pruned_output_closer_to_the_unpruned() -> None:
    model = _lenet()
    conv1 = _layer(model, "features.0", nn.Conv2d)
    with torch.no_grad():  # scaled twins: 1 ~ 0, 3 ~ 2 (+ a little noise)
        conv1.weight[1] = 0.5 * conv1.weight[0] + 0.01 * torch.randn_like(conv1.weight[0])
        conv1.weight[3] = 2.0 * conv1.weight[2] + 0.01 * torch.randn_like(conv1.weight[2])
    batches = _batches()
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(model, example)
    counts = [4, *(max(1, g.channels * 3 // 4) for g in groups[1:])]
    x = train.calibration_batches(_splits().val, 1, batch_size=100)[0][0]
    errors = {}
    for fold in (False, True):
        pruned = copy.deepcopy(model)
        kept = prune(
            pruned,
            counts,
            example_inputs=example,
            criterion="similarity",
            batches=batches,
            fold=fold,
        )
        assert len({0, 1} & set(kept["features.0"])) == 1
        assert len({2, 3} & set(kept["features.0"])) == 1
        errors[fold] = _output_error(model, pruned, x)
    assert errors[True] < 0.5 * errors[False]


def test_fold_is_exact_for_a_scaled_duplicate() -> None:
    model = _lenet()
    conv1 = _layer(model, "features.0", nn.Conv2d)
    with torch.no_grad():
        conv1.weight[5] = 0.25 * conv1.weight[3]
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(model, example)
    counts = [5, *(g.channels for g in groups[1:])]
    pruned = copy.deepcopy(model)
    kept = prune(
        pruned,
        counts,
        example_inputs=example,
        criterion="similarity",
        batches=_batches(),
        fold=True,
    )
    assert len({3, 5} & set(kept["features.0"])) == 1
    x = _batches(1)[0][0]
    assert _output_error(model, pruned, x) < 1e-8


class _Tiny(nn.Module):
    """Two conv groups and a classifier: small enough to train in a test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.relu2(self.bn2(self.conv2(x)))).flatten(1))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_discriminant_push_concentrates_the_fisher_ratio_on_few_channels() -> None:
    measure = train.calibration_batches(_splits().val, 1, batch_size=100)
    top: dict[float, list[tuple[float, float]]] = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = _Tiny()
        _, groups = channel_groups(model, torch.zeros(1, *SHAPE))
        with DiscriminantPush(model, groups, weight=weight) as push:
            assert _hooks(model) == 2  # conv2 reads group conv1, fc reads group conv2
            train.fit(model, _splits().train, steps=30, batch_size=64, loss_fn=push.loss_fn)
        assert _hooks(model) == 0
        fisher = importance(model, groups, "discriminant", measure)
        ranked = [f.sort(descending=True).values for f in fisher]
        top[weight] = [(float(r[:3].sum()), float(r[:3].sum() / r.sum())) for r in ranked]
    # The top channels' share of the Fisher ratio grows (seeds 0-3 all agree), and
    # their own Fisher ratio does not fall much (it rises for seed 0).
    for (plain_sum, plain_share), (pushed_sum, pushed_share) in zip(
        top[0.0], top[1.0], strict=True
    ):
        assert pushed_share > plain_share
        assert pushed_sum > 0.8 * plain_sum


def test_push_loss_is_cross_entropy_plus_the_regulariser() -> None:
    model = _Tiny().train()
    _, groups = channel_groups(model, torch.zeros(1, *SHAPE))
    x, y = _batches(1, 32)[0]
    with DiscriminantPush(model, groups, weight=0.0) as push:
        logits = model(x)
        plain = push.loss_fn(logits, x, y)
    torch.testing.assert_close(plain, nn.functional.cross_entropy(logits, y))
    with DiscriminantPush(model, groups, weight=1.0) as push:
        logits = model(x)
        pushed = push.loss_fn(logits, x, y)
    assert float(pushed.detach()) != pytest.approx(float(plain.detach()))
    pushed.backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize("arch", ["resnet20", "vgg11s"])
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_prunes_the_zoo_to_the_requested_counts(arch: str, criterion: str) -> None:
    torch.manual_seed(0)
    model = zoo.build(arch, in_channels=1, num_classes=10, input_size=28).eval()
    example = torch.zeros(1, *SHAPE)
    _, groups = channel_groups(model, example)
    counts = [max(1, g.channels * 3 // 8) for g in groups]
    batches = _batches(1, 8) if criterion in DATA_CRITERIA else None
    kept = prune(model, counts, example_inputs=example, criterion=criterion, batches=batches)
    assert [len(kept[g.name]) for g in groups] == counts
    _, pruned = channel_groups(model, example)
    assert [g.channels for g in pruned] == counts
    with torch.no_grad():
        assert model(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_errors_name_the_criterion() -> None:
    model = _lenet()
    _, groups = channel_groups(model, torch.zeros(1, *SHAPE))
    counts = [g.channels for g in groups]
    for criterion in sorted(DATA_CRITERIA):
        with pytest.raises(PruneError, match=f"{criterion}.*calibration batches"):
            select(model, groups, counts, criterion)
    with pytest.raises(PruneError, match=", ".join(CRITERIA)):
        importance(model, groups, "hrank")
    with pytest.raises(PruneError, match="fold"):
        select(model, groups, counts, "l1", fold=True)
    with pytest.raises(PruneError, match="cannot keep 0"):
        select(model, groups, [0, *counts[1:]], "l1")
