"""Dynamic masks compute the pruned network, keep training masked channels, and let them return."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, TypeVar

import pytest
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from workers.compress.masking import DynamicMasks, Select
from workers.compress.profiling import ChannelGroup, channel_groups
from workers.compress.prune import apply_kept, group_importance, top_channels
from workers.errors import PruneError
from workers.nets import data, train, zoo

SHAPE = (1, 28, 28)
EXAMPLE = torch.zeros(1, *SHAPE)


def _build(arch: str) -> nn.Module:
    """A zoo network with non-trivial BN statistics and affine parameters, in eval mode.

    Fresh BNs are the identity in eval mode; random statistics and shifts make
    a masked channel's BN output non-zero, which the masks must still hide.
    """
    torch.manual_seed(0)
    model = zoo.build(arch, in_channels=1, num_classes=10, input_size=28)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    return model.eval()


M = TypeVar("M", bound=nn.Module)


def _layer(model: nn.Module, name: str, kind: type[M]) -> M:
    module = model.get_submodule(name)
    assert isinstance(module, kind)
    return module


def _magnitude(groups: Sequence[ChannelGroup], counts: Sequence[int]) -> Select:
    def select() -> dict[str, list[int]]:
        scores = group_importance(groups, "l1")
        return {g.name: top_channels(s, n) for g, s, n in zip(groups, scores, counts, strict=True)}

    return select


def _half(groups: Sequence[ChannelGroup]) -> list[int]:
    return [math.ceil(0.5 * g.channels) for g in groups]


def _readers(groups: Sequence[ChannelGroup]) -> list[tuple[ChannelGroup, nn.Module, Tensor]]:
    """(group, conv/linear reading it, group channel per input position), from torch-pruning."""
    found: list[tuple[ChannelGroup, nn.Module, Tensor]] = []
    for g in groups:
        dg = g.group._DG
        for item in g.group.items:
            module = item.dep.target.module
            if isinstance(module, nn.Conv2d | nn.Linear) and not dg.is_out_channel_pruning_fn(
                item.dep.handler
            ):
                found.append((g, module, torch.tensor(item.root_idxs)))
    return found


def _capture_inputs(
    modules: Sequence[nn.Module], *, prepend: bool
) -> tuple[dict[nn.Module, Tensor], list[RemovableHandle]]:
    """Record each module's input, before (``prepend``) or after the masks' own hooks."""
    seen: dict[nn.Module, Tensor] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen[module] = args[0].detach().clone()

    return seen, [m.register_forward_pre_hook(hook, prepend=prepend) for m in modules]


@pytest.mark.parametrize("arch", ["resnet20", "vgg11s", "lenet5"])
def test_masked_eval_equals_physically_pruned(arch: str) -> None:
    model = _build(arch)
    pruned = copy.deepcopy(model)
    _, groups = channel_groups(model, EXAMPLE)
    counts = _half(groups)
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model(x)
        with DynamicMasks(model, groups, counts, _magnitude(groups, counts)) as masks:
            masked = model(x)
    apply_kept(pruned, masks.kept, EXAMPLE)  # traces with autograd
    with torch.no_grad():
        expected = pruned(x)
    assert [len(masks.kept[g.name]) for g in groups] == counts
    assert not torch.allclose(masked, dense, atol=1e-3)
    torch.testing.assert_close(masked, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["resnet20", "lenet5"])
def test_masked_channels_per_group_equal_counts(arch: str) -> None:
    model = _build(arch)
    _, groups = channel_groups(model, EXAMPLE)
    counts = [max(1, g.channels // 3) for g in groups]
    readers = _readers(groups)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    with (
        torch.no_grad(),
        DynamicMasks(model, groups, counts, _magnitude(groups, counts)) as masks,
    ):
        before, first = _capture_inputs([m for _, m, _ in readers], prepend=True)
        after, last = _capture_inputs([m for _, m, _ in readers], prepend=False)
        model(x)
        for handle in first + last:
            handle.remove()
    for g, module, channels in readers:
        dim = 1 if isinstance(module, nn.Conv2d) else -1
        changed = (after[module] != before[module]).movedim(dim, 0).flatten(1).any(1)
        zero = (after[module] == 0).movedim(dim, 0).flatten(1).all(1)
        off = set(range(g.channels)) - set(masks.kept[g.name])
        dropped = torch.tensor([int(c) in off for c in channels])
        assert len(off) == g.channels - counts[groups.index(g)]
        assert bool(changed.any()) and not bool((changed & ~dropped).any())
        assert bool(zero[dropped].all())


def test_dropped_channel_comes_back_when_its_weights_grow() -> None:
    model = _build("lenet5")
    _, groups = channel_groups(model, EXAMPLE)
    counts = [g.channels for g in groups]
    counts[0] = 3  # features.0: keep 3 of 6
    conv = model.get_submodule("features.0")
    assert isinstance(conv, nn.Conv2d)
    with DynamicMasks(model, groups, counts, _magnitude(groups, counts), every=10) as masks:
        first = masks.kept["features.0"]
        back = next(c for c in range(6) if c not in first)
        with torch.no_grad():
            conv.weight[back] *= 1000.0  # as if training had grown the dropped filter
        masks.on_step(9, 0.0)
        assert masks.kept["features.0"] == first and masks.swaps == 0
        masks.on_step(10, 0.0)
        assert back in masks.kept["features.0"]
        assert masks.swaps == 1 and masks.updates == 2
    assert len(masks.kept["features.0"]) == 3


def test_straight_through_gradient_reaches_masked_channels() -> None:
    model = _build("resnet20").train()
    _, groups = channel_groups(model, EXAMPLE)
    counts = _half(groups)
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 10
    with DynamicMasks(model, groups, counts, _magnitude(groups, counts)) as masks:
        nn.functional.cross_entropy(model(x), y).backward()
        kept = masks.kept
    for root, bn, reader in [
        ("conv1", "bn1", "layer1.0.conv1"),  # residual group: stem + every block of stage 1
        ("layer2.0.conv1", "layer2.0.bn1", "layer2.0.conv2"),
    ]:
        conv = _layer(model, root, nn.Conv2d)
        off = [c for c in range(conv.out_channels) if c not in kept[root]]
        weight = conv.weight.grad
        gamma = _layer(model, bn, nn.BatchNorm2d).weight.grad
        assert weight is not None and gamma is not None
        assert bool((weight[off].flatten(1).abs().sum(1) > 0).all()), root
        assert bool((gamma[off].abs() > 0).all()), bn
        # The reader saw zeros on those channels, so its slice gets no gradient of its own.
        read = _layer(model, reader, nn.Conv2d).weight.grad
        assert read is not None and float(read[:, off].abs().sum()) == 0.0


def test_a_channel_trained_through_the_mask_returns_during_fit() -> None:
    """A masked channel learns only through the straight-through gradient, yet wins back its place.

    The selector ranks lenet's first group by BN scale (network slimming);
    the extra loss term rewards the masked channel's activation, whose forward
    value is zero: only the straight-through gradient can grow its scale.
    """
    model = _build("lenet5")
    _, groups = channel_groups(model, EXAMPLE)
    bn = _layer(model, "features.1", nn.BatchNorm2d)
    reader = _layer(model, "features.4", nn.Conv2d)
    counts = [g.channels for g in groups]
    counts[0] = 5
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.weight[2] = 0.5  # dropped at first

    def select() -> dict[str, list[int]]:
        full = {g.name: list(range(g.channels)) for g in groups}
        full["features.0"] = top_channels(bn.weight.detach().abs(), 5)
        return full

    seen: list[Tensor] = []
    splits = data.load("synthetic", seed=0, val_fraction=0.1)
    with DynamicMasks(model, groups, counts, select, every=5) as masks:
        assert 2 not in masks.kept["features.0"]

        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0])  # after the mask: the channel's value here is zero

        handle = reader.register_forward_pre_hook(record)

        def loss_fn(logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
            reward = seen.pop()[:, 2].mean()
            return nn.functional.cross_entropy(logits, y) - 5.0 * reward

        train.fit(
            model, splits.train, steps=20, batch_size=32, lr=0.05, augment=False,
            on_step=masks.on_step, loss_fn=loss_fn,
        )  # fmt: skip
        handle.remove()
    assert masks.updates == 1 + 20 // 5
    assert 2 in masks.kept["features.0"]
    assert masks.swaps >= 1


def test_masks_follow_the_model_to_another_dtype() -> None:
    """Masks are moved lazily to wherever the model runs (device or dtype), and stay there."""
    model = _build("lenet5")
    _, groups = channel_groups(model, EXAMPLE)
    counts = _half(groups)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), DynamicMasks(model, groups, counts, _magnitude(groups, counts)) as masks:
        single = model(x)
        model.double()
        torch.testing.assert_close(model(x.double()).float(), single, atol=1e-5, rtol=1e-4)
        masks.update()
        torch.testing.assert_close(model(x.double()).float(), single, atol=1e-5, rtol=1e-4)


def test_exit_removes_every_hook_and_freezes() -> None:
    model = _build("lenet5")
    _, groups = channel_groups(model, EXAMPLE)
    counts = _half(groups)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        dense = model(x)
        masks = DynamicMasks(model, groups, counts, _magnitude(groups, counts))
        with masks:
            assert any(m._forward_pre_hooks for m in model.modules())
            assert not torch.equal(model(x), dense)
        assert torch.equal(model(x), dense)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    frozen = masks.kept
    with pytest.raises(PruneError):
        masks.update()
    with pytest.raises(PruneError):
        masks.__enter__()
    assert masks.kept == frozen


def test_hooks_are_removed_when_the_body_raises() -> None:
    model = _build("lenet5")
    _, groups = channel_groups(model, EXAMPLE)
    counts = _half(groups)
    with (
        pytest.raises(RuntimeError),
        DynamicMasks(model, groups, counts, _magnitude(groups, counts)),
    ):
        raise RuntimeError("cancelled")
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_rejects_counts_and_selections_that_do_not_fit() -> None:
    model = _build("lenet5")
    _, groups = channel_groups(model, EXAMPLE)
    counts = _half(groups)
    with pytest.raises(PruneError):
        DynamicMasks(model, groups, counts[:-1], _magnitude(groups, counts))
    with pytest.raises(PruneError):
        DynamicMasks(model, groups, [0, *counts[1:]], _magnitude(groups, counts))
    with pytest.raises(PruneError):
        DynamicMasks(model, groups, counts, _magnitude(groups, counts), every=0)
    wrong = [*counts[:-1], counts[-1] + 1]
    with pytest.raises(PruneError), DynamicMasks(model, groups, counts, _magnitude(groups, wrong)):
        pass
    assert not any(m._forward_pre_hooks for m in model.modules())
