"""Channel groups: the prunable units torch-pruning's dependency graph finds in a network.

The profile, the pruner, the criteria, the masks and reconstruction all
number and cut channels by these groups, so they are found in one place and
in one deterministic order (:func:`channel_groups`). Grouped convolutions
decide how a group's channels are cut (:attr:`ChannelGroup.slices`), see
:mod:`workers.compress.profiling`. That module re-exports
:class:`ChannelGroup` and :func:`channel_groups`, which callers import from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch_pruning as tp
from torch import Tensor, nn

from workers.errors import ProfileBuildError
from workers.nets import zoo


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """One prunable group as the workers see it.

    Attributes:
        name: Name of the root: the first module (in ``named_modules`` order)
            whose output channels belong to the group. Chosen by model order,
            not by torch-pruning's tracing order, so names read naturally
            (``conv1`` for the first residual stage) and never depend on
            library internals.
        root: The root module; pruning its output channels prunes the group.
        channels: Channel count of the unpruned group.
        layers: Names of the conv/linear/BN modules whose channels it couples.
        group: The torch-pruning group with every channel, for importance.
        slices: Equal parts the channels are cut in (the least common multiple
            of the ``groups`` of the non-depthwise grouped convs it touches;
            1 for most groups). Channel ``i`` is position ``i % units`` of
            part ``i // units``; a part keeps the same positions as the others.
    """

    name: str
    root: nn.Module
    channels: int
    layers: tuple[str, ...]
    group: tp.Group
    slices: int = 1

    @property
    def units(self) -> int:
        """Positions per part: what a candidate's channel count counts."""
        return self.channels // self.slices

    def expand(self, positions: Iterable[int]) -> list[int]:
        """Channel indices (sorted) of kept positions, repeated in every part."""
        kept, units = list(positions), self.units
        return sorted(p + part * units for part in range(self.slices) for p in kept)

    def per_unit(self, scores: Tensor) -> Tensor:
        """Per-channel scores averaged over the parts, as torch-pruning does."""
        return scores.reshape(self.slices, self.units).mean(0) if self.slices > 1 else scores


def channel_groups(
    model: nn.Module, example_inputs: Tensor
) -> tuple[tp.DependencyGraph, list[ChannelGroup]]:
    """Dependency graph and prunable groups of ``model``, in a deterministic order.

    Groups are ordered by their root's position in ``model.named_modules()``,
    so the profile, the pruner and a re-applied recipe all number them alike.
    The classifier (:func:`workers.nets.zoo.classifier_of`) is never a root (its
    outputs are the classes). The model's weights, statistics and
    train/eval mode are left as they were.

    Raises:
        ProfileBuildError: A group's channels do not split into the parts its
            grouped convolutions need.
    """
    names = {module: name for name, module in model.named_modules()}
    order = {module: i for i, module in enumerate(names)}
    # Tracing runs a forward pass: in train mode it would move BN running statistics.
    was_training = model.training
    model.eval()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    finally:
        model.train(was_training)
    ignored = [zoo.classifier_of(model)[1]]
    found: list[ChannelGroup] = []
    for group in dg.get_all_groups(
        ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]
    ):
        outs = [
            dep.target.module
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler)
            and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
        ]
        root = min(outs, key=order.__getitem__)
        pruner = dg.get_pruner_of_module(root)
        channels = int(pruner.get_out_channels(root))
        full = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(channels)))
        members = {dep.target.module for dep, _ in full if dep.target.module in names}
        layers = tuple(names[m] for m in sorted(members, key=order.__getitem__))
        slices = _slices(full)
        if channels % slices:
            raise ProfileBuildError(
                f"{names[root]}: its {channels} channels feed grouped convolutions that need "
                f"them in {slices} equal parts"
            )
        found.append(ChannelGroup(names[root], root, channels, layers, full, slices))
    found.sort(key=lambda g: order[g.root])
    return dg, found


def _slices(group: tp.Group) -> int:
    """Parts a group is cut in: lcm of its non-depthwise grouped convs' ``groups``."""
    slices = 1
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not is_depthwise(module):
            slices = math.lcm(slices, module.groups)
    return slices


def is_depthwise(module: nn.Conv2d) -> bool:
    """torch-pruning's rule: such a conv couples its input and output channels."""
    return module.groups == module.out_channels and module.out_channels > 1
