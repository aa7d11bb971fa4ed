"""The ``similarity`` criterion's clustering, and the fold that goes with it.

Split from :mod:`workers.compress.criteria` because the tree over the channels'
correlations, the replay of its merges and the folding of removed channels
into their kept twins form one piece of state (:class:`Clustering`) that
:func:`workers.compress.criteria.select` builds, cuts and folds; the other criteria
only score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform
from torch import Tensor, nn

from workers.compress.profiling import ChannelGroup
from workers.compress.taps import EPS, Batches, Tap, group_taps, observe


@dataclass(frozen=True, eq=False)
class Clustering:
    """The similarity tree of one group and what fold needs: per-consumer second moments."""

    taps: list[Tap]
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


def clusterings(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches
) -> list[Clustering]:
    taps = [group_taps(g) for g in groups]
    flat = [t for ts in taps for t in ts]
    sums = [torch.zeros(t.channels, dtype=torch.float64) for t in flat]
    grams = [torch.zeros(t.channels, t.channels, dtype=torch.float64) for t in flat]
    counts = [0] * len(flat)

    def see(i: int, r: Tensor) -> None:
        x = r.reshape(r.shape[0], -1).float()
        sums[i] += x.sum(1).double().cpu()
        grams[i] += (x @ x.T).double().cpu()
        counts[i] += x.shape[1]

    observe(model, flat, batches, see)
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
        live = std > 1e-6 * std.max().clamp_min(EPS)
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
            Clustering(list(ts), grams_g, members, links, member_strength, scores.float())
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
