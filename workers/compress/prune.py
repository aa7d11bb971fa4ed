"""Physical channel pruning of whole groups.

A candidate is a channel count per group (from ``search.profile.kept_channels``);
this module removes all but the channels :mod:`workers.compress.criteria` chooses, for real,
so the pruned network is smaller and faster, not merely masked. The kept
indices refer to the unpruned network and are what an exported recipe stores:
re-applying them to a freshly built network reproduces the architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch_pruning as tp
from torch import Tensor, nn

from workers.compress.criteria import (
    CRITERIA,
    DATA_CRITERIA,
    Batches,
    importance,
    select,
    top_channels,
)
from workers.compress.profiling import ChannelGroup, channel_groups
from workers.errors import PruneError

__all__ = [
    "CRITERIA",
    "apply_kept",
    "group_importance",
    "kept_counts",
    "prune",
    "top_channels",
]


def group_importance(groups: Sequence[ChannelGroup], criterion: str = "l1") -> list[Tensor]:
    """Per-channel importance from the weights alone (``l1``, ``l2`` or ``bn_scale``).

    Kept for callers that re-rank channels repeatedly from the current
    weights (dynamic masks); :func:`workers.compress.criteria.importance` is the full API.
    """
    if criterion in DATA_CRITERIA:
        raise PruneError(f"criterion {criterion!r} needs a model and calibration batches")
    # The weight criteria never read the model: a placeholder stands in for it.
    return importance(nn.Module(), groups, criterion)


def prune(
    model: nn.Module,
    counts: Sequence[int],
    *,
    example_inputs: Tensor,
    criterion: str = "l1",
    batches: Batches | None = None,
    fold: bool = False,
) -> dict[str, list[int]]:
    """Prune ``model`` in place so that group ``g`` keeps ``counts[g]`` channels.

    Importance is computed for every group on the unpruned network first, so
    the result does not depend on the order in which groups are cut (they
    are disjoint).

    Args:
        model: Unpruned network; modified in place.
        counts: Channels to keep per group, in :func:`~workers.compress.profiling.channel_groups`
            order (the profile's order); each in ``1..channels``.
        example_inputs: A batch the network accepts, on the model's device.
        criterion: One of :data:`workers.compress.criteria.CRITERIA`.
        batches: Calibration ``(inputs, labels)`` on the model's device; needed
            by the data criteria (:data:`workers.compress.criteria.DATA_CRITERIA`).
        fold: With ``similarity``, fold each removed channel into its kept
            twin in the consumers' weights before cutting (see
            :func:`workers.compress.criteria.select`).

    Returns:
        Kept original channel indices (sorted) per group name: the recipe.

    Raises:
        PruneError: Wrong number of counts, a count out of range, an unknown
            criterion, a data criterion without batches, or ``fold`` with a
            criterion other than ``similarity``.
    """
    dg, groups = channel_groups(model, example_inputs)
    kept = select(model, groups, counts, criterion, batches, fold=fold)
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
        idxs = sorted(int(i) for i in kept[g.name])
        if not idxs:
            raise PruneError(f"group {g.name} would keep no channel")
        if len(set(idxs)) != len(idxs) or not all(0 <= i < g.channels for i in idxs):
            raise PruneError(
                f"group {g.name}: kept indices must be distinct and in 0..{g.channels - 1}"
            )
        if g.expand(i for i in idxs if i < g.units) != idxs:
            raise PruneError(
                f"group {g.name}: grouped convolutions need the same positions kept in each "
                f"of its {g.slices} parts of {g.units} channels"
            )
        clean[g.name] = idxs
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
