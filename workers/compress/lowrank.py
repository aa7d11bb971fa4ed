"""Low-rank decomposition of conv and linear layers (the ``lowrank`` operator).

A conv ``(C_out, C_in, k_h, k_w)`` is cut along its input channels into ``k``
slices; each slice's weight, flattened to ``(C_out, C_in/k * k_h*k_w)``, is
replaced by its truncated SVD at rank ``r``. The layer becomes two convs:
a ``k_h x k_w`` conv from ``C_in`` to ``k*r`` channels in ``k`` groups (the
right singular vectors; stride, padding and dilation of the original) and a
1x1 conv from ``k*r`` to ``C_out`` (the left singular vectors, summing the
slices, with the original bias). A linear layer becomes two linear layers.

By the Eckart-Young-Mirsky theorem the truncation is the best rank-``r``
approximation of every slice, and its relative error follows from the
singular values alone (:func:`relative_errors`), which is what ALDS needs
to allocate ranks without building anything.

Whether a layer is decomposed at a requested rank, and at which rank and
slices exactly, is decided by :func:`search.profile.factorisation`, the rule
the ModelProfile costs candidates with. Decomposition works on the current
weights, so it composes with channel pruning (prune first, then decompose).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from search.profile import ModelProfile, factorisation
from workers.errors import PruneError
from workers.nets import zoo

Layer = nn.Conv2d | nn.Linear


def decomposable(model: nn.Module) -> list[str]:
    """Names of the layers the operator may decompose, in ``named_modules`` order.

    Ungrouped ``Conv2d`` and ``Linear`` layers, except the classifier
    (:func:`workers.nets.zoo.classifier_of`: its rank bounds the logits every
    class depends on) and layers whose full rank is below 2 (nothing to
    truncate).
    """
    _, classifier = zoo.classifier_of(model)
    return [
        name
        for name, module in model.named_modules()
        if _is_layer(module) and module is not classifier and full_rank(module) >= 2
    ]


def full_rank(layer: nn.Module, slices: int = 1) -> int:
    """Rank of one slice of ``layer``'s current weight (slices fall back to 1 where
    they do not divide the input channels, as :func:`~search.profile.factorisation` does)."""
    c_in, c_out, kernel = _shape(layer)
    k = _slices_of(layer, slices)
    return min(c_out, c_in // k * kernel)


@torch.no_grad()
def singular_values(model: nn.Module, name: str, slices: int = 1) -> Tensor:
    """Singular values of every slice of layer ``name``: ``(k, full_rank)``, float64, CPU."""
    layer = _layer(model, name)
    return torch.linalg.svdvals(_sliced_weight(layer, _slices_of(layer, slices)))


def errors_from_singular_values(values: Tensor) -> list[float]:
    """Relative error at every rank ``r`` (index ``r - 1``) of slices with these singular values.

    Every slice is truncated at the same rank, so the error of the whole
    weight is ``sqrt(sum_slices sum_{i >= r} s_i^2 / sum s^2)`` (Frobenius).
    """
    squares = values.to(torch.float64).reshape(-1, values.shape[-1]) ** 2
    total = float(squares.sum())
    if total == 0.0:
        return [0.0] * int(values.shape[-1])
    per_rank = squares.sum(dim=0)
    # tail[r] = energy left out when every slice keeps its first r values.
    tail = per_rank.flip(0).cumsum(0).flip(0)
    return [math.sqrt(max(0.0, float(t)) / total) for t in [*tail[1:].tolist(), 0.0]]


def relative_errors(model: nn.Module, name: str, slices: int = 1) -> list[float]:
    """Relative error of layer ``name`` decomposed at rank ``r`` (index ``r - 1``)."""
    return errors_from_singular_values(singular_values(model, name, slices))


def error_table(model: nn.Module, profile: ModelProfile) -> list[list[float]]:
    """:func:`relative_errors` of every rank slot of ``profile``, in slot order (ALDS input)."""
    return [relative_errors(model, slot.name, slot.slices) for slot in profile.ranks]


@torch.no_grad()
def decompose(
    model: nn.Module, ranks: Mapping[str, int], slices: Mapping[str, int] | int = 1
) -> dict[str, tuple[int, int]]:
    """Decompose layers of ``model`` in place by truncated SVD of their current weights.

    Args:
        model: Network, possibly channel-pruned already.
        ranks: Requested rank per layer name. A rank at or above the layer's
            break-even leaves it whole; one above its current full rank is capped.
        slices: Input-channel slices per layer name (missing names: 1), or one
            number for all.

    Returns:
        ``{layer: (rank, slices)}`` of the layers actually decomposed: what a
        recipe stores and :func:`restructure` rebuilds.

    Raises:
        PruneError: A name is not a decomposable layer, or a rank is below 1.
    """
    plans = _plans(model, ranks, slices)
    for name, (rank, k) in plans.items():
        layer = _layer(model, name)
        u, s, vh = torch.linalg.svd(_sliced_weight(layer, k), full_matrices=False)
        root = s[:, :rank].sqrt()
        first = vh[:, :rank, :] * root[:, :, None]  # (k, r, C_in/k * kernel)
        second = (u[:, :, :rank] * root[:, None, :]).permute(1, 0, 2)  # (C_out, k, r)
        head, tail = _factors(layer, rank, k)
        head.weight.copy_(first.reshape(head.weight.shape))
        tail.weight.copy_(second.reshape(tail.weight.shape))
        if layer.bias is not None and tail.bias is not None:
            tail.bias.copy_(layer.bias)
        _install(model, name, layer, (head, tail))
    return plans


def restructure(
    model: nn.Module, ranks: Mapping[str, int], slices: Mapping[str, int] | int = 1
) -> dict[str, tuple[int, int]]:
    """Give ``model`` the shapes :func:`decompose` produced, without an SVD.

    Used to load saved weights: every named layer must be decomposed exactly
    at the given rank and slices (as :func:`decompose` returned them), so a
    recipe that asks for anything else is refused rather than silently
    loaded into another architecture.

    Raises:
        PruneError: A name is not a decomposable layer, or the rank and
            slices are not what :func:`decompose` would build for it.
    """
    plans = _plans(model, ranks, slices)
    for name, rank in ranks.items():
        wanted = (int(rank), _requested(slices, name))
        if plans.get(name) != wanted:
            raise PruneError(
                f"layer {name}: rank {wanted[0]} with {wanted[1]} slices is not a valid "
                "decomposition of it (above break-even, above its full rank, or slices "
                "that do not divide its inputs)"
            )
    for name, (rank, k) in plans.items():
        layer = _layer(model, name)
        _install(model, name, layer, _factors(layer, rank, k))
    return plans


def _plans(
    model: nn.Module, ranks: Mapping[str, int], slices: Mapping[str, int] | int
) -> dict[str, tuple[int, int]]:
    plans: dict[str, tuple[int, int]] = {}
    for name, rank in ranks.items():
        layer = _layer(model, name)
        if isinstance(rank, bool) or int(rank) != rank or rank < 1:
            raise PruneError(f"layer {name}: rank must be a positive integer, got {rank!r}")
        k = _requested(slices, name)
        if k < 1:
            raise PruneError(f"layer {name}: slices must be a positive integer, got {k!r}")
        c_in, c_out, kernel = _shape(layer)
        plan = factorisation(
            c_in, c_out, kernel, k if isinstance(layer, nn.Conv2d) else 1, int(rank)
        )
        if plan is not None:
            plans[name] = plan
    return plans


def _requested(slices: Mapping[str, int] | int, name: str) -> int:
    return int(slices) if isinstance(slices, int) else int(slices.get(name, 1))


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _layer(model: nn.Module, name: str) -> Layer:
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        raise PruneError(f"the network has no layer {name!r}") from exc
    if not _is_layer(module):
        raise PruneError(f"{name} is a {type(module).__name__}, not a decomposable layer")
    assert isinstance(module, nn.Conv2d | nn.Linear)
    return module


def _shape(layer: nn.Module) -> tuple[int, int, int]:
    """Input features, output channels and kernel area of a conv/linear layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features, 1
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return layer.in_channels, layer.out_channels, layer.kernel_size[0] * layer.kernel_size[1]
    raise PruneError(f"a {type(layer).__name__} cannot be decomposed")


def _slices_of(layer: nn.Module, slices: int) -> int:
    c_in = _shape(layer)[0]
    return slices if isinstance(layer, nn.Conv2d) and slices >= 1 and c_in % slices == 0 else 1


def _sliced_weight(layer: Layer, k: int) -> Tensor:
    """``(k, C_out, C_in/k * kernel)`` float64 copy of the weight, slice ``i`` on inputs ``i``."""
    w = layer.weight.detach().to("cpu", torch.float64)
    c_out = w.shape[0]
    if isinstance(layer, nn.Linear):
        return w.unsqueeze(0)
    per_slice = w.shape[1] // k
    return w.reshape(c_out, k, per_slice * w.shape[2] * w.shape[3]).permute(1, 0, 2)


def _factors(layer: Layer, rank: int, k: int) -> tuple[Layer, Layer]:
    """The two factor layers of ``layer`` at ``rank`` and ``k`` slices (weights uninitialised)."""
    device, dtype = layer.weight.device, layer.weight.dtype
    bias = layer.bias is not None
    first: Layer
    second: Layer
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False, device=device, dtype=dtype)
        second = nn.Linear(rank, layer.out_features, bias=bias, device=device, dtype=dtype)
    else:
        first = nn.Conv2d(
            layer.in_channels,
            k * rank,
            layer.kernel_size,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=layer.padding,  # type: ignore[arg-type]
            dilation=layer.dilation,  # type: ignore[arg-type]
            groups=k,
            bias=False,
            padding_mode=layer.padding_mode,
            device=device,
            dtype=dtype,
        )
        second = nn.Conv2d(k * rank, layer.out_channels, 1, bias=bias, device=device, dtype=dtype)
    return first, second


def _install(model: nn.Module, name: str, layer: Layer, pair: tuple[Layer, Layer]) -> None:
    """Put the two factors where ``layer`` was, in its train/eval mode."""
    _replace(model, name, nn.Sequential(*pair).train(layer.training))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
