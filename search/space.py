"""SearchSpace: the per-variable keep ratios a sampler may propose.

The space sits between the sampler, which thinks in continuous ratios, and
the network, which only knows whole channels and whole ranks:
:meth:`SearchSpace.counts` is the one place where a ratio becomes a count, so
the cost model, the duplicate check and the built network always agree.

Which variables exist depends on the operator. ``prune`` has one variable per
channel group, exactly as before rank slots existed, so its counts can be
handed to the channel pruner unchanged. ``lowrank`` and ``mixed`` have the
groups followed by one rank per decomposable layer (the profile's
:attr:`~search.profile.ModelProfile.sizes`); ``lowrank`` fixes the groups
at full width, ``mixed`` searches both, so every layer may be pruned,
decomposed, both or neither.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from search import catalogue
from search.errors import SearchError
from search.profile import ModelProfile, kept_channels

OPERATORS = tuple(catalogue.OPERATORS)
GRANULARITIES = ("group", "stage", "network")


@dataclass(frozen=True)
class Variable:
    """One value a sampler proposes, shared by one or more variables of the space.

    Attributes:
        name: Parameter name in the study: ``r012`` for variable 12 alone,
            ``s1`` for every channel group of resolution stage 1, ``ratio``
            for the whole network.
        members: Indices of the space's variables that take this value
            (each clipped into its own bounds).
        low: Smallest bound of the members.
        high: Largest bound of the members.
    """

    name: str
    members: tuple[int, ...]
    low: float
    high: float


@dataclass(frozen=True)
class SearchSpace:
    """Bounds and granularity of the ratio vector for one profile.

    Attributes:
        profile: The network's groups, rank slots and cost model.
        min_ratio: Smallest keep ratio of any searched variable.
        max_ratio: Largest keep ratio of a channel group (1.0: a group may
            stay whole). Ranks always reach 1.0: decomposing a layer is an
            option the search may decline, never a duty.
        round_to: Kept channel counts are multiples of this (hardware-friendly
            widths), except where a group is smaller. Ranks round to 1.
        operator: ``prune``, ``lowrank`` or ``mixed`` (module docstring).
        group_bounds: Optional ``(lo, hi)`` ratio bounds per channel group,
            overriding ``min_ratio``/``max_ratio`` (triage narrows the space
            with them; ``lo == hi`` fixes a group). Ignored by ``lowrank``.
    """

    profile: ModelProfile
    min_ratio: float = 0.1
    max_ratio: float = 1.0
    round_to: int = 1
    operator: str = "prune"
    group_bounds: Sequence[tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.min_ratio <= self.max_ratio <= 1.0:
            raise SearchError(
                f"need 0 < min_ratio <= max_ratio <= 1, got {self.min_ratio}, {self.max_ratio}"
            )
        if self.round_to < 1:
            raise SearchError(f"round_to must be >= 1, got {self.round_to}")
        if self.operator not in OPERATORS:
            raise SearchError(
                f"unknown operator {self.operator!r}; expected one of {', '.join(OPERATORS)}"
            )
        if catalogue.operator(self.operator).decomposes and not self.profile.ranks:
            raise SearchError(f"operator {self.operator!r} needs a profile with rank slots")
        if self.group_bounds is not None:
            bounds = tuple((float(lo), float(hi)) for lo, hi in self.group_bounds)
            if len(bounds) != len(self.profile.groups):
                raise SearchError(
                    f"expected {len(self.profile.groups)} group bounds, got {len(bounds)}"
                )
            if not all(0.0 < lo <= hi <= 1.0 for lo, hi in bounds):
                raise SearchError(f"group bounds need 0 < lo <= hi <= 1, got {bounds}")
            object.__setattr__(self, "group_bounds", bounds)

    @property
    def size(self) -> int:
        """Number of variables: groups, plus rank slots when the operator decomposes."""
        return len(self.sizes)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Unpruned value (channels or full rank) of every variable."""
        if catalogue.operator(self.operator).decomposes:
            return self.profile.sizes
        return self.profile.channels

    @property
    def bounds(self) -> tuple[tuple[float, float], ...]:
        """``(lo, hi)`` ratio bounds of every variable; ``lo == hi`` means fixed."""
        if not catalogue.operator(self.operator).prunes:
            groups = [(1.0, 1.0)] * len(self.profile.groups)
        elif self.group_bounds is not None:
            groups = list(self.group_bounds)
        else:
            groups = [(self.min_ratio, self.max_ratio)] * len(self.profile.groups)
        ranks = [(self.min_ratio, 1.0)] * (self.size - len(groups))
        return tuple(groups + ranks)

    @property
    def searched(self) -> tuple[int, ...]:
        """Indices of the variables a sampler chooses (``lo < hi``)."""
        return tuple(i for i, (lo, hi) in enumerate(self.bounds) if lo < hi)

    @property
    def rank_offset(self) -> int:
        """Index of the first rank variable (equal to :attr:`size` under ``prune``)."""
        return len(self.profile.groups)

    def variables(self, granularity: str = "group") -> tuple[Variable, ...]:
        """What a sampler proposes: one value per searched variable, stage or network.

        ``group`` searches every variable on its own; ``stage`` ties the
        channel groups of one resolution stage (ranks stay per layer), which
        shrinks resnet20's 12 variables to 3 and makes small budgets of
        evaluations go further; ``network`` ties everything (the uniform
        baseline). Fixed variables (``lo == hi``) are never proposed.
        """
        if granularity not in GRANULARITIES:
            raise SearchError(
                f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}"
            )
        bounds, offset = self.bounds, self.rank_offset
        ties: dict[str, list[int]] = {}
        for i in self.searched:
            if granularity == "network":
                name = "ratio"
            elif granularity == "stage" and i < offset:
                name = f"s{self.profile.groups[i].stage}"
            else:
                name = f"r{i:03d}"
            ties.setdefault(name, []).append(i)
        return tuple(
            Variable(
                name,
                tuple(members),
                min(bounds[i][0] for i in members),
                max(bounds[i][1] for i in members),
            )
            for name, members in ties.items()
        )

    def expand(self, granularity: str, values: dict[str, float]) -> tuple[float, ...]:
        """Ratios of every variable from the sampled ``values`` (fixed ones at their bound)."""
        ratios = [lo for lo, _ in self.bounds]
        for var in self.variables(granularity):
            for i in var.members:
                lo, hi = self.bounds[i]
                ratios[i] = min(hi, max(lo, float(values[var.name])))
        return tuple(ratios)

    def collapse(self, granularity: str, ratios: Sequence[float]) -> dict[str, float]:
        """Inverse of :meth:`expand`: a tied value is the mean of its members' ratios."""
        clipped = self.clip(ratios)
        return {
            var.name: sum(clipped[i] for i in var.members) / len(var.members)
            for var in self.variables(granularity)
        }

    def step(self, index: int) -> int:
        """Smallest change of variable ``index``: ``round_to`` channels, or one rank."""
        size = self.sizes[index]
        if index < self.rank_offset and size > self.round_to:
            return self.round_to
        return 1

    def clip(self, ratios: Sequence[float]) -> tuple[float, ...]:
        """Ratios clipped into each variable's bounds."""
        self._check(ratios)
        return tuple(
            min(hi, max(lo, float(r))) for r, (lo, hi) in zip(ratios, self.bounds, strict=True)
        )

    def counts(self, ratios: Sequence[float]) -> tuple[int, ...]:
        """Kept channels, then ranks, for ``ratios`` (the only ratio->count rule)."""
        self._check(ratios)
        return tuple(
            kept_channels(r, size, self.step(i))
            for i, (r, size) in enumerate(zip(ratios, self.sizes, strict=True))
        )

    def flops(self, ratios: Sequence[float]) -> float:
        return self.profile.flops(self.counts(ratios))

    def params(self, ratios: Sequence[float]) -> float:
        return self.profile.params(self.counts(ratios))

    def split(self, counts: Sequence[int]) -> tuple[tuple[int, ...], dict[str, int]]:
        """Channel counts per group and rank per slot name (full where not decomposed)."""
        if len(counts) != self.size:
            raise SearchError(f"expected {self.size} counts, got {len(counts)}")
        offset = self.rank_offset
        ranks = {s.name: int(r) for s, r in zip(self.profile.ranks, counts[offset:], strict=False)}
        return tuple(int(n) for n in counts[:offset]), ranks

    def canonical(self, counts: Sequence[int]) -> tuple[int, ...]:
        """``counts`` with every rank replaced by the rank actually built.

        A rank above its layer's break-even (or above the full rank left by
        channel pruning) builds the same network as the full rank or the
        capped one; canonical counts make equal networks compare (and hash)
        equal for the duplicate check.
        """
        if len(counts) != self.size:
            raise SearchError(f"expected {self.size} counts, got {len(counts)}")
        offset = self.rank_offset
        values = tuple(int(c) for c in counts)
        plans = self.profile.decomposition(values)
        ranks = tuple(
            plans[s.name][0] if s.name in plans else s.full_rank
            for s in self.profile.ranks[: self.size - offset]
        )
        return values[:offset] + ranks

    def _check(self, ratios: Sequence[float]) -> None:
        if len(ratios) != self.size:
            raise SearchError(f"expected {self.size} ratios, got {len(ratios)}")


def candidate_key(counts: Sequence[int]) -> str:
    """Stable hash of a kept-count vector: equal keys mean the same network."""
    return hashlib.sha256(",".join(str(int(c)) for c in counts).encode()).hexdigest()[:32]
