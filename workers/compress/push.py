"""The ``push`` option: a fine-tuning regulariser that concentrates the discriminant.

Split from :mod:`workers.compress.criteria` because it changes the weights during
training rather than choosing channels; it shares only the taps and the class
scatter (:mod:`workers.compress.taps`) with the ``discriminant`` criterion it prepares
for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from workers.compress.profiling import ChannelGroup
from workers.compress.taps import Tap, class_scatter, group_taps


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
        self._taps = [t for g in groups for t in group_taps(g)]
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

    def _capture(self, i: int, tap: Tap) -> Callable[[Tensor], None]:
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
    between, within, residual = class_scatter(z, labels)
    eta = between / (between + within + 1e-8)
    cov = residual.T @ residual / z.shape[0]
    std = cov.diagonal().clamp_min(1e-8).sqrt()
    corr = cov / torch.outer(std, std)
    channels = z.shape[1]
    off = (corr.pow(2).sum() - corr.diagonal().pow(2).sum()) / max(channels * (channels - 1), 1)
    spread = eta.sum() / (eta.norm() + 1e-8) / channels**0.5
    return -eta.mean() + decorrelation * off + concentration * spread
