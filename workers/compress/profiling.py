"""Build the ModelProfile of a network: its channel groups and exact cost polynomials.

The search side reasons about candidates without torch, so the worker that
owns the network translates it once into plain data (:mod:`search.profile`).
The polynomial must agree with what :func:`workers.nets.measure.count` reports for
the physically pruned network, otherwise budget repair would accept
candidates that are over budget. We therefore reproduce the op counter of
torch-pruning (``tp.utils.count_ops_and_params``) term by term: it counts,
per forward call of a module and for a batch of one,

* ``Conv2d``: ``k_h*k_w * C_in/groups * C_out * H_out*W_out`` (+ ``C_out*H_out*W_out`` with bias),
* ``Linear``: ``in_features * out_features`` (+ ``out_features`` with bias),
* ``BatchNorm``: input elements, twice when affine,
* ReLU-like activations: output elements,
* pooling modules: input elements,

and nothing else (functional ops such as the residual add, ``flatten``,
``cat`` or a channel-wise product are free). Each channel dimension is a sum
of segments, each fixed or ``multiplier * n_g`` for one group ``g``: one
segment for a plain layer, several where a concatenation (DenseNet) joins
the outputs of several groups. Conv/linear/BN dims are mapped through the
dependency graph's handlers, activations and pools through the autograd
graph to the modules that produced their input (through ``cat`` too).

Grouped convolutions follow torch-pruning: a depthwise conv couples its
input and output channels (one group, ``groups`` shrinks with it); any
other grouped conv keeps its ``groups``, so the channel groups it touches
are cut in ``slices`` equal parts and lose the same positions in every part.
Such a group's variable ``n_g`` counts kept positions per part
(:attr:`ChannelGroup.units`), and the network keeps ``slices * n_g`` channels.

The profile also lists every layer the ``lowrank`` operator may decompose
(:class:`~search.profile.RankSlot`): its channel groups on either side, its
kernel and the output positions seen in the same forward pass, which is all
the cost model needs to price a decomposition exactly.

This module assembles the profile; its parts live beside it: the channel
groups in :mod:`workers.compress.groups`, the segments of every dimension and
the terms they expand into in :mod:`workers.compress.dims`, and the op
counter's terms in :mod:`workers.compress.opcount`.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from search.profile import Group, ModelProfile, RankSlot
from workers.compress import lowrank
from workers.compress.dims import (
    Dim,
    DimMap,
    Segment,
    dimension_map,
    kernel_area,
    merge_terms,
    segments_of,
)
from workers.compress.groups import ChannelGroup, channel_groups
from workers.compress.opcount import flops_terms, params_terms
from workers.errors import ProfileBuildError

__all__ = [
    "ChannelGroup",
    "Dim",
    "DimMap",
    "Segment",
    "build_profile",
    "channel_groups",
]


def build_profile(
    model: nn.Module,
    *,
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    slices: int = 1,
) -> ModelProfile:
    """The :class:`~search.profile.ModelProfile` of an unpruned network.

    Args:
        model: The unpruned network (left unchanged; its mode is restored).
        arch: Zoo name, stored in the profile for the API.
        input_shape: ``(C, H, W)`` of one input image; costs are per image.
        num_classes: Classes of the classifier, stored in the profile.
        slices: Input-channel slices of every decomposable conv (ALDS's
            ``k``); a conv whose inputs it does not divide gets 1, as do
            linear layers.

    Raises:
        ProfileBuildError: The network has a layer whose cost cannot be
            written as an exact polynomial of the group sizes.
    """
    device = next(model.parameters()).device
    example = torch.zeros(1, *input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        _, groups = channel_groups(model, example)
        dims = dimension_map(model, groups)
        positions: dict[str, int] = defaultdict(int)
        flops = flops_terms(model, example, dims, positions)
    finally:
        model.train(was_training)
    params = params_terms(model, dims)
    ranks = _rank_slots(model, dims, positions, slices)
    return ModelProfile(
        arch=arch,
        input_shape=input_shape,
        num_classes=num_classes,
        groups=tuple(
            Group(
                g.name,
                g.units,
                g.layers,
                _stage(positions[g.name], positions, groups),
                g.slices,
            )
            for g in groups
        ),
        flops_terms=merge_terms(flops),
        params_terms=merge_terms(params),
        ranks=ranks,
    )


def _stage(spatial: int, positions: dict[str, int], groups: list[ChannelGroup]) -> int:
    """Index of ``spatial`` among the groups' distinct output sizes, largest first."""
    sizes = sorted({positions[g.name] for g in groups}, reverse=True)
    return sizes.index(spatial)


def _rank_slots(
    model: nn.Module,
    dims: DimMap,
    positions: dict[str, int],
    slices: int,
) -> tuple[RankSlot, ...]:
    """One :class:`RankSlot` per decomposable layer, in ``named_modules`` order.

    A layer whose input or output dimension is not a single segment (it reads
    a concatenation, or feeds grouped convolutions) gets no slot: the slot's
    cost model has one group per side. It simply stays undecomposed.
    """
    if slices < 1:
        raise ProfileBuildError(f"slices must be at least 1, got {slices}")
    found = []
    for name in lowrank.decomposable(model):
        module = model.get_submodule(name)
        assert isinstance(module, nn.Conv2d | nn.Linear)
        c_in, c_out = (
            (module.in_features, module.out_features)
            if isinstance(module, nn.Linear)
            else (module.in_channels, module.out_channels)
        )
        d_in, d_out = segments_of(dims, name, "in", c_in), segments_of(dims, name, "out", c_out)
        if len(d_in) != 1 or len(d_out) != 1 or (d_out[0][1] != 1 and d_out[0][0] is not None):
            continue
        (in_group, in_mult, _), (out_group, _, _) = d_in[0], d_out[0]
        kernel = 1 if isinstance(module, nn.Linear) else kernel_area(module)
        # Slices split conv inputs only, and only where they divide them and leave a rank.
        k = slices if isinstance(module, nn.Conv2d) and c_in % slices == 0 else 1
        k = k if lowrank.full_rank(module, k) >= 2 else 1
        found.append(
            RankSlot(
                name=name,
                in_channels=c_in,
                out_channels=c_out,
                full_rank=lowrank.full_rank(module, k),
                in_group=in_group,
                out_group=out_group,
                in_per_channel=in_mult if in_group is not None else 1,
                kernel=kernel,
                positions=positions.get(name, 0),
                slices=k,
                bias=module.bias is not None,
            )
        )
    return tuple(found)
