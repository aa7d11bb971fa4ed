"""ModelProfile: the prunable channel groups of a network and its cost model.

The profile is written once per job by the worker that builds the dependency
graph, and read by everything that must reason about a candidate without
building it: the sampler, the budget repair, the API. It is plain data (JSON)
so that the search side never needs torch.

FLOPs (multiply-accumulates) and parameter counts of a channel-pruned network
are a polynomial of degree at most two in the kept channel counts ``n_g`` of
the groups: a conv whose output channels belong to group ``a`` and input
channels to group ``b`` costs ``c * n_a * n_b``; a layer with only one side
pruned is linear in that group; untouched layers are constant. A profile
stores that polynomial as a list of :class:`Term`, which makes the arithmetic
exact rather than estimated.

The ``lowrank`` operator adds one variable per decomposable layer, its rank
(:class:`RankSlot`). A layer decomposed at rank ``r`` with ``k`` input slices
costs ``r * (kernel * C_in + k * C_out)`` per output position instead of
``kernel * C_in * C_out``; the profile adds that difference to the polynomial
for every layer that :func:`factorisation` says is decomposed, so channel
pruning and decomposition combine exactly too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from search.errors import ProfileError

PROFILE_VERSION = 2
# Version 1 profiles (no rank slots) are stored in existing job rows; they still load.
_READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class Group:
    """One prunable channel group: channels removed together.

    Attributes:
        name: Name of the group's root module (for example ``layer1.0.conv1``);
            it identifies the group in recipes and in the API.
        channels: Channels of the unpruned group per part: the variable a
            candidate sets. Equal to its channels, except where grouped
            convolutions cut the group in ``slices`` equal parts.
        layers: Names of the modules whose channels the group couples, so a
            user can see why e.g. every residual conv of a stage moves together.
        stage: Resolution stage of the root's output (0 = largest feature
            map); ``granularity: stage`` gives every group of a stage one
            shared ratio. Profiles written before stages existed read as 0.
        slices: Equal parts the group is cut in (torch-pruning removes the
            same positions from every part of a grouped conv's channels):
            keeping ``n`` keeps ``n * slices`` channels of the network.
    """

    name: str
    channels: int
    layers: tuple[str, ...] = ()
    stage: int = 0
    slices: int = 1

    @property
    def network_channels(self) -> int:
        """Channels of the unpruned network in this group."""
        return self.channels * self.slices


@dataclass(frozen=True)
class Term:
    """``coef * prod(n[g] for g in groups)``; ``groups`` has 0, 1 or 2 entries."""

    coef: float
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class RankSlot:
    """One conv/linear layer that the ``lowrank`` operator may decompose.

    The slot is the cost model of the layer's replacement: a ``kernel``-sized
    conv from ``C_in`` to ``slices * rank`` channels (``slices`` groups), then
    a 1x1 conv to ``C_out`` carrying the original bias. Channel pruning on
    either side changes ``C_in``/``C_out``, so both are tied to their groups.

    Attributes:
        name: Module name of the layer (``layer1.0.conv1``).
        in_channels: Input features of the unpruned layer (conv input
            channels, or ``in_features`` of a linear layer).
        out_channels: Output channels (features) of the unpruned layer.
        full_rank: Rank of one slice of the unpruned weight,
            ``min(C_out, C_in / slices * kernel)``: the rank variable's top,
            where the layer stays whole.
        in_group: Group whose channels are the layer's inputs, or None where
            the input side is not prunable.
        out_group: Group of the layer's output channels, or None.
        in_per_channel: Input features per channel of ``in_group`` (``H*W``
            for a linear layer fed by a flattened map, else 1).
        kernel: Kernel area ``k_h * k_w`` (1 for a linear layer).
        positions: Output positions per image, summed over the layer's calls
            (``H_out * W_out`` of a conv; rows of a linear layer).
        slices: Input-channel slices ``k``, each factorised separately.
        bias: Whether the layer has a bias (kept by the second factor).
    """

    name: str
    in_channels: int
    out_channels: int
    full_rank: int
    in_group: int | None = None
    out_group: int | None = None
    in_per_channel: int = 1
    kernel: int = 1
    positions: int = 1
    slices: int = 1
    bias: bool = False

    def dims(self, counts: Sequence[int]) -> tuple[int, int]:
        """Input features and output channels left by the channel counts ``counts``."""
        c_in = self.in_channels if self.in_group is None else counts[self.in_group]
        c_out = self.out_channels if self.out_group is None else counts[self.out_group]
        return c_in * (1 if self.in_group is None else self.in_per_channel), c_out

    def plan(self, counts: Sequence[int], rank: int) -> tuple[int, int] | None:
        """``(rank, slices)`` this layer is decomposed with, or None (see :func:`factorisation`)."""
        c_in, c_out = self.dims(counts)
        return factorisation(c_in, c_out, self.kernel, self.slices, rank)

    def saving(self, counts: Sequence[int], rank: int) -> int:
        """Weights (MACs per output position) saved by the plan; 0 where the layer stays whole."""
        plan = self.plan(counts, rank)
        if plan is None:
            return 0
        c_in, c_out = self.dims(counts)
        r, k = plan
        return self.kernel * c_in * c_out - r * (self.kernel * c_in + k * c_out)


def factorisation(
    in_channels: int, out_channels: int, kernel: int, slices: int, rank: int
) -> tuple[int, int] | None:
    """How a layer of the given (current) shape is decomposed at ``rank``.

    The one rule that both the cost model and the network builder
    (``workers.compress.lowrank``) follow, so a candidate costs what it will measure:

    * ``slices`` apply only where they divide the input channels (else 1);
    * the rank is capped at the layer's current full rank, which channel
      pruning may have lowered;
    * the layer is decomposed only when that is strictly cheaper than keeping
      it (``r * (kernel*C_in + k*C_out) < kernel*C_in*C_out``). FLOPs and
      parameters both scale with that count, so one test serves both; at full
      rank it never holds, which makes "full rank" mean "not decomposed".

    Returns:
        ``(rank, slices)`` to build, or None where the layer stays as it is.
    """
    if rank < 1 or slices < 1:
        raise ProfileError(f"rank and slices must be positive, got {rank} and {slices}")
    k = slices if in_channels % slices == 0 else 1
    r = min(rank, out_channels, in_channels // k * kernel)
    if r * (kernel * in_channels + k * out_channels) >= kernel * in_channels * out_channels:
        return None
    return r, k


@dataclass(frozen=True)
class ModelProfile:
    """Prunable groups and rank slots of one architecture, and its exact costs.

    A candidate is a vector of *variables*: the kept channels of every group,
    then the rank of every slot (:attr:`sizes` gives their unpruned values).
    Cost functions accept the channel counts alone (nothing decomposed), as
    every caller did before rank slots existed, or the whole vector.
    """

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    groups: tuple[Group, ...]
    flops_terms: tuple[Term, ...]
    params_terms: tuple[Term, ...]
    ranks: tuple[RankSlot, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.groups)
        for term in (*self.flops_terms, *self.params_terms):
            if len(term.groups) > 2 or any(not 0 <= g < n for g in term.groups):
                raise ProfileError(f"term {term} refers to a group outside 0..{n - 1}")
        for slot in self.ranks:
            sides = (slot.in_group, slot.out_group)
            if any(g is not None and not 0 <= g < n for g in sides):
                raise ProfileError(f"rank slot {slot.name} refers to a group outside 0..{n - 1}")
            if slot.full_rank < 1 or slot.slices < 1:
                raise ProfileError(f"rank slot {slot.name} needs full_rank and slices >= 1")

    @property
    def channels(self) -> tuple[int, ...]:
        """Unpruned channel count of every group, in group order."""
        return tuple(g.channels for g in self.groups)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Unpruned value of every variable: group channels, then slot full ranks."""
        return self.channels + tuple(s.full_rank for s in self.ranks)

    @property
    def base_flops(self) -> float:
        """FLOPs (MACs) of the unpruned network."""
        return self.flops(self.channels)

    @property
    def base_params(self) -> float:
        """Parameter count of the unpruned network."""
        return self.params(self.channels)

    def flops(self, values: Sequence[int]) -> float:
        """FLOPs (MACs) of the network at ``values`` (channel counts, then optional ranks)."""
        counts, ranks = self._split(values)
        total = _evaluate(self.flops_terms, counts)
        for slot, rank in zip(self.ranks, ranks, strict=True):
            total -= float(slot.saving(counts, rank) * slot.positions)
        return total

    def params(self, values: Sequence[int]) -> float:
        """Parameters of the network at ``values`` (channel counts, then optional ranks)."""
        counts, ranks = self._split(values)
        total = _evaluate(self.params_terms, counts)
        for slot, rank in zip(self.ranks, ranks, strict=True):
            total -= float(slot.saving(counts, rank))
        return total

    def decomposition(self, values: Sequence[int]) -> dict[str, tuple[int, int]]:
        """``{layer: (rank, slices)}`` of the layers that ``values`` decomposes.

        This is what the worker builds (``workers.compress.lowrank.decompose`` applies
        the same rule) and what an exported recipe stores.
        """
        counts, ranks = self._split(values)
        plans = {}
        for slot, rank in zip(self.ranks, ranks, strict=True):
            plan = slot.plan(counts, rank)
            if plan is not None:
                plans[slot.name] = plan
        return plans

    def _split(self, values: Sequence[int]) -> tuple[Sequence[int], Sequence[int]]:
        n = len(self.groups)
        if len(values) == n:
            return values, tuple(s.full_rank for s in self.ranks)
        if len(values) != n + len(self.ranks):
            expected = f"{n}" if not self.ranks else f"{n} or {n + len(self.ranks)}"
            raise ProfileError(f"expected {expected} channel counts, got {len(values)}")
        return values[:n], values[n:]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (see :meth:`from_dict`)."""
        data = asdict(self)
        data["version"] = PROFILE_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelProfile:
        """Inverse of :meth:`to_dict`; reads version 1 (no rank slots) too."""
        if data.get("version") not in _READABLE_VERSIONS:
            raise ProfileError(f"unsupported profile version {data.get('version')!r}")
        try:
            return cls(
                arch=str(data["arch"]),
                input_shape=tuple(int(v) for v in data["input_shape"]),  # type: ignore[arg-type]
                num_classes=int(data["num_classes"]),
                groups=tuple(
                    Group(
                        str(g["name"]),
                        int(g["channels"]),
                        tuple(g.get("layers", ())),
                        int(g.get("stage", 0)),
                        int(g.get("slices", 1)),
                    )
                    for g in data["groups"]
                ),
                flops_terms=_terms(data["flops_terms"]),
                params_terms=_terms(data["params_terms"]),
                ranks=tuple(_slot(s) for s in data.get("ranks", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"malformed profile: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelProfile:
        return cls.from_dict(json.loads(text))


def kept_channels(ratio: float, channels: int, round_to: int = 1) -> int:
    """Channels a group keeps at ``ratio``: rounded to ``round_to``, never zero.

    Rounding is to the nearest multiple (half up) so that a ratio of 1.0 always
    keeps every channel, and at least one multiple (or all channels, if the
    group is smaller than ``round_to``) survives.
    """
    step = round_to if channels > round_to else 1
    n = math.floor(ratio * channels / step + 0.5) * step
    return int(min(channels, max(step, n)))


def _evaluate(terms: Sequence[Term], counts: Sequence[int]) -> float:
    total = 0.0
    for term in terms:
        value = term.coef
        for g in term.groups:
            value *= counts[g]
        total += value
    return total


def _terms(raw: Sequence[dict[str, Any]]) -> tuple[Term, ...]:
    return tuple(Term(float(t["coef"]), tuple(int(g) for g in t["groups"])) for t in raw)


def _slot(raw: dict[str, Any]) -> RankSlot:
    def group(value: Any) -> int | None:
        return None if value is None else int(value)

    return RankSlot(
        name=str(raw["name"]),
        in_channels=int(raw["in_channels"]),
        out_channels=int(raw["out_channels"]),
        full_rank=int(raw["full_rank"]),
        in_group=group(raw.get("in_group")),
        out_group=group(raw.get("out_group")),
        in_per_channel=int(raw.get("in_per_channel", 1)),
        kernel=int(raw.get("kernel", 1)),
        positions=int(raw.get("positions", 1)),
        slices=int(raw.get("slices", 1)),
        bias=bool(raw.get("bias", False)),
    )
