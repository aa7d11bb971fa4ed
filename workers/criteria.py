"""Channel selection criteria: which channels of each group survive pruning.

Every criterion scores the channels of a :class:`~workers.profiling.ChannelGroup`
(higher = keep first); :func:`select` turns scores and counts into the kept
indices that :mod:`workers.prune` removes the complement of.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from workers.errors import PruneError
from workers.profiling import ChannelGroup

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "similarity", "discriminant")
DATA_CRITERIA = frozenset({"taylor", "similarity", "discriminant"})
# (inputs, labels) on the model's device.
Batches = Sequence[tuple[Tensor, Tensor]]

_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class _Slice:
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
class _Tap:
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
    if criterion in ("l1", "l2"):
        return _magnitude(groups, 1 if criterion == "l1" else 2)
    if criterion == "bn_scale":
        return [_bn_scale(g) for g in groups]
    assert batches is not None
    if criterion == "taylor":
        return _taylor(model, groups, batches)
    if criterion == "similarity":
        return [c.scores for c in _clusterings(model, groups, batches)]
    return _discriminant(model, groups, batches)


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
        if not 1 <= int(n) <= g.channels:
            raise PruneError(f"group {g.name}: cannot keep {n} of {g.channels} channels")
    if fold and criterion != "similarity":
        raise PruneError(f"fold needs criterion 'similarity', not {criterion!r}")
    if criterion == "similarity":
        assert batches is not None
        clusterings = _clusterings(model, groups, batches)
        if fold:
            for c, n in zip(clusterings, counts, strict=True):
                c.fold(int(n))
        scores = [c.scores for c in clusterings]
    else:
        scores = importance(model, groups, criterion, batches)
    return {g.name: top_channels(s, int(n)) for g, s, n in zip(groups, scores, counts, strict=True)}


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
    scorer = tp.importance.GroupMagnitudeImportance(p=p, normalizer=None)
    with torch.no_grad():
        return [scorer(g.group).detach().float().cpu() for g in groups]


def _slices(group: ChannelGroup) -> list[_Slice]:
    """The conv/linear/BN parameter slices of a group, one per (layer, side)."""
    dg = group.group._DG
    found: dict[tuple[int, int], _Slice] = {}
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
            (id(module), dim), _Slice(module, dim, torch.tensor(item.idxs), torch.tensor(roots))
        )
    return list(found.values())


def _bn_scale(group: ChannelGroup) -> Tensor:
    scores = torch.zeros(group.channels, dtype=torch.float64)
    found = False
    for s in _slices(group):
        gamma = getattr(s.module, "weight", None)
        if isinstance(s.module, nn.modules.batchnorm._BatchNorm) and gamma is not None:
            values = gamma.detach().abs().double().cpu()[s.idxs]
            scores.index_add_(0, s.roots, values)
            found = True
    return scores.float() if found else _magnitude([group], 1)[0]


def _taylor(model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches) -> list[Tensor]:
    """``|sum of weight * grad|`` over each channel's slices, cross-entropy gradients.

    This is the first-order change of the calibration loss when every
    parameter of the channel is set to zero. Eval mode, so BN uses (and
    keeps) its running statistics; gradients come from ``autograd.grad`` and
    never touch ``.grad``.
    """
    slices = [_slices(g) for g in groups]
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
    for g, group_slices in zip(groups, slices, strict=True):
        total = torch.zeros(g.channels, dtype=torch.float64)
        for s in group_slices:
            for p in _owned(s):
                prod = (p.detach() * grads[index[id(p)]]).movedim(s.dim, 0)
                prod = prod.reshape(prod.shape[0], -1).sum(1)
                total.index_add_(0, s.roots, prod.double().cpu()[s.idxs])
        result.append(total.abs().float())
    return result


def _owned(s: _Slice) -> list[Tensor]:
    """Parameters of a slice: the weight, plus the bias on the output side."""
    names = ("weight", "bias") if s.dim == 0 else ("weight",)
    return [p for p in (getattr(s.module, n, None) for n in names) if isinstance(p, Tensor)]


def _taps(group: ChannelGroup) -> list[_Tap]:
    """The group's consumers, or its producers' outputs if nothing reads it."""
    slices = _slices(group)
    chosen = [s for s in slices if s.dim == 1] or [
        s for s in slices if s.dim == 0 and isinstance(s.module, (nn.Conv2d, nn.Linear))
    ]
    taps = []
    for s in chosen:
        order = torch.from_numpy(np.lexsort((s.idxs.numpy(), s.roots.numpy())))
        per = len(order) // group.channels
        expected = torch.arange(group.channels).repeat_interleave(per)
        if per and torch.equal(s.roots[order], expected):
            taps.append(_Tap(s.module, s.dim == 1, s.idxs[order], group.channels))
    if not taps:
        raise PruneError(f"group {group.name}: no layer where its channels can be observed")
    return taps


def _observe(
    model: nn.Module, taps: Sequence[_Tap], batches: Batches, see: Callable[[int, Tensor], None]
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


def _bind(see: Callable[[int, Tensor], None], i: int, tap: _Tap) -> Callable[[Tensor], None]:
    return lambda x: see(i, tap.responses(x))


def _discriminant(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches
) -> list[Tensor]:
    """Fisher ratio of each channel's per-image mean response, summed over consumers."""
    taps = [_taps(g) for g in groups]
    flat = [t for ts in taps for t in ts]
    pooled: list[list[Tensor]] = [[] for _ in flat]
    _observe(model, flat, batches, lambda i, r: pooled[i].append(r.mean(2).T.double().cpu()))
    labels = torch.cat([y.cpu() for _, y in batches])
    result, start = [], 0
    for g, ts in zip(groups, taps, strict=True):
        total = torch.zeros(g.channels, dtype=torch.float64)
        for i in range(start, start + len(ts)):
            between, within, _ = _class_scatter(torch.cat(pooled[i]), labels)
            informative = between > _EPS * (between + within).max().clamp_min(_EPS)
            total += torch.where(informative, between / within.clamp_min(_EPS), 0.0)
        start += len(ts)
        result.append(total.float())
    return result


def _class_scatter(z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Between- and within-class variance per column of ``z [N, C]``, and the residuals."""
    classes, index = torch.unique(labels, return_inverse=True)
    onehot = F.one_hot(index, len(classes)).to(z.dtype)
    sizes = onehot.sum(0)
    means = (onehot.T @ z) / sizes[:, None]
    between = (sizes[:, None] * (means - z.mean(0)) ** 2).sum(0) / z.shape[0]
    residual = z - means[index]
    return between, residual.pow(2).mean(0), residual


@dataclass(frozen=True, eq=False)
class _Clustering:
    """The similarity tree of one group and what fold needs: per-consumer second moments."""

    taps: list[_Tap]
    grams: list[Tensor]  # per tap, E[x_i x_j] over positions, [C, C] float64 on CPU
    members: np.ndarray  # channels in the tree (the non-constant ones)
    links: np.ndarray  # scipy linkage over ``members``
    strength: np.ndarray  # per member
    scores: Tensor

    def fold(self, count: int) -> None:
        """Fold every removed member into the kept member of its cluster (see :func:`select`)."""
        steps = len(self.members) - count
        if steps <= 0:
            return
        owner, _ = _replay(self.links, self.strength, steps)
        with torch.no_grad():
            for tap, gram in zip(self.taps, self.grams, strict=True):
                weight = tap.module.weight
                if not tap.reads or not isinstance(weight, Tensor):
                    continue
                per = len(tap.order) // tap.channels
                cols = tap.order.view(tap.channels, per).to(weight.device)
                for m, twin in enumerate(owner):
                    j, k = int(self.members[m]), int(self.members[twin])
                    if j == k or gram[k, k] <= 0:
                        continue
                    scale = float(gram[j, k] / gram[k, k])
                    weight[:, cols[k]] += scale * weight[:, cols[j]]


def _clusterings(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches
) -> list[_Clustering]:
    taps = [_taps(g) for g in groups]
    flat = [t for ts in taps for t in ts]
    sums = [torch.zeros(t.channels, dtype=torch.float64) for t in flat]
    grams = [torch.zeros(t.channels, t.channels, dtype=torch.float64) for t in flat]
    counts = [0] * len(flat)

    def see(i: int, r: Tensor) -> None:
        x = r.reshape(r.shape[0], -1).float()
        sums[i] += x.sum(1).double().cpu()
        grams[i] += (x @ x.T).double().cpu()
        counts[i] += x.shape[1]

    _observe(model, flat, batches, see)
    result, start = [], 0
    for g, ts in zip(groups, taps, strict=True):
        part = range(start, start + len(ts))
        start += len(ts)
        n = sum(counts[i] for i in part)
        mean = torch.stack([sums[i] for i in part]).sum(0) / n
        cov = torch.stack([grams[i] for i in part]).sum(0) / n - torch.outer(mean, mean)
        std = cov.diagonal().clamp_min(0).sqrt()
        strength = torch.zeros(g.channels, dtype=torch.float64)
        for i in part:
            tap_std = (grams[i].diagonal() / counts[i] - (sums[i] / counts[i]) ** 2).clamp_min(0)
            tap_std = tap_std.sqrt()
            if ts[i - part.start].reads:
                norm = ts[i - part.start].in_weight().double().cpu().pow(2).sum((0, 2)).sqrt()
                tap_std = tap_std * norm
            strength += tap_std
        live = std > 1e-6 * std.max().clamp_min(_EPS)
        members = torch.nonzero(live).flatten().numpy()
        corr = cov[live][:, live] / torch.outer(std[live], std[live])
        dist = (1.0 - corr.abs()).clamp(0.0, 1.0).numpy()
        np.fill_diagonal(dist, 0.0)
        links = (
            linkage(squareform(dist, checks=False), method="average")
            if len(members) > 1
            else np.zeros((0, 4))
        )
        member_strength = strength.numpy()[members]
        _, dropped = _replay(links, member_strength, len(members) - 1)
        # Constant channels rank below the tree, by the size of the constant they carry.
        rms = (cov.diagonal() + mean**2).clamp_min(0).sqrt()
        dead = torch.nonzero(~live).flatten()
        scores = torch.zeros(g.channels, dtype=torch.float64)
        scores[dead] = -1.0 / (1.0 + rms[dead])
        scores[torch.from_numpy(members)] = torch.from_numpy(dropped).double()
        grams_g = [grams[i] / counts[i] for i in part]
        result.append(
            _Clustering(list(ts), grams_g, members, links, member_strength, scores.float())
        )
    return result


def _replay(links: np.ndarray, strength: np.ndarray, steps: int) -> tuple[list[int], np.ndarray]:
    """Apply the first ``steps`` merges of a linkage, tracking cluster representatives.

    When two clusters merge, the stronger representative (lower index on a
    tie) stays and the other is dropped at that step. Returns each leaf's
    current representative (leaf positions) and, per leaf, the step at which
    it was dropped (``len(strength) - 1`` for the last survivor).
    """
    n = len(strength)
    rep = list(range(n))
    members: list[list[int]] = [[i] for i in range(n)]
    active = set(range(n))
    dropped = np.full(n, float(max(n - 1, 0)))
    for step in range(steps):
        a, b = int(links[step, 0]), int(links[step, 1])
        ra, rb = rep[a], rep[b]
        win, lose = (ra, rb) if (strength[ra], -ra) >= (strength[rb], -rb) else (rb, ra)
        dropped[lose] = step
        rep.append(win)
        members.append(members[a] + members[b])
        active -= {a, b}
        active.add(n + step)
    owner = [0] * n
    for cluster in active:
        for leaf in members[cluster]:
            owner[leaf] = rep[cluster]
    return owner, dropped


class DiscriminantPush:
    """The ``push`` option: fine-tune with a deep-discriminant regulariser (Tian et al. 2020).

    While active, hooks capture each group's per-image mean response at its
    consumers. :meth:`loss_fn` adds ``weight`` times, averaged over consumers,

    * ``-mean(eta)``, with ``eta`` the share of a channel's variance that is
      between-class (``between / (between + within)``, bounded unlike the
      Fisher ratio): separate the classes;
    * ``decorrelation`` times the mean squared within-class correlation
      between channels: decorrelate, so channels do not share a discriminant;
    * ``concentration`` times ``|eta|_1 / (|eta|_2 sqrt(C))`` (an L1 made
      scale-free, in ``[1/sqrt(C), 1]``): carry the discriminant on few
      channels, so that pruning the rest loses little. Measured on a tiny
      net, 3 is where the top channels' share of the Fisher ratio grows
      while their Fisher ratio still rises; 1 only raises it.

    Usage::

        with DiscriminantPush(model, groups, weight=0.1) as push:
            train.fit(model, split, steps=200, loss_fn=push.loss_fn)
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        *,
        weight: float = 0.1,
        decorrelation: float = 1.0,
        concentration: float = 3.0,
    ) -> None:
        self.model = model
        self.weight = weight
        self.terms = (decorrelation, concentration)
        self._taps = [t for g in groups for t in _taps(g)]
        self._pooled: dict[int, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> DiscriminantPush:
        self._handles = [t.hook(self._capture(i, t)) for i, t in enumerate(self._taps)]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pooled.clear()

    def _capture(self, i: int, tap: _Tap) -> Callable[[Tensor], None]:
        def see(x: Tensor) -> None:
            self._pooled[i] = tap.responses(x).mean(2).T

        return see

    def loss_fn(self, logits: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy plus ``weight`` times the regulariser of the last forward pass."""
        loss = F.cross_entropy(logits, labels)
        pooled = [z for z in self._pooled.values() if z.requires_grad]
        self._pooled.clear()
        if pooled and self.weight:
            terms = [_push_penalty(z.float(), labels, *self.terms) for z in pooled]
            penalty = torch.stack(terms).mean()
            loss = loss + self.weight * penalty
        return loss


def _push_penalty(z: Tensor, labels: Tensor, decorrelation: float, concentration: float) -> Tensor:
    between, within, residual = _class_scatter(z, labels)
    eta = between / (between + within + 1e-8)
    cov = residual.T @ residual / z.shape[0]
    std = cov.diagonal().clamp_min(1e-8).sqrt()
    corr = cov / torch.outer(std, std)
    channels = z.shape[1]
    off = (corr.pow(2).sum() - corr.diagonal().pow(2).sum()) / max(channels * (channels - 1), 1)
    spread = eta.sum() / (eta.norm() + 1e-8) / channels**0.5
    return -eta.mean() + decorrelation * off + concentration * spread
