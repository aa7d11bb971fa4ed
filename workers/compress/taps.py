"""Observing a group's channels where the rest of the network reads them.

The data criteria (:mod:`workers.compress.criteria`, :mod:`workers.compress.similarity`) and the
``push`` regulariser (:mod:`workers.compress.push`) all need the same thing: each
channel's responses at the layers that consume the group, one row per
channel. This module finds those layers from the group's parameter slices,
hooks them, and holds the small statistics the users share, so that none of
them has to import another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from workers.compress.profiling import ChannelGroup
from workers.errors import PruneError

# (inputs, labels) on the model's device.
Batches = Sequence[tuple[Tensor, Tensor]]

EPS = 1e-12


@dataclass(frozen=True, eq=False)
class Slice:
    """The part of one layer's parameters that belongs to a group.

    ``dim`` 0 is the output side (filters, biases, BN affine), 1 the input
    side of a consumer; ``idxs[i]`` along ``dim`` belongs to channel ``roots[i]``
    (a linear layer fed by a flattened map has several indices per channel).
    """

    module: nn.Module
    dim: int
    idxs: Tensor
    roots: Tensor


@dataclass(frozen=True, eq=False)
class Tap:
    """Where a group's channels are observed: a consumer's input (or a producer's output).

    ``order`` lists the tapped tensor's channel indices root-major, ``per``
    consecutive entries per group channel, so a response reshapes to one row
    per channel.
    """

    module: nn.Module
    reads: bool
    order: Tensor
    channels: int

    def responses(self, x: Tensor) -> Tensor:
        """``[C, N, L]``: every channel's responses per image at ``L`` positions."""
        if isinstance(self.module, nn.Linear):
            x = x.movedim(-1, 1)
        x = x.flatten(2) if x.ndim > 2 else x.unsqueeze(-1)
        x = x.index_select(1, self.order.to(x.device))
        return x.reshape(x.shape[0], self.channels, -1).transpose(0, 1)

    def in_weight(self) -> Tensor:
        """The consumer's weight as ``[out, C, positions]`` (a copy, in ``order``)."""
        weight = self.module.weight
        assert isinstance(weight, Tensor)
        return (
            weight.detach()
            .index_select(1, self.order.to(weight.device))
            .reshape(weight.shape[0], self.channels, -1)
        )

    def hook(self, see: Callable[[Tensor], None]) -> RemovableHandle:
        if self.reads:
            return self.module.register_forward_pre_hook(lambda _m, args: see(args[0]))
        return self.module.register_forward_hook(lambda _m, _args, out: see(out))


def group_slices(group: ChannelGroup) -> list[Slice]:
    """The conv/linear/BN parameter slices of a group, one per (layer, side)."""
    dg = group.group._DG
    found: dict[tuple[int, int], Slice] = {}
    for item in group.group:
        module, handler = item.dep.target.module, item.dep.handler
        roots = item.root_idxs
        if roots is None or any(r is None for r in roots):
            continue
        producer = isinstance(module, (nn.Conv2d, nn.Linear)) and dg.is_out_channel_pruning_fn(
            handler
        )
        if producer or isinstance(module, nn.modules.batchnorm._BatchNorm):
            dim = 0
        elif (
            isinstance(module, (nn.Conv2d, nn.Linear))
            and getattr(module, "groups", 1) == 1
            and dg.is_in_channel_pruning_fn(handler)
        ):
            dim = 1
        else:
            continue
        found.setdefault(
            (id(module), dim), Slice(module, dim, torch.tensor(item.idxs), torch.tensor(roots))
        )
    return list(found.values())


def group_taps(group: ChannelGroup) -> list[Tap]:
    """The group's consumers, or its producers' outputs if nothing reads it."""
    slices = group_slices(group)
    chosen = [s for s in slices if s.dim == 1] or [
        s for s in slices if s.dim == 0 and isinstance(s.module, (nn.Conv2d, nn.Linear))
    ]
    taps = []
    for s in chosen:
        order = torch.from_numpy(np.lexsort((s.idxs.numpy(), s.roots.numpy())))
        per = len(order) // group.channels
        expected = torch.arange(group.channels).repeat_interleave(per)
        if per and torch.equal(s.roots[order], expected):
            taps.append(Tap(s.module, s.dim == 1, s.idxs[order], group.channels))
    if not taps:
        raise PruneError(f"group {group.name}: no layer where its channels can be observed")
    return taps


def observe(
    model: nn.Module, taps: Sequence[Tap], batches: Batches, see: Callable[[int, Tensor], None]
) -> None:
    """One eval-mode pass over the batches, calling ``see(tap, responses [C, N, L])``."""
    handles = [t.hook(_bind(see, i, t)) for i, t in enumerate(taps)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def _bind(see: Callable[[int, Tensor], None], i: int, tap: Tap) -> Callable[[Tensor], None]:
    return lambda x: see(i, tap.responses(x))


def class_scatter(z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Between- and within-class variance per column of ``z [N, C]``, and the residuals."""
    classes, index = torch.unique(labels, return_inverse=True)
    onehot = F.one_hot(index, len(classes)).to(z.dtype)
    sizes = onehot.sum(0)
    means = (onehot.T @ z) / sizes[:, None]
    between = (sizes[:, None] * (means - z.mean(0)) ** 2).sum(0) / z.shape[0]
    residual = z - means[index]
    return between, residual.pow(2).mean(0), residual
