"""SearchSpace: the per-group keep ratios a sampler may propose.

The space sits between the sampler, which thinks in continuous ratios, and
the network, which only knows whole channels: :meth:`SearchSpace.counts`
is the one place where a ratio becomes a channel count, so the cost model,
the duplicate check and the physical pruning always agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from search.errors import SearchError
from search.profile import ModelProfile, kept_channels


@dataclass(frozen=True)
class SearchSpace:
    """Bounds and granularity of the ratio vector for one profile.

    Attributes:
        profile: The network's groups and cost polynomials.
        min_ratio: Smallest keep ratio any group may get.
        max_ratio: Largest keep ratio (1.0: a group may stay whole).
        round_to: Kept channel counts are multiples of this (hardware-friendly
            widths), except where a group is smaller.
    """

    profile: ModelProfile
    min_ratio: float = 0.1
    max_ratio: float = 1.0
    round_to: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.min_ratio <= self.max_ratio <= 1.0:
            raise SearchError(
                f"need 0 < min_ratio <= max_ratio <= 1, got {self.min_ratio}, {self.max_ratio}"
            )
        if self.round_to < 1:
            raise SearchError(f"round_to must be >= 1, got {self.round_to}")

    @property
    def size(self) -> int:
        """Number of searched ratios (one per group)."""
        return len(self.profile.groups)

    def clip(self, ratios: Sequence[float]) -> tuple[float, ...]:
        """Ratios clipped into ``[min_ratio, max_ratio]``."""
        self._check(ratios)
        return tuple(min(self.max_ratio, max(self.min_ratio, float(r))) for r in ratios)

    def counts(self, ratios: Sequence[float]) -> tuple[int, ...]:
        """Kept channels per group for ``ratios`` (the only ratio->count rule)."""
        self._check(ratios)
        return tuple(
            kept_channels(r, c, self.round_to)
            for r, c in zip(ratios, self.profile.channels, strict=True)
        )

    def flops(self, ratios: Sequence[float]) -> float:
        return self.profile.flops(self.counts(ratios))

    def params(self, ratios: Sequence[float]) -> float:
        return self.profile.params(self.counts(ratios))

    def _check(self, ratios: Sequence[float]) -> None:
        if len(ratios) != self.size:
            raise SearchError(f"expected {self.size} ratios, got {len(ratios)}")


def candidate_key(counts: Sequence[int]) -> str:
    """Stable hash of a kept-channel vector: equal keys mean the same network."""
    return hashlib.sha256(",".join(str(int(c)) for c in counts).encode()).hexdigest()[:32]
