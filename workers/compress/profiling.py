"""Build the ModelProfile of a network: its channel groups and exact cost polynomials.

The search side reasons about candidates without torch, so the worker that
owns the network translates it once into plain data (:mod:`search.profile`).
The polynomial must agree with what :func:`workers.nets.measure.count` reports for
the physically pruned network, otherwise budget repair would accept
candidates that are over budget. We therefore reproduce the op counter of
torch-pruning (``tp.utils.count_ops_and_params``) term by term: it counts,
per forward call of a module and for a batch of one,

* ``Conv2d``: ``k_h*k_w * C_in/groups * C_out * H_out*W_out`` (+ ``C_out*H_out*W_out`` with bias),
* ``Linear``: ``in_features * out_features`` (+ ``out_features`` with bias),
* ``BatchNorm``: input elements, twice when affine,
* ReLU-like activations: output elements,
* pooling modules: input elements,

and nothing else (functional ops such as the residual add, ``flatten``,
``cat`` or a channel-wise product are free). Each channel dimension is a sum
of segments, each fixed or ``multiplier * n_g`` for one group ``g``: one
segment for a plain layer, several where a concatenation (DenseNet) joins
the outputs of several groups. Conv/linear/BN dims are mapped through the
dependency graph's handlers, activations and pools through the autograd
graph to the modules that produced their input (through ``cat`` too).

Grouped convolutions follow torch-pruning: a depthwise conv couples its
input and output channels (one group, ``groups`` shrinks with it); any
other grouped conv keeps its ``groups``, so the channel groups it touches
are cut in ``slices`` equal parts and lose the same positions in every part.
Such a group's variable ``n_g`` counts kept positions per part
(:attr:`ChannelGroup.units`), and the network keeps ``slices * n_g`` channels.

The profile also lists every layer the ``lowrank`` operator may decompose
(:class:`~search.profile.RankSlot`): its channel groups on either side, its
kernel and the output positions seen in the same forward pass, which is all
the cost model needs to price a decomposition exactly.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.utils.op_counter import MODULES_MAPPING

from search.profile import Group, ModelProfile, RankSlot, Term
from workers.compress import lowrank
from workers.errors import ProfileBuildError
from workers.nets import zoo

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.PReLU, nn.GELU)
_POOLS = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)

# One segment of a channel dimension: (group index or None for fixed, elements
# per unit of the group or 1, elements it covers in the unpruned network).
Segment = tuple[int | None, int, int]
# A channel dimension: the sum of its segments.
Dim = tuple[Segment, ...]
# ``(module name, "in"|"out") -> {group index: (elements per unit, elements)}``
DimMap = dict[tuple[str, str], dict[int, tuple[int, int]]]


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """One prunable group as the workers see it.

    Attributes:
        name: Name of the root: the first module (in ``named_modules`` order)
            whose output channels belong to the group. Chosen by model order,
            not by torch-pruning's tracing order, so names read naturally
            (``conv1`` for the first residual stage) and never depend on
            library internals.
        root: The root module; pruning its output channels prunes the group.
        channels: Channel count of the unpruned group.
        layers: Names of the conv/linear/BN modules whose channels it couples.
        group: The torch-pruning group with every channel, for importance.
        slices: Equal parts the channels are cut in (the least common multiple
            of the ``groups`` of the non-depthwise grouped convs it touches;
            1 for most groups). Channel ``i`` is position ``i % units`` of
            part ``i // units``; a part keeps the same positions as the others.
    """

    name: str
    root: nn.Module
    channels: int
    layers: tuple[str, ...]
    group: tp.Group
    slices: int = 1

    @property
    def units(self) -> int:
        """Positions per part: what a candidate's channel count counts."""
        return self.channels // self.slices

    def expand(self, positions: Iterable[int]) -> list[int]:
        """Channel indices (sorted) of kept positions, repeated in every part."""
        kept, units = list(positions), self.units
        return sorted(p + part * units for part in range(self.slices) for p in kept)

    def per_unit(self, scores: Tensor) -> Tensor:
        """Per-channel scores averaged over the parts, as torch-pruning does."""
        return scores.reshape(self.slices, self.units).mean(0) if self.slices > 1 else scores


def channel_groups(
    model: nn.Module, example_inputs: Tensor
) -> tuple[tp.DependencyGraph, list[ChannelGroup]]:
    """Dependency graph and prunable groups of ``model``, in a deterministic order.

    Groups are ordered by their root's position in ``model.named_modules()``,
    so the profile, the pruner and a re-applied recipe all number them alike.
    The classifier (:func:`workers.nets.zoo.classifier_of`) is never a root (its
    outputs are the classes). The model's weights, statistics and
    train/eval mode are left as they were.

    Raises:
        ProfileBuildError: A group's channels do not split into the parts its
            grouped convolutions need.
    """
    names = {module: name for name, module in model.named_modules()}
    order = {module: i for i, module in enumerate(names)}
    # Tracing runs a forward pass: in train mode it would move BN running statistics.
    was_training = model.training
    model.eval()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    finally:
        model.train(was_training)
    ignored = [zoo.classifier_of(model)[1]]
    found: list[ChannelGroup] = []
    for group in dg.get_all_groups(
        ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]
    ):
        outs = [
            dep.target.module
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler)
            and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
        ]
        root = min(outs, key=order.__getitem__)
        pruner = dg.get_pruner_of_module(root)
        channels = int(pruner.get_out_channels(root))
        full = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(channels)))
        members = {dep.target.module for dep, _ in full if dep.target.module in names}
        layers = tuple(names[m] for m in sorted(members, key=order.__getitem__))
        slices = _slices(full)
        if channels % slices:
            raise ProfileBuildError(
                f"{names[root]}: its {channels} channels feed grouped convolutions that need "
                f"them in {slices} equal parts"
            )
        found.append(ChannelGroup(names[root], root, channels, layers, full, slices))
    found.sort(key=lambda g: order[g.root])
    return dg, found


def _slices(group: tp.Group) -> int:
    """Parts a group is cut in: lcm of its non-depthwise grouped convs' ``groups``."""
    slices = 1
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not _depthwise(module):
            slices = math.lcm(slices, module.groups)
    return slices


def _depthwise(module: nn.Conv2d) -> bool:
    """torch-pruning's rule: such a conv couples its input and output channels."""
    return module.groups == module.out_channels and module.out_channels > 1


def build_profile(
    model: nn.Module,
    *,
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    slices: int = 1,
) -> ModelProfile:
    """The :class:`~search.profile.ModelProfile` of an unpruned network.

    Args:
        model: The unpruned network (left unchanged; its mode is restored).
        arch: Zoo name, stored in the profile for the API.
        input_shape: ``(C, H, W)`` of one input image; costs are per image.
        num_classes: Classes of the classifier, stored in the profile.
        slices: Input-channel slices of every decomposable conv (ALDS's
            ``k``); a conv whose inputs it does not divide gets 1, as do
            linear layers.

    Raises:
        ProfileBuildError: The network has a layer whose cost cannot be
            written as an exact polynomial of the group sizes.
    """
    device = next(model.parameters()).device
    example = torch.zeros(1, *input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        _, groups = channel_groups(model, example)
        dims = _dimension_map(model, groups)
        positions: dict[str, int] = defaultdict(int)
        flops = _flops_terms(model, example, dims, positions)
    finally:
        model.train(was_training)
    params = _params_terms(model, dims)
    ranks = _rank_slots(model, dims, positions, slices)
    return ModelProfile(
        arch=arch,
        input_shape=input_shape,
        num_classes=num_classes,
        groups=tuple(
            Group(
                g.name,
                g.units,
                g.layers,
                _stage(positions[g.name], positions, groups),
                g.slices,
            )
            for g in groups
        ),
        flops_terms=_merge(flops),
        params_terms=_merge(params),
        ranks=ranks,
    )


def _stage(spatial: int, positions: dict[str, int], groups: list[ChannelGroup]) -> int:
    """Index of ``spatial`` among the groups' distinct output sizes, largest first."""
    sizes = sorted({positions[g.name] for g in groups}, reverse=True)
    return sizes.index(spatial)


def _rank_slots(
    model: nn.Module,
    dims: DimMap,
    positions: dict[str, int],
    slices: int,
) -> tuple[RankSlot, ...]:
    """One :class:`RankSlot` per decomposable layer, in ``named_modules`` order.

    A layer whose input or output dimension is not a single segment (it reads
    a concatenation, or feeds grouped convolutions) gets no slot: the slot's
    cost model has one group per side. It simply stays undecomposed.
    """
    if slices < 1:
        raise ProfileBuildError(f"slices must be at least 1, got {slices}")
    found = []
    for name in lowrank.decomposable(model):
        module = model.get_submodule(name)
        assert isinstance(module, nn.Conv2d | nn.Linear)
        c_in, c_out = (
            (module.in_features, module.out_features)
            if isinstance(module, nn.Linear)
            else (module.in_channels, module.out_channels)
        )
        d_in, d_out = _dim(dims, name, "in", c_in), _dim(dims, name, "out", c_out)
        if len(d_in) != 1 or len(d_out) != 1 or (d_out[0][1] != 1 and d_out[0][0] is not None):
            continue
        (in_group, in_mult, _), (out_group, _, _) = d_in[0], d_out[0]
        kernel = 1 if isinstance(module, nn.Linear) else _kernel(module)
        # Slices split conv inputs only, and only where they divide them and leave a rank.
        k = slices if isinstance(module, nn.Conv2d) and c_in % slices == 0 else 1
        k = k if lowrank.full_rank(module, k) >= 2 else 1
        found.append(
            RankSlot(
                name=name,
                in_channels=c_in,
                out_channels=c_out,
                full_rank=lowrank.full_rank(module, k),
                in_group=in_group,
                out_group=out_group,
                in_per_channel=in_mult if in_group is not None else 1,
                kernel=kernel,
                positions=positions.get(name, 0),
                slices=k,
                bias=module.bias is not None,
            )
        )
    return tuple(found)


def _dimension_map(model: nn.Module, groups: list[ChannelGroup]) -> DimMap:
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
            if isinstance(module, _BNS):
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


def _dim(dims: DimMap, name: str, side: str, size: int) -> Dim:
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


def _kernel(module: nn.Conv2d) -> int:
    return int(module.kernel_size[0] * module.kernel_size[1])


def _conv_terms(name: str, module: nn.Conv2d, dims: DimMap, coef: float) -> list[Term]:
    """``coef * kernel * C_in/groups * C_out`` (MACs per output position times ``coef``).

    Raises:
        ProfileBuildError: A grouped conv whose channels come from, or go to,
            more than one source, which torch-pruning cannot cut per group.
    """
    d_in = _dim(dims, name, "in", module.in_channels)
    d_out = _dim(dims, name, "out", module.out_channels)
    coef *= _kernel(module)
    if module.groups == 1:
        return _terms_of(coef, d_in, d_out)
    if _depthwise(module):
        if module.in_channels != module.out_channels:
            raise ProfileBuildError(
                f"{name}: a conv with groups == out_channels ({module.groups}) but "
                f"{module.in_channels} input channels is not prunable; use a depthwise conv "
                "(in_channels == out_channels == groups) or a channel multiplier of 1"
            )
        return _terms_of(coef, d_out)
    if len(d_in) != 1 or len(d_out) != 1:
        raise ProfileBuildError(
            f"{name}: a grouped conv (groups={module.groups}) that reads or writes a "
            "concatenation cannot be pruned per group; put a 1x1 conv before it"
        )
    return _terms_of(coef / module.groups, d_in, d_out)


def _terms_of(coef: float, *dims: Dim) -> list[Term]:
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


def _flops_terms(
    model: nn.Module,
    example: Tensor,
    dims: DimMap,
    positions: dict[str, int],
) -> list[Term]:
    """Run one forward pass with hooks and emit the terms of every module call.

    ``positions`` receives, per conv/linear layer, its output positions summed
    over its calls (what a decomposition's cost scales with).
    """
    terms: list[Term] = []
    producers: dict[Any, Dim] = {}
    handles = []

    def channel_of(tensor: Tensor, name: str) -> Dim:
        found = _trace_producer(tensor.grad_fn, producers)
        size = int(tensor.shape[1])
        if found is None:
            return ((None, size, size),)
        if sum(covered for _, _, covered in found) != size:
            raise ProfileBuildError(f"{name}: cannot map its {size} input channels to groups")
        return found

    def hook(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            spatial = int(output.shape[2] * output.shape[3])
            positions[name] += spatial
            terms.extend(_conv_terms(name, module, dims, spatial))
            c_out = _dim(dims, name, "out", module.out_channels)
            if module.bias is not None:
                terms.extend(_terms_of(spatial, c_out))
            producers[output.grad_fn] = c_out
        elif isinstance(module, nn.Linear):
            c_in = _dim(dims, name, "in", module.in_features)
            c_out = _dim(dims, name, "out", module.out_features)
            rows = int(x.numel() // x.shape[-1])
            positions[name] += rows
            terms.extend(_terms_of(rows, c_in, c_out))
            if module.bias is not None:
                terms.extend(_terms_of(1, c_out))
            producers[output.grad_fn] = c_out
        elif isinstance(module, _BNS):
            channel = _dim(dims, name, "out", module.num_features)
            per_channel = int(x.numel() // x.shape[1])
            terms.extend(_terms_of(per_channel * (2 if module.affine else 1), channel))
            producers[output.grad_fn] = channel
        elif isinstance(module, _ACTIVATIONS):
            channel = channel_of(output, name)
            terms.extend(_terms_of(int(output.numel() // output.shape[1]), channel))
        elif isinstance(module, _POOLS):
            channel = channel_of(x, name)
            terms.extend(_terms_of(int(x.numel() // x.shape[1]), channel))
        else:
            raise ProfileBuildError(
                f"{name}: the op counter counts {type(module).__name__} layers, which the "
                "profile does not model (supported: Conv2d, Linear, BatchNorm, ReLU-like "
                "activations, pooling); replace it or ask for support"
            )

    for name, module in model.named_modules():
        if type(module) in MODULES_MAPPING:
            handles.append(module.register_forward_hook(_bind(hook, name)))
    try:
        with torch.enable_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return terms


def _bind(hook: Any, name: str) -> Any:
    def bound(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        hook(name, module, inputs, output)

    return bound


def _trace_producer(start: Any, producers: dict[Any, Dim]) -> Dim | None:
    """Walk the autograd graph back to the conv/linear/BN outputs a tensor is made of.

    Activations, pools, residual adds and channel-wise products change no
    channel, so the nearest parameterised producer gives the dimension
    (through an add or a product either side gives the same, coupled,
    group). A concatenation along channels joins its inputs' dimensions.
    """
    queue = [start]
    seen: set[int] = set()
    while queue:
        node = queue.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node in producers:
            return producers[node]
        if type(node).__name__ == "CatBackward0" and getattr(node, "_saved_dim", None) in (1, -3):
            parts = [_trace_producer(child, producers) for child, _ in node.next_functions]
            if any(part is None for part in parts):
                return None
            return tuple(segment for part in parts if part is not None for segment in part)
        queue.extend(next_fn for next_fn, _ in node.next_functions)
    return None


def _params_terms(model: nn.Module, dims: DimMap) -> list[Term]:
    """Parameters of every module, as functions of the groups its dims belong to."""
    terms: list[Term] = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, nn.Conv2d):
            terms.extend(_conv_terms(name, module, dims, 1.0))
            if module.bias is not None:
                terms.extend(_terms_of(1, _dim(dims, name, "out", module.out_channels)))
        elif isinstance(module, nn.Linear):
            c_out = _dim(dims, name, "out", module.out_features)
            terms.extend(_terms_of(1, _dim(dims, name, "in", module.in_features), c_out))
            if module.bias is not None:
                terms.extend(_terms_of(1, c_out))
        elif isinstance(module, _BNS):
            channel = _dim(dims, name, "out", module.num_features)
            for _ in own:
                terms.extend(_terms_of(1, channel))
        elif any(key in dims for key in ((name, "in"), (name, "out"))):
            raise ProfileBuildError(f"{name}: pruned {type(module).__name__} is not modelled")
        else:
            terms.append(Term(float(sum(p.numel() for p in own))))
    return terms


def _merge(terms: Iterable[Term]) -> tuple[Term, ...]:
    """Sum terms over the same groups, in a canonical order (constant first)."""
    total: dict[tuple[int, ...], float] = defaultdict(float)
    for term in terms:
        total[term.groups] += term.coef
    return tuple(
        Term(coef, groups)
        for groups, coef in sorted(total.items(), key=lambda kv: (len(kv[0]), kv[0]))
    )
