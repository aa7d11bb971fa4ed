"""torch-pruning's op counter, reproduced term by term as polynomials of the group sizes.

``tp.utils.count_ops_and_params`` is what :func:`workers.nets.measure.count`
reports for a physically pruned network. :func:`flops_terms` (one hooked
forward pass) and :func:`params_terms` emit the same counts as
:class:`~search.profile.Term` lists, so the profile built by
:mod:`workers.compress.profiling` agrees with it exactly; that module's
docstring lists what is counted per module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch_pruning.utils.op_counter import MODULES_MAPPING

from search.profile import Term
from workers.compress.dims import BATCH_NORMS, Dim, DimMap, conv_terms, segments_of, terms_of
from workers.errors import ProfileBuildError

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.PReLU, nn.GELU)
POOLS = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


def flops_terms(
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
            terms.extend(conv_terms(name, module, dims, spatial))
            c_out = segments_of(dims, name, "out", module.out_channels)
            if module.bias is not None:
                terms.extend(terms_of(spatial, c_out))
            producers[output.grad_fn] = c_out
        elif isinstance(module, nn.Linear):
            c_in = segments_of(dims, name, "in", module.in_features)
            c_out = segments_of(dims, name, "out", module.out_features)
            rows = int(x.numel() // x.shape[-1])
            positions[name] += rows
            terms.extend(terms_of(rows, c_in, c_out))
            if module.bias is not None:
                terms.extend(terms_of(1, c_out))
            producers[output.grad_fn] = c_out
        elif isinstance(module, BATCH_NORMS):
            channel = segments_of(dims, name, "out", module.num_features)
            per_channel = int(x.numel() // x.shape[1])
            terms.extend(terms_of(per_channel * (2 if module.affine else 1), channel))
            producers[output.grad_fn] = channel
        elif isinstance(module, ACTIVATIONS):
            channel = channel_of(output, name)
            terms.extend(terms_of(int(output.numel() // output.shape[1]), channel))
        elif isinstance(module, POOLS):
            channel = channel_of(x, name)
            terms.extend(terms_of(int(x.numel() // x.shape[1]), channel))
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


def params_terms(model: nn.Module, dims: DimMap) -> list[Term]:
    """Parameters of every module, as functions of the groups its dims belong to."""
    terms: list[Term] = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, nn.Conv2d):
            terms.extend(conv_terms(name, module, dims, 1.0))
            if module.bias is not None:
                terms.extend(terms_of(1, segments_of(dims, name, "out", module.out_channels)))
        elif isinstance(module, nn.Linear):
            c_out = segments_of(dims, name, "out", module.out_features)
            terms.extend(terms_of(1, segments_of(dims, name, "in", module.in_features), c_out))
            if module.bias is not None:
                terms.extend(terms_of(1, c_out))
        elif isinstance(module, BATCH_NORMS):
            channel = segments_of(dims, name, "out", module.num_features)
            for _ in own:
                terms.extend(terms_of(1, channel))
        elif any(key in dims for key in ((name, "in"), (name, "out"))):
            raise ProfileBuildError(f"{name}: pruned {type(module).__name__} is not modelled")
        else:
            terms.append(Term(float(sum(p.numel() for p in own))))
    return terms
