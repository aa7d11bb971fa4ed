"""Channel selection criteria: which channels of each group survive pruning.

Every criterion scores the channels of a :class:`~workers.compress.profiling.ChannelGroup`
(higher = keep first); :func:`select` turns scores and counts into the kept
indices that :mod:`workers.compress.prune` removes the complement of.

* ``l1`` / ``l2``: group magnitude, the Lp norm over every coupled slice.
* ``bn_scale``: ``|gamma|`` of the group's BatchNorm layers (network slimming).
* ``taylor``: first-order estimate of the loss change when a channel goes.
* ``similarity`` (Zhang et al. 2019, arXiv:1908.02620): channels whose
  responses carry the same information are clustered; one per cluster stays.
* ``discriminant`` (Tian et al. 2020, arXiv:2009.13716): class-separation
  power of a channel's pooled response (Fisher ratio).

The data criteria observe a channel where it is *read*: at the input of the
conv/linear layers that consume the group (for a residual group every
block's first conv, the projection shortcuts and the classifier). That is
what the rest of the network receives from the channel after BN, ReLU,
pooling and residual adds, and what disappears when it is cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from search import catalogue
from workers.compress.profiling import ChannelGroup
from workers.compress.push import DiscriminantPush
from workers.compress.similarity import clusterings
from workers.compress.taps import (
    EPS,
    Batches,
    Slice,
    class_scatter,
    group_slices,
    group_taps,
    observe,
)
from workers.errors import PruneError

__all__ = [
    "CRITERIA",
    "DATA_CRITERIA",
    "FOLDERS",
    "PUSHERS",
    "REGISTRY",
    "Batches",
    "DiscriminantPush",
    "Importance",
    "importance",
    "select",
    "top_channels",
]

CRITERIA = tuple(catalogue.CRITERIA)
DATA_CRITERIA = frozenset(name for name, info in catalogue.CRITERIA.items() if info.needs_data)


class Importance(Protocol):
    """A criterion, like Torch-Pruning's ``Importance``: per group, one score per channel.

    ``batches`` is None for the criteria that read the weights alone.
    """

    def __call__(
        self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches | None
    ) -> list[Tensor]: ...


class Folder(Protocol):
    """Scores like an :class:`Importance`, after folding what ``counts`` removes into what stays."""

    def __call__(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        batches: Batches,
        counts: Sequence[int],
    ) -> list[Tensor]: ...


def _l1(model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches | None) -> list[Tensor]:
    return _magnitude(groups, 1)


def _l2(model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches | None) -> list[Tensor]:
    return _magnitude(groups, 2)


def _bn(model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches | None) -> list[Tensor]:
    return [_bn_scale(g) for g in groups]


def _similar(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches | None
) -> list[Tensor]:
    assert batches is not None
    return [c.scores for c in clusterings(model, groups, batches)]


def _fold_similar(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches, counts: Sequence[int]
) -> list[Tensor]:
    found = clusterings(model, groups, batches)
    for c, n in zip(found, counts, strict=True):
        c.fold(int(n))
    return [c.scores for c in found]


def importance(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    criterion: str,
    batches: Batches | None = None,
) -> list[Tensor]:
    """Per group a float CPU tensor ``[channels]``; higher means keep first.

    ``bn_scale`` sums ``|gamma|`` over the group's coupled BatchNorms; a group
    without BatchNorm falls back to ``l1`` (its scale lives in the filters).
    ``similarity`` scores are ordinal (see :func:`select`). The data criteria
    run ``model`` in eval mode over ``batches`` and leave its mode, ``.grad``,
    ``requires_grad`` flags and BN statistics as they were.

    Raises:
        PruneError: Unknown criterion, or a data criterion without batches.
    """
    _check(criterion, batches)
    return REGISTRY[criterion](model, groups, batches)


def select(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    counts: Sequence[int],
    criterion: str,
    batches: Batches | None = None,
    *,
    fold: bool = False,
) -> dict[str, list[int]]:
    """Kept original indices (sorted) per group name; the model is not pruned here.

    ``counts`` count :attr:`~workers.compress.profiling.ChannelGroup.units`: in a group
    that grouped convolutions cut in parts, scores are averaged over the parts
    (as torch-pruning does) and the same positions are kept in every part.

    ``similarity`` builds, per group, an average-linkage tree over the
    distance ``1 - |corr|`` of the channels' responses (all positions of all
    images, pooled over consumers). Correlation, not a magnitude, because a
    twin that differs only in scale is just as redundant: the consumer can
    absorb the scale. Cutting the tree into ``counts[g]`` clusters and keeping
    each cluster's strongest member (response std times its consumers'
    weight norm) equals keeping the top ``counts[g]`` of the ordinal score
    "merge at which the channel stops representing its cluster", which is
    what :func:`importance` returns. A constant channel carries no
    information and ranks below all others.

    ``fold=True`` (``similarity`` only) then adds each removed channel's
    contribution to its kept twin in every consumer's input weights, in
    place: ``W[:, twin] += a * W[:, removed]`` with ``a`` the least-squares
    scale of the removed response on the twin's at that consumer (no offset:
    the zoo's consumers have no bias to absorb one). Exact for scaled
    duplicates; done only where the group is observed at a conv (``groups=1``)
    or linear consumer, the twin's response is not all zero, and the removed
    channel is not constant.

    Raises:
        PruneError: Unknown criterion, missing batches, wrong number of
            counts, a count outside ``1..channels``, or ``fold`` with another
            criterion.
    """
    _check(criterion, batches)
    if len(counts) != len(groups):
        raise PruneError(f"expected {len(groups)} channel counts, got {len(counts)}")
    for g, n in zip(groups, counts, strict=True):
        if not 1 <= int(n) <= g.units:
            raise PruneError(f"group {g.name}: cannot keep {n} of {g.units} channels")
    if fold and criterion not in FOLDERS:
        raise PruneError(
            f"fold needs a criterion that folds ({', '.join(FOLDERS)}), not {criterion!r}"
        )
    if fold and any(g.slices > 1 for g in groups):
        raise PruneError("fold does not support groups cut in parts by grouped convolutions")
    if fold:
        assert batches is not None
        scores = FOLDERS[criterion](model, groups, batches, counts)
    else:
        scores = importance(model, groups, criterion, batches)
    return {
        g.name: g.expand(top_channels(g.per_unit(s), int(n)))
        for g, s, n in zip(groups, scores, counts, strict=True)
    }


def top_channels(scores: Tensor, count: int) -> list[int]:
    """Indices of the ``count`` highest scores, sorted ascending.

    Ties keep the lower index (stable sort), so the choice is deterministic.
    """
    order = torch.argsort(-scores, stable=True)
    return sorted(int(i) for i in order[:count])


def _check(criterion: str, batches: Batches | None) -> None:
    if criterion not in CRITERIA:
        raise PruneError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
    if criterion in DATA_CRITERIA and not batches:
        raise PruneError(f"criterion {criterion!r} needs calibration batches")


def _magnitude(groups: Sequence[ChannelGroup], p: int) -> list[Tensor]:
    """Lp norm over the filters, BN affine and consumer slices that go with a channel."""
    return _tp(tp.importance.GroupMagnitudeImportance(p=p, normalizer=None), groups)


def _tp(scorer: tp.importance.Importance, groups: Sequence[ChannelGroup]) -> list[Tensor]:
    """Scores of a Torch-Pruning ``Importance`` on each group's dependency group."""
    with torch.no_grad():
        return [scorer(g.group).detach().float().cpu() for g in groups]


def _bn_scale(group: ChannelGroup) -> Tensor:
    scores = torch.zeros(group.channels, dtype=torch.float64)
    found = False
    for s in group_slices(group):
        gamma = getattr(s.module, "weight", None)
        if isinstance(s.module, nn.modules.batchnorm._BatchNorm) and gamma is not None:
            values = gamma.detach().abs().double().cpu()[s.idxs]
            scores.index_add_(0, s.roots, values)
            found = True
    return scores.float() if found else _magnitude([group], 1)[0]


def _taylor(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches | None
) -> list[Tensor]:
    """``|sum of weight * grad|`` over each channel's slices, cross-entropy gradients.

    This is the first-order change of the calibration loss when every
    parameter of the channel is set to zero. Eval mode, so BN uses (and
    keeps) its running statistics; gradients come from ``autograd.grad`` and
    never touch ``.grad``.
    """
    assert batches is not None
    slices = [group_slices(g) for g in groups]
    params: dict[int, Tensor] = {}
    for s in (s for group in slices for s in group):
        for p in _owned(s):
            params.setdefault(id(p), p)
    plist = list(params.values())
    flags = [p.requires_grad for p in plist]
    grads = [torch.zeros_like(p) for p in plist]
    was_training = model.training
    model.eval()
    try:
        for p in plist:
            p.requires_grad_(True)
        with torch.enable_grad():
            for x, y in batches:
                loss = F.cross_entropy(model(x), y) / len(batches)
                found = torch.autograd.grad(loss, plist, allow_unused=True)
                for acc, grad in zip(grads, found, strict=True):
                    if grad is not None:
                        acc += grad
    finally:
        for p, flag in zip(plist, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    index = {id(p): i for i, p in enumerate(plist)}
    result = []
    for g, owned_slices in zip(groups, slices, strict=True):
        total = torch.zeros(g.channels, dtype=torch.float64)
        for s in owned_slices:
            for p in _owned(s):
                prod = (p.detach() * grads[index[id(p)]]).movedim(s.dim, 0)
                prod = prod.reshape(prod.shape[0], -1).sum(1)
                total.index_add_(0, s.roots, prod.double().cpu()[s.idxs])
        result.append(total.abs().float())
    return result


def _owned(s: Slice) -> list[Tensor]:
    """Parameters of a slice: the weight, plus the bias on the output side."""
    names = ("weight", "bias") if s.dim == 0 else ("weight",)
    return [p for p in (getattr(s.module, n, None) for n in names) if isinstance(p, Tensor)]


def _discriminant(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches | None
) -> list[Tensor]:
    """Fisher ratio of each channel's per-image mean response, summed over consumers."""
    assert batches is not None
    taps = [group_taps(g) for g in groups]
    flat = [t for ts in taps for t in ts]
    pooled: list[list[Tensor]] = [[] for _ in flat]
    observe(model, flat, batches, lambda i, r: pooled[i].append(r.mean(2).T.double().cpu()))
    labels = torch.cat([y.cpu() for _, y in batches])
    result, start = [], 0
    for g, ts in zip(groups, taps, strict=True):
        total = torch.zeros(g.channels, dtype=torch.float64)
        for i in range(start, start + len(ts)):
            between, within, _ = class_scatter(torch.cat(pooled[i]), labels)
            informative = between > EPS * (between + within).max().clamp_min(EPS)
            total += torch.where(informative, between / within.clamp_min(EPS), 0.0)
        start += len(ts)
        result.append(total.float())
    return result


# Implementations by catalogue name (tests/test_catalogue.py keeps them equal).
REGISTRY: Mapping[str, Importance] = MappingProxyType(
    {
        "l1": _l1,
        "l2": _l2,
        "bn_scale": _bn,
        "fpgm": lambda model, groups, batches: _tp(tp.importance.FPGMImportance(), groups),
        "taylor": _taylor,
        "similarity": _similar,
        "discriminant": _discriminant,
    }
)
# The criteria that can fold (catalogue ``folds``) and their pre-training (``pushes``).
FOLDERS: Mapping[str, Folder] = MappingProxyType({"similarity": _fold_similar})
PUSHERS: Mapping[str, type[DiscriminantPush]] = MappingProxyType({"discriminant": DiscriminantPush})
