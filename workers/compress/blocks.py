"""Collapsible blocks: the parts of a network that one 3x3 conv layer can replace.

Deep Net Triage's block criticality (:mod:`workers.compress.criticality`)
collapses each block in turn. Finding the blocks (:func:`blocks`) and
collapsing one (:func:`collapse`) is surgery on the network's structure,
independent of how the result is scored or trained, so it lives apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workers.nets.zoo import BasicBlock

_RUN_MEMBERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)


@dataclass(frozen=True)
class _Block:
    """Where a collapsible block sits and what the replacing layer must look like."""

    name: str
    parent: nn.Module
    children: tuple[str, ...]  # the parent's children that make up the block, in order
    c_in: int
    c_out: int
    stride: int


class CollapsedBlock(nn.Module):
    """The single layer that replaces a block: 3x3 conv + BN + ReLU.

    The conv has no bias (the BN that follows has one), like the zoo's layers.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


def blocks(model: nn.Module) -> list[str]:
    """Names of the collapsible blocks of ``model``, in module order.

    The rule: a block is a stack of layers that one 3x3 conv can replace
    without changing the shapes the rest of the network sees.

    * Every zoo :class:`~workers.nets.zoo.BasicBlock` (ResNets), named by its
      module path (``layer2.0``); its shortcut goes with it.
    * Inside an ``nn.Sequential`` (VGG), every maximal run of at least two
      convs at one resolution: consecutive Conv2d / BatchNorm2d / ReLU
      children whose convs keep the spatial size (stride 1, "same" padding,
      no groups or dilation), with no pooling in between. Named
      ``<sequential>.<first>-<last>`` by the children's indices (inclusive),
      e.g. ``features.8-13`` for vgg11s's two 128-channel convs.

    LeNet-5 has none: its two convs are separated by pooling and its
    remaining layers are linear.
    """
    return [b.name for b in _find_blocks(model)]


def collapse(model: nn.Module, name: str, *, generator: torch.Generator | None = None) -> None:
    """Replace block ``name`` of ``model`` in place by one freshly initialised layer.

    The layer is ``Conv2d(c_in, c_out, 3, stride, padding=1)`` + BN + ReLU,
    where ``c_in``/``c_out`` are the block's input/output channels and
    ``stride`` its stride, so the network still runs with unchanged shapes.
    As in the paper the layer starts from scratch (Kaiming-normal conv, unit
    BN): the comparison is how well training recovers, not how much of the
    old block a projection could keep. Within a Sequential the block's other
    children become ``nn.Identity`` so every other module keeps its name (and
    its state-dict key). Nothing else of the network changes.

    Args:
        model: Network with the block (e.g. a fresh copy from the caller).
        name: One of :func:`blocks`.
        generator: Seeds the initialisation (drawn on the CPU, then moved to
            the block's device), so copies collapsed with equally seeded
            generators start identical.

    Raises:
        ValueError: ``name`` is not a collapsible block of ``model``.
    """
    found = {b.name: b for b in _find_blocks(model)}
    block = found.get(name)
    if block is None:
        raise ValueError(f"{name!r} is not a collapsible block; the network has {sorted(found)}")
    old = block.parent.get_submodule(block.children[0])
    reference = next(old.parameters())
    layer = CollapsedBlock(block.c_in, block.c_out, block.stride)
    nn.init.kaiming_normal_(
        layer.conv.weight, mode="fan_out", nonlinearity="relu", generator=generator
    )
    layer.to(device=reference.device, dtype=reference.dtype)
    layer.train(old.training)
    setattr(block.parent, block.children[0], layer)
    for child in block.children[1:]:
        setattr(block.parent, child, nn.Identity())


def _find_blocks(model: nn.Module) -> list[_Block]:
    found: list[_Block] = []
    inside: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(f"{prefix}.") for prefix in inside):
            continue
        if isinstance(module, BasicBlock):
            parent, _, child = path.rpartition(".")
            c_in, c_out = module.conv1.in_channels, module.conv2.out_channels
            stride = module.conv1.stride[0]
            found.append(_Block(path, model.get_submodule(parent), (child,), c_in, c_out, stride))
            inside.append(path)
        elif isinstance(module, nn.Sequential):
            found.extend(_runs(path, module))
    return found


def _runs(path: str, seq: nn.Sequential) -> list[_Block]:
    """Maximal runs of >= 2 same-resolution conv units among ``seq``'s children."""
    runs: list[list[int]] = [[]]
    children = list(seq)
    for i, child in enumerate(children):
        if isinstance(child, _RUN_MEMBERS) and _keeps_resolution(child):
            runs[-1].append(i)
        elif runs[-1]:
            runs.append([])
    found = []
    for run in runs:
        convs = [i for i in run if isinstance(children[i], nn.Conv2d)]
        if len(convs) < 2:
            continue
        members = run[run.index(convs[0]) :]
        first, last = children[convs[0]], children[convs[-1]]
        assert isinstance(first, nn.Conv2d) and isinstance(last, nn.Conv2d)
        name = ".".join(filter(None, (path, f"{members[0]}-{members[-1]}")))
        children_ = tuple(str(i) for i in members)
        found.append(_Block(name, seq, children_, first.in_channels, last.out_channels, 1))
    return found


def _keeps_resolution(module: nn.Module) -> bool:
    if not isinstance(module, nn.Conv2d):
        return True
    k_h, k_w = module.kernel_size
    same = k_h % 2 == 1 and k_w % 2 == 1 and module.padding == (k_h // 2, k_w // 2)
    return same and module.stride == (1, 1) and module.dilation == (1, 1) and module.groups == 1
