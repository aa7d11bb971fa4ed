"""Recovery without retraining: least-squares reconstruction of the pruned layers.

Removing channels changes every layer that consumed them. He et al. (2017,
arXiv:1707.06168) observe that the surviving input channels can often stand
in for the removed ones: solving a linear least-squares problem for the
consumer's weights, so that its output on calibration data matches the
unpruned network's, recovers much of the accuracy without a single gradient
step. This module does that for every Conv2d/Linear whose *input* channels
were pruned (the option ``reconstruct: true``).

Layers are fitted one at a time in forward order, and each fit uses the
inputs the layer receives in the *pruned* network, whose upstream layers have
already been reconstructed. Its target is the output of the same layer in the
unpruned network. A fit therefore compensates not only for its own missing
input channels but for whatever error the layers before it still leave, so
errors do not accumulate down the network.

This module fits each layer; which layers, and the calibration rows they
are fitted on, come from :mod:`workers.compress.calibration`, the ridge
solve from :mod:`workers.compress.ridge`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workers.compress.calibration import (
    HOLD_OUT,
    LAYERS,
    Layer,
    Rows,
    collect_targets,
    device_of,
    forward_order,
    output_rows,
    patches,
    pruned_consumers,
    quotas,
)
from workers.compress.ridge import normal_equations, predict, relative_error, ridge_solve

__all__ = ["HOLD_OUT", "RIDGE_STEPS", "LayerFit", "reconstruct"]


@dataclass(frozen=True)
class LayerFit:
    """What reconstruction did to one layer.

    Errors are relative (``||y - y_ref|| / ||y_ref||``) between the layer's
    output in the pruned network and in the unpruned one, over its kept output
    channels, on the held-out calibration images (every ``HOLD_OUT``-th image
    of a batch), so that a least-squares fit cannot flatter itself.

    Attributes:
        name: Module name (the same in both networks).
        error_before: Error with the layer's weights as pruning left them (its
            inputs already include the upstream reconstructions).
        error_after: Error of the fit made without the held-out images; the
            weights written are that fit redone on every row, so at least as
            good in expectation. Equal to ``error_before`` when ``note`` is set.
        note: Why the layer was left unchanged; empty when it was refitted.
    """

    name: str
    error_before: float
    error_after: float
    note: str = ""


# The ridge weights tried, as multiples of ``ridge``; the held-out error picks one.
RIDGE_STEPS = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)

_SHARED = "called more than once per forward pass (shared weights); left as pruned"


class _Stop(Exception):
    """Raised by a hook to skip the rest of a forward pass that is no longer needed."""


def reconstruct(
    pruned: nn.Module,
    reference: nn.Module,
    kept: Mapping[str, Sequence[int]],
    batches: Sequence[tuple[Tensor, Tensor]],
    *,
    ridge: float = 1e-3,
    max_rows: int = 20_000,
    seed: int = 0,
) -> list[LayerFit]:
    """Refit, in place, every layer of ``pruned`` whose input channels were removed.

    Each such Conv2d/Linear gets the ridge least-squares weights (and bias,
    where it has one) that map its inputs in ``pruned`` to its outputs in
    ``reference``, restricted to the layer's kept output channels. A conv is
    fitted on im2col patches, one row per output position; at most
    ``max_rows`` positions are drawn at random, spread evenly over the
    batches. Layers are processed in forward order so every fit sees inputs
    that earlier fits already corrected and absorbs the error they leave.

    Every ``HOLD_OUT``-th image of a batch is held out: the ridge weight is
    chosen among ``ridge * RIDGE_STEPS`` by the error on those images, and a
    layer whose held-out error no fit lowers is left as it was. Without this,
    a few calibration images and a wide layer (a classifier with as many
    inputs as images) give a perfect in-sample fit that generalises worse
    than the pruned weights.

    Grouped (incl. depthwise) convolutions are left alone: a dense fit would
    break their block structure. A linear layer fed by a flattened feature
    map (LeNet's ``fc1``) is an ordinary linear fit, since its inputs are
    simply the kept channels' pixels.

    Args:
        pruned: ``reference`` after :func:`workers.compress.prune.prune` or
            :func:`workers.compress.prune.apply_kept` with ``kept``; weights change in place.
        reference: The unpruned network; not modified.
        kept: Kept original channel indices per group name (the recipe).
        batches: Calibration ``(inputs, labels)`` batches; labels are unused.
        ridge: Base Tikhonov weight, relative to the mean input energy per
            feature (scale-free); ``ridge * RIDGE_STEPS`` (0.01x to 1000x) are tried.
        max_rows: Most rows (output positions or samples) per layer's fit.
        seed: Seeds the choice of rows.

    Returns:
        One :class:`LayerFit` per layer with pruned inputs, in forward order
        (layers called more than once per forward pass, left alone, last).

    Raises:
        PruneError: ``kept`` or ``pruned`` do not match ``reference``'s groups.
        ValueError: No batches, or an out-of-range ``ridge``/``max_rows``.
    """
    if not batches:
        raise ValueError("reconstruction needs at least one calibration batch")
    if ridge < 0 or max_rows < 1:
        raise ValueError(f"need ridge >= 0 and max_rows >= 1, got {ridge} and {max_rows}")
    modes = {m: m.training for net in (pruned, reference) for m in net.modules()}
    pruned.eval()
    reference.eval()
    try:
        with torch.no_grad():
            layers = pruned_consumers(pruned, reference, kept, batches[0][0][:1])
            order, shared = forward_order(pruned, layers, batches[0][0][:1])
            quota = quotas(max_rows, len(batches))
            generator = torch.Generator().manual_seed(seed)
            rows = collect_targets(reference, order, layers, batches, quota, generator)
            skipped = [LayerFit(name, math.nan, math.nan, _SHARED) for name in shared]
            # pop: a layer's rows are freed as soon as it is fitted.
            fitted = [_fit_layer(pruned, name, rows.pop(name), batches, ridge) for name in order]
            return fitted + skipped
    finally:
        for module, mode in modes.items():
            module.training = mode


def _fit_layer(
    pruned: nn.Module,
    name: str,
    rows: Rows,
    batches: Sequence[tuple[Tensor, Tensor]],
    ridge: float,
) -> LayerFit:
    """Gather the layer's current inputs in ``pruned``, solve, and write the weights back."""
    module = pruned.get_submodule(name)
    assert isinstance(module, LAYERS)
    note = _unsupported(module)
    batch = [0]

    def hook(_: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        positions = rows.positions[batch[0]].to(output.device)
        rows.current.append(output_rows(module, output, positions))
        if not note:
            rows.inputs.append(patches(module, args[0], positions, output))
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        for i, (x, _) in enumerate(batches):
            batch[0] = i
            with contextlib.suppress(_Stop):
                pruned(x.to(device_of(pruned)))
    finally:
        handle.remove()
    device = module.weight.device
    target = torch.cat(rows.target).to(device=device, dtype=torch.float64)
    held = torch.cat(rows.held).to(device)
    fit = ~held
    if not held.any() or not fit.any():  # too few images to hold any out: judge in-sample
        held = fit = torch.ones_like(held)
    before = relative_error(torch.cat(rows.current)[held].double(), target[held])
    if note:
        return LayerFit(name, before, before, note)
    inputs = torch.cat(rows.inputs).double()
    with_bias = module.bias is not None
    fit_gram, fit_rhs = normal_equations(inputs[fit], target[fit], with_bias=with_bias)
    penalties = [ridge * step for step in RIDGE_STEPS]
    errors = []
    for penalty in penalties:
        weight, bias = ridge_solve(fit_gram, fit_rhs, penalty, with_bias=with_bias)
        errors.append(relative_error(predict(inputs[held], weight, bias), target[held]))
    best = min(range(len(errors)), key=errors.__getitem__)
    if not errors[best] < before:
        return LayerFit(name, before, before, "no fit lowered the held-out error; left as pruned")
    if fit is not held:  # refit on every row, held-out ones included
        gram, rhs = normal_equations(inputs[held], target[held], with_bias=with_bias)
        fit_gram, fit_rhs = fit_gram + gram, fit_rhs + rhs
    weight, bias = ridge_solve(fit_gram, fit_rhs, penalties[best], with_bias=with_bias)
    module.weight.copy_(weight.reshape(module.weight.shape).to(module.weight.dtype))
    if bias is not None and module.bias is not None:
        module.bias.copy_(bias.to(module.bias.dtype))
    return LayerFit(name, before, errors[best])


def _unsupported(module: Layer) -> str:
    """Why a layer cannot be refitted densely, or an empty string."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped/depthwise convolution: a dense fit would break its block structure"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return "only explicit zero padding is reproduced by im2col"
    return ""
