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
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from search.errors import ProfileError

PROFILE_VERSION = 1


@dataclass(frozen=True)
class Group:
    """One prunable channel group: channels removed together.

    Attributes:
        name: Name of the group's root module (for example ``layer1.0.conv1``);
            it identifies the group in recipes and in the API.
        channels: Number of channels of the unpruned group.
        layers: Names of the modules whose channels the group couples, so a
            user can see why e.g. every residual conv of a stage moves together.
    """

    name: str
    channels: int
    layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Term:
    """``coef * prod(n[g] for g in groups)``; ``groups`` has 0, 1 or 2 entries."""

    coef: float
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelProfile:
    """Prunable groups of one architecture and the exact cost polynomials."""

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    groups: tuple[Group, ...]
    flops_terms: tuple[Term, ...]
    params_terms: tuple[Term, ...]

    def __post_init__(self) -> None:
        n = len(self.groups)
        for term in (*self.flops_terms, *self.params_terms):
            if len(term.groups) > 2 or any(not 0 <= g < n for g in term.groups):
                raise ProfileError(f"term {term} refers to a group outside 0..{n - 1}")

    @property
    def channels(self) -> tuple[int, ...]:
        """Unpruned channel count of every group, in group order."""
        return tuple(g.channels for g in self.groups)

    @property
    def base_flops(self) -> float:
        """FLOPs (MACs) of the unpruned network."""
        return self.flops(self.channels)

    @property
    def base_params(self) -> float:
        """Parameter count of the unpruned network."""
        return self.params(self.channels)

    def flops(self, counts: Sequence[int]) -> float:
        """FLOPs (MACs) of the network keeping ``counts[g]`` channels of group g."""
        return _evaluate(self.flops_terms, self._checked(counts))

    def params(self, counts: Sequence[int]) -> float:
        """Parameters of the network keeping ``counts[g]`` channels of group g."""
        return _evaluate(self.params_terms, self._checked(counts))

    def _checked(self, counts: Sequence[int]) -> Sequence[int]:
        if len(counts) != len(self.groups):
            raise ProfileError(f"expected {len(self.groups)} channel counts, got {len(counts)}")
        return counts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (see :meth:`from_dict`)."""
        data = asdict(self)
        data["version"] = PROFILE_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelProfile:
        """Inverse of :meth:`to_dict`; rejects profiles of another version."""
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(f"unsupported profile version {data.get('version')!r}")
        try:
            return cls(
                arch=str(data["arch"]),
                input_shape=tuple(int(v) for v in data["input_shape"]),  # type: ignore[arg-type]
                num_classes=int(data["num_classes"]),
                groups=tuple(
                    Group(str(g["name"]), int(g["channels"]), tuple(g.get("layers", ())))
                    for g in data["groups"]
                ),
                flops_terms=_terms(data["flops_terms"]),
                params_terms=_terms(data["params_terms"]),
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
