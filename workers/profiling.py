"""Build the ModelProfile of a network: its channel groups and exact cost polynomials.

The search side reasons about candidates without torch, so the worker that
owns the network translates it once into plain data (:mod:`search.profile`).
The polynomial must agree with what :func:`workers.measure.count` reports for
the physically pruned network, otherwise budget repair would accept
candidates that are over budget. We therefore reproduce the op counter of
torch-pruning (``tp.utils.count_ops_and_params``) term by term: it counts,
per forward call of a module and for a batch of one,

* ``Conv2d``: ``k_h*k_w * C_in/groups * C_out * H_out*W_out`` (+ ``C_out*H_out*W_out`` with bias),
* ``Linear``: ``in_features * out_features`` (+ ``out_features`` with bias),
* ``BatchNorm``: input elements, twice when affine,
* ReLU-like activations: output elements,
* pooling modules: input elements,

and nothing else (functional ops such as the residual add or ``flatten`` are
free). Each channel count is either fixed or ``multiplier * n_g`` for one
group ``g``: conv/linear/BN dims are mapped through the dependency graph's
handlers, activations and pools through the autograd graph to the module
that produced their input.

The profile also lists every layer the ``lowrank`` operator may decompose
(:class:`~search.profile.RankSlot`): its channel groups on either side, its
kernel and the output positions seen in the same forward pass, which is all
the cost model needs to price a decomposition exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.utils.op_counter import MODULES_MAPPING

from search.profile import Group, ModelProfile, RankSlot, Term
from workers import lowrank
from workers.errors import ProfileBuildError

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.PReLU, nn.GELU)
_POOLS = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)

# A channel count: (group index or None for fixed, multiplier or fixed size).
Factor = tuple[int | None, int]


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
    """

    name: str
    root: nn.Module
    channels: int
    layers: tuple[str, ...]
    group: tp.Group


def channel_groups(
    model: nn.Module, example_inputs: Tensor
) -> tuple[tp.DependencyGraph, list[ChannelGroup]]:
    """Dependency graph and prunable groups of ``model``, in a deterministic order.

    Groups are ordered by their root's position in ``model.named_modules()``,
    so the profile, the pruner and a re-applied recipe all number them alike.
    The classifier ``model.fc`` is never a root (its outputs are the classes).
    The model's weights, statistics and train/eval mode are left as they were.
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
    ignored = [model.fc] if isinstance(getattr(model, "fc", None), nn.Module) else []
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
        found.append(ChannelGroup(names[root], root, channels, layers, full))
    found.sort(key=lambda g: order[g.root])
    return dg, found


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
            Group(g.name, g.channels, g.layers, _stage(positions[g.name], positions, groups))
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
    dims: dict[tuple[str, str], Factor],
    positions: dict[str, int],
    slices: int,
) -> tuple[RankSlot, ...]:
    """One :class:`RankSlot` per decomposable layer, in ``named_modules`` order."""
    if slices < 1:
        raise ProfileBuildError(f"slices must be at least 1, got {slices}")
    found = []
    for name in lowrank.decomposable(model):
        module = model.get_submodule(name)
        assert isinstance(module, nn.Conv2d | nn.Linear)
        (in_group, in_mult), (out_group, out_mult), kernel = _weight_factors(dims, name, module)
        if out_group is not None and out_mult != 1:
            raise ProfileBuildError(f"{name}: output features are not one per channel")
        c_in, c_out = (
            (module.in_features, module.out_features)
            if isinstance(module, nn.Linear)
            else (module.in_channels, module.out_channels)
        )
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


def _dimension_map(model: nn.Module, groups: list[ChannelGroup]) -> dict[tuple[str, str], Factor]:
    """``(module name, "in"|"out") -> (group, multiplier)`` for every pruned dimension.

    The multiplier is the number of elements per channel: 1 for convs and BN,
    ``H*W`` for a linear layer fed by a flattened feature map.
    """
    names = {module: name for name, module in model.named_modules()}
    dims: dict[tuple[str, str], Factor] = {}
    for index, g in enumerate(groups):
        dg = g.group._DG
        for dep, idxs in g.group:
            module = dep.target.module
            if module not in names:
                continue
            name = names[module]
            size = len(idxs)
            if size % g.channels:
                raise ProfileBuildError(
                    f"{name}: {size} coupled elements are not a multiple of the "
                    f"{g.channels} channels of group {g.name}"
                )
            factor: Factor = (index, size // g.channels)
            if isinstance(module, _BNS):
                sides = ["in", "out"]
            elif dg.is_out_channel_pruning_fn(dep.handler):
                sides = ["out"]
            elif dg.is_in_channel_pruning_fn(dep.handler):
                sides = ["in"]
            else:
                continue
            for side in sides:
                previous = dims.setdefault((name, side), factor)
                if previous != factor:
                    raise ProfileBuildError(f"{name} ({side}) belongs to two groups")
    return dims


def _factor(dims: dict[tuple[str, str], Factor], name: str, side: str, size: int) -> Factor:
    return dims.get((name, side), (None, size))


def _weight_factors(
    dims: dict[tuple[str, str], Factor], name: str, module: nn.Conv2d | nn.Linear
) -> tuple[Factor, Factor, int]:
    """Input and output channel factors of a conv/linear weight, and its kernel area."""
    if isinstance(module, nn.Linear):
        return (
            _factor(dims, name, "in", module.in_features),
            _factor(dims, name, "out", module.out_features),
            1,
        )
    if module.groups != 1:
        raise ProfileBuildError(f"{name}: grouped convolutions are not supported")
    return (
        _factor(dims, name, "in", module.in_channels),
        _factor(dims, name, "out", module.out_channels),
        int(module.kernel_size[0] * module.kernel_size[1]),
    )


def _term(coef: float, *factors: Factor) -> Term:
    """Fold fixed factors into the coefficient; keep group factors as variables."""
    groups: list[int] = []
    for group, value in factors:
        coef *= value
        if group is not None:
            groups.append(group)
    return Term(float(coef), tuple(sorted(groups)))


def _flops_terms(
    model: nn.Module,
    example: Tensor,
    dims: dict[tuple[str, str], Factor],
    positions: dict[str, int],
) -> list[Term]:
    """Run one forward pass with hooks and emit one or two terms per module call.

    ``positions`` receives, per conv/linear layer, its output positions summed
    over its calls (what a decomposition's cost scales with).
    """
    terms: list[Term] = []
    producers: dict[Any, Factor] = {}
    handles = []

    def channel_of(tensor: Tensor, name: str) -> Factor:
        found = _trace_producer(tensor.grad_fn, producers)
        if found is None:
            return (None, int(tensor.shape[1]))
        group, mult = found
        if group is not None and tensor.shape[1] % mult:
            raise ProfileBuildError(f"{name}: cannot map its input channels to a group")
        return found

    def hook(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            c_in, c_out, kernel = _weight_factors(dims, name, module)
            spatial = int(output.shape[2] * output.shape[3])
            positions[name] += spatial
            terms.append(_term(kernel * spatial, c_in, c_out))
            if module.bias is not None:
                terms.append(_term(spatial, c_out))
            producers[output.grad_fn] = c_out
        elif isinstance(module, nn.Linear):
            c_in, c_out, _ = _weight_factors(dims, name, module)
            rows = int(x.numel() // x.shape[-1])
            positions[name] += rows
            terms.append(_term(rows, c_in, c_out))
            if module.bias is not None:
                terms.append(_term(1, c_out))
            producers[output.grad_fn] = c_out
        elif isinstance(module, _BNS):
            channel = _factor(dims, name, "out", module.num_features)
            per_channel = int(x.numel() // x.shape[1])
            terms.append(_term(per_channel * (2 if module.affine else 1), channel))
            producers[output.grad_fn] = channel
        elif isinstance(module, _ACTIVATIONS):
            channel = channel_of(output, name)
            terms.append(_term(int(output.numel() // output.shape[1]), channel))
        elif isinstance(module, _POOLS):
            channel = channel_of(x, name)
            terms.append(_term(int(x.numel() // x.shape[1]), channel))
        else:
            raise ProfileBuildError(
                f"{name}: the op counter counts {type(module).__name__} layers, which the "
                "profile does not model"
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


def _trace_producer(start: Any, producers: dict[Any, Factor]) -> Factor | None:
    """Walk the autograd graph back to the nearest conv/linear/BN output.

    Activations and pools change no channel, so their channel count is that
    of whichever parameterised layer produced their input; through a residual
    add either branch gives the same (coupled) group.
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
        queue.extend(next_fn for next_fn, _ in node.next_functions)
    return None


def _params_terms(model: nn.Module, dims: dict[tuple[str, str], Factor]) -> list[Term]:
    """Parameters of every module, as functions of the groups its dims belong to."""
    terms: list[Term] = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, nn.Conv2d | nn.Linear):
            c_in, c_out, kernel = _weight_factors(dims, name, module)
            terms.append(_term(kernel, c_in, c_out))
            if module.bias is not None:
                terms.append(_term(1, c_out))
        elif isinstance(module, _BNS):
            channel = _factor(dims, name, "out", module.num_features)
            terms.extend(_term(1, channel) for _ in own)
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
