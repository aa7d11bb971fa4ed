"""Physical channel pruning of whole groups.

A candidate is a channel count per group (from ``search.profile.kept_channels``);
this module decides *which* channels survive and removes the others for real,
so the pruned network is smaller and faster, not merely masked. The kept
indices refer to the unpruned network and are what an exported recipe stores:
re-applying them to a freshly built network reproduces the architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from workers.errors import PruneError
from workers.profiling import ChannelGroup, channel_groups

CRITERIA = ("l1", "l2")


def group_importance(groups: Sequence[ChannelGroup], criterion: str = "l1") -> list[Tensor]:
    """Per-channel importance of every group: the Lp norm over all coupled slices.

    Summing over the conv filters, BN affine parameters and the consumers'
    input slices of a channel (group magnitude) scores a channel by everything
    that would be removed with it, not by one layer alone.
    """
    if criterion not in CRITERIA:
        raise PruneError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
    scorer = tp.importance.GroupMagnitudeImportance(
        p=1 if criterion == "l1" else 2, normalizer=None
    )
    with torch.no_grad():
        return [scorer(g.group).detach().float().cpu() for g in groups]


def top_channels(importance: Tensor, count: int) -> list[int]:
    """Indices of the ``count`` most important channels, sorted ascending.

    Ties keep the lower index (stable sort), so the choice is deterministic.
    """
    order = torch.argsort(-importance, stable=True)
    return sorted(int(i) for i in order[:count])


def prune(
    model: nn.Module,
    counts: Sequence[int],
    *,
    example_inputs: Tensor,
    criterion: str = "l1",
) -> dict[str, list[int]]:
    """Prune ``model`` in place so that group ``g`` keeps ``counts[g]`` channels.

    Importance is computed for every group on the unpruned network first, so
    the result does not depend on the order in which groups are cut (they
    are disjoint).

    Args:
        model: Unpruned network; modified in place.
        counts: Channels to keep per group, in :func:`~workers.profiling.channel_groups`
            order (the profile's order); each in ``1..channels``.
        example_inputs: A batch the network accepts, on the model's device.
        criterion: ``"l1"`` or ``"l2"`` group magnitude.

    Returns:
        Kept original channel indices (sorted) per group name: the recipe.

    Raises:
        PruneError: Wrong number of counts, or a count out of range.
    """
    dg, groups = channel_groups(model, example_inputs)
    if len(counts) != len(groups):
        raise PruneError(f"expected {len(groups)} channel counts, got {len(counts)}")
    for g, n in zip(groups, counts, strict=True):
        if not 1 <= int(n) <= g.channels:
            raise PruneError(f"group {g.name}: cannot keep {n} of {g.channels} channels")
    scores = group_importance(groups, criterion)
    kept = {g.name: top_channels(s, int(n)) for g, s, n in zip(groups, scores, counts, strict=True)}
    _remove_complement(dg, groups, kept)
    return kept


def apply_kept(model: nn.Module, kept: Mapping[str, Sequence[int]], example_inputs: Tensor) -> None:
    """Re-apply a recipe's kept indices to a freshly built, unpruned network.

    Raises:
        PruneError: The recipe names other groups than the network has, or an
            index is out of range, repeated, or a group would keep nothing.
    """
    dg, groups = channel_groups(model, example_inputs)
    expected = {g.name for g in groups}
    if set(kept) != expected:
        missing = sorted(expected - set(kept))
        extra = sorted(set(kept) - expected)
        raise PruneError(
            f"recipe groups do not match the network: missing {missing}, extra {extra}"
        )
    clean: dict[str, list[int]] = {}
    for g in groups:
        idxs = [int(i) for i in kept[g.name]]
        if not idxs:
            raise PruneError(f"group {g.name} would keep no channel")
        if len(set(idxs)) != len(idxs) or not all(0 <= i < g.channels for i in idxs):
            raise PruneError(
                f"group {g.name}: kept indices must be distinct and in 0..{g.channels - 1}"
            )
        clean[g.name] = sorted(idxs)
    _remove_complement(dg, groups, clean)


def kept_counts(kept: Mapping[str, Sequence[int]], names: Sequence[str]) -> list[int]:
    """Channel counts of a recipe in the given group order (e.g. the profile's)."""
    return [len(kept[name]) for name in names]


def _remove_complement(
    dg: tp.DependencyGraph, groups: Sequence[ChannelGroup], kept: Mapping[str, Sequence[int]]
) -> None:
    for g in groups:
        keep = set(kept[g.name])
        remove = [i for i in range(g.channels) if i not in keep]
        if not remove:
            continue
        pruner = dg.get_pruner_of_module(g.root)
        dg.get_pruning_group(g.root, pruner.prune_out_channels, remove).prune()
