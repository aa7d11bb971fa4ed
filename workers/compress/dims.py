"""Channel dimensions as sums of group segments, and the polynomial terms they multiply into.

An exact cost polynomial (:mod:`workers.compress.profiling`) is a sum of
products of channel dimensions. This module says which channel groups make
up each dimension of each layer (:func:`dimension_map`, :func:`segments_of`)
and expands products of dimensions into :class:`~search.profile.Term` lists
(:func:`terms_of`, :func:`conv_terms`), so that the op counter
(:mod:`workers.compress.opcount`) and the rank slots of the profile share one
bookkeeping of segments.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable

from torch import nn

from search.profile import Term
from workers.compress.groups import ChannelGroup, is_depthwise
from workers.errors import ProfileBuildError

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)

# One segment of a channel dimension: (group index or None for fixed, elements
# per unit of the group or 1, elements it covers in the unpruned network).
Segment = tuple[int | None, int, int]
# A channel dimension: the sum of its segments.
Dim = tuple[Segment, ...]
# ``(module name, "in"|"out") -> {group index: (elements per unit, elements)}``
DimMap = dict[tuple[str, str], dict[int, tuple[int, int]]]


def dimension_map(model: nn.Module, groups: list[ChannelGroup]) -> DimMap:
    """The groups that make up every pruned dimension, with their multipliers.

    The multiplier is the number of elements per unit of the group: 1 for
    convs and BN, ``H*W`` for a linear layer fed by a flattened feature map,
    times the group's parts where grouped convs cut it in parts. A dimension
    fed by a concatenation holds several groups.
    """
    names = {module: name for name, module in model.named_modules()}
    dims: DimMap = {}
    for index, g in enumerate(groups):
        dg = g.group._DG
        for dep, idxs in g.group:
            module = dep.target.module
            if module not in names:
                continue
            name = names[module]
            size = len(idxs)
            if size % g.units:
                raise ProfileBuildError(
                    f"{name}: {size} coupled elements are not a multiple of the "
                    f"{g.units} channels of group {g.name}"
                )
            if isinstance(module, BATCH_NORMS):
                sides = ["in", "out"]
            elif dg.is_out_channel_pruning_fn(dep.handler):
                sides = ["out"]
            elif dg.is_in_channel_pruning_fn(dep.handler):
                sides = ["in"]
            else:
                continue
            for side in sides:
                entry = (size // g.units, size)
                if dims.setdefault((name, side), {}).setdefault(index, entry) != entry:
                    raise ProfileBuildError(f"{name} ({side}) is coupled to {g.name} twice")
    return dims


def segments_of(dims: DimMap, name: str, side: str, size: int) -> Dim:
    """The segments of a dimension of ``size`` elements: its groups, then the fixed rest."""
    parts: list[Segment] = [
        (g, mult, covered) for g, (mult, covered) in sorted(dims.get((name, side), {}).items())
    ]
    rest = size - sum(covered for _, _, covered in parts)
    if rest < 0:
        raise ProfileBuildError(f"{name} ({side}): its groups hold more than its {size} channels")
    if rest:
        parts.append((None, rest, rest))
    return tuple(parts)


def kernel_area(module: nn.Conv2d) -> int:
    return int(module.kernel_size[0] * module.kernel_size[1])


def conv_terms(name: str, module: nn.Conv2d, dims: DimMap, coef: float) -> list[Term]:
    """``coef * kernel * C_in/groups * C_out`` (MACs per output position times ``coef``).

    Raises:
        ProfileBuildError: A grouped conv whose channels come from, or go to,
            more than one source, which torch-pruning cannot cut per group.
    """
    d_in = segments_of(dims, name, "in", module.in_channels)
    d_out = segments_of(dims, name, "out", module.out_channels)
    coef *= kernel_area(module)
    if module.groups == 1:
        return terms_of(coef, d_in, d_out)
    if is_depthwise(module):
        if module.in_channels != module.out_channels:
            raise ProfileBuildError(
                f"{name}: a conv with groups == out_channels ({module.groups}) but "
                f"{module.in_channels} input channels is not prunable; use a depthwise conv "
                "(in_channels == out_channels == groups) or a channel multiplier of 1"
            )
        return terms_of(coef, d_out)
    if len(d_in) != 1 or len(d_out) != 1:
        raise ProfileBuildError(
            f"{name}: a grouped conv (groups={module.groups}) that reads or writes a "
            "concatenation cannot be pruned per group; put a 1x1 conv before it"
        )
    return terms_of(coef / module.groups, d_in, d_out)


def terms_of(coef: float, *dims: Dim) -> list[Term]:
    """``coef * prod(dims)``, each dim a sum of segments, expanded into terms."""
    terms = []
    for combo in itertools.product(*dims):
        value, groups = coef, []
        for group, mult, _ in combo:
            value *= mult
            if group is not None:
                groups.append(group)
        terms.append(Term(float(value), tuple(sorted(groups))))
    return terms


def merge_terms(terms: Iterable[Term]) -> tuple[Term, ...]:
    """Sum terms over the same groups, in a canonical order (constant first)."""
    total: dict[tuple[int, ...], float] = defaultdict(float)
    for term in terms:
        total[term.groups] += term.coef
    return tuple(
        Term(coef, groups)
        for groups, coef in sorted(total.items(), key=lambda kv: (len(kv[0]), kv[0]))
    )
