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
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.compress.profiling import channel_groups
from workers.errors import PruneError

_Layer = nn.Conv2d | nn.Linear
_LAYERS = (nn.Conv2d, nn.Linear)


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


@dataclass
class _Rows:
    """Calibration rows of one layer: where they are, the target, and the fit's input."""

    positions: list[Tensor]
    held: list[Tensor]
    target: list[Tensor]
    inputs: list[Tensor]
    current: list[Tensor]


# Every HOLD_OUT-th image of a batch is kept out of the fit to measure it honestly.
HOLD_OUT = 5
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
            layers = _pruned_consumers(pruned, reference, kept, batches[0][0][:1])
            order, shared = _forward_order(pruned, layers, batches[0][0][:1])
            quota = _quotas(max_rows, len(batches))
            generator = torch.Generator().manual_seed(seed)
            rows = _collect_targets(reference, order, layers, batches, quota, generator)
            skipped = [LayerFit(name, math.nan, math.nan, _SHARED) for name in shared]
            # pop: a layer's rows are freed as soon as it is fitted.
            fitted = [_fit_layer(pruned, name, rows.pop(name), batches, ridge) for name in order]
            return fitted + skipped
    finally:
        for module, mode in modes.items():
            module.training = mode


def _pruned_consumers(
    pruned: nn.Module, reference: nn.Module, kept: Mapping[str, Sequence[int]], example: Tensor
) -> dict[str, list[int] | None]:
    """Layers with pruned inputs -> their kept output channels (``None``: all kept).

    Which layers lost input channels is read off the shapes; which output
    channels a layer kept comes from the group its outputs belong to.
    """
    device = next(reference.parameters()).device
    with torch.enable_grad():  # torch-pruning traces the graph through autograd
        dg, groups = channel_groups(reference, example.to(device))
    unknown = sorted(set(kept) - {g.name for g in groups})
    if unknown:
        raise PruneError(f"kept names groups the reference network does not have: {unknown}")
    out_group: dict[nn.Module, list[int]] = {}
    for g in groups:
        if g.name not in kept:
            continue
        for dep, _ in g.group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                out_group[dep.target.module] = sorted(int(i) for i in kept[g.name])
    ref_modules = dict(reference.named_modules())
    found: dict[str, list[int] | None] = {}
    for name, module in pruned.named_modules():
        if not isinstance(module, _LAYERS):
            continue
        ref = ref_modules.get(name)
        if not isinstance(ref, _LAYERS) or type(ref) is not type(module):
            raise PruneError(f"{name}: the pruned network does not match the reference")
        (p_in, p_out), (r_in, r_out) = _dims(module), _dims(ref)
        keep_out = out_group.get(ref)
        expected_out = len(keep_out) if keep_out is not None else r_out
        if p_out != expected_out or p_in > r_in:
            raise PruneError(
                f"{name}: has {p_in} inputs and {p_out} outputs, but the reference has {r_in} "
                f"and the recipe keeps {expected_out} outputs; was the pruned network built "
                "from this reference with this recipe?"
            )
        if p_in < r_in:
            found[name] = keep_out if keep_out is not None and len(keep_out) < r_out else None
    return found


def _dims(module: _Layer) -> tuple[int, int]:
    """(input, output) channels of a conv or features of a linear layer."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def _forward_order(
    pruned: nn.Module, layers: Mapping[str, object], example: Tensor
) -> tuple[list[str], list[str]]:
    """Names of ``layers`` in the order a forward pass calls them, and those called repeatedly.

    A layer called more than once per pass (shared weights) sees several
    inputs; one set of weights cannot be fitted to each call separately.
    """
    modules = dict(pruned.named_modules())
    calls: list[str] = []
    handles = [
        modules[name].register_forward_hook(lambda *_, name=name: calls.append(name))
        for name in layers
    ]
    try:
        pruned(example.to(_device(pruned)))
    finally:
        for handle in handles:
            handle.remove()
    shared = sorted({name for name in calls if calls.count(name) > 1})
    return [name for name in dict.fromkeys(calls) if name not in shared], shared


def _quotas(max_rows: int, count: int) -> list[int]:
    """Rows to draw from each batch: ``max_rows`` spread evenly."""
    base, extra = divmod(max_rows, count)
    return [base + (i < extra) for i in range(count)]


def _row_count(module: _Layer, output: Tensor) -> int:
    """Rows an output offers: one per sample and position for a conv, per sample for a linear."""
    if isinstance(module, nn.Conv2d):
        return output.numel() // output.shape[1]
    return output.numel() // output.shape[-1]


def _output_rows(module: _Layer, output: Tensor, positions: Tensor) -> Tensor:
    """``output`` at the drawn rows, as ``[rows, channels]``, without copying the rest."""
    if isinstance(module, nn.Conv2d):
        spatial = output.shape[2] * output.shape[3]
        channels_last = output.flatten(2).transpose(1, 2)
        return channels_last[positions // spatial, positions % spatial]
    return output.reshape(-1, output.shape[-1]).index_select(0, positions)


def _collect_targets(
    reference: nn.Module,
    order: Sequence[str],
    layers: Mapping[str, list[int] | None],
    batches: Sequence[tuple[Tensor, Tensor]],
    quota: Sequence[int],
    generator: torch.Generator,
) -> dict[str, _Rows]:
    """One pass of the reference per batch: draw each layer's rows and keep their targets."""
    modules = dict(reference.named_modules())
    rows = {name: _Rows([], [], [], [], []) for name in order}
    current: list[int] = [0]

    def hook(name: str, module: nn.Module, output: Tensor) -> None:
        assert isinstance(module, _LAYERS)
        count = _row_count(module, output)
        take = min(quota[current[0]], count)
        positions = torch.randperm(count, generator=generator)[:take].to(output.device)
        target = _output_rows(module, output, positions)
        sample = positions // (count // output.shape[0])
        keep = layers[name]
        if keep is not None:
            target = target[:, torch.tensor(keep, device=output.device)]
        rows[name].positions.append(positions)
        rows[name].held.append(sample % HOLD_OUT == HOLD_OUT - 1)
        rows[name].target.append(target)

    handles = [
        modules[name].register_forward_hook(
            lambda module, _, output, name=name: hook(name, module, output)
        )
        for name in order
    ]
    try:
        for i, (x, _) in enumerate(batches):
            current[0] = i
            reference(x.to(_device(reference)))
    finally:
        for handle in handles:
            handle.remove()
    return rows


def _fit_layer(
    pruned: nn.Module,
    name: str,
    rows: _Rows,
    batches: Sequence[tuple[Tensor, Tensor]],
    ridge: float,
) -> LayerFit:
    """Gather the layer's current inputs in ``pruned``, solve, and write the weights back."""
    module = pruned.get_submodule(name)
    assert isinstance(module, _LAYERS)
    note = _unsupported(module)
    batch = [0]

    def hook(_: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        positions = rows.positions[batch[0]].to(output.device)
        rows.current.append(_output_rows(module, output, positions))
        if not note:
            rows.inputs.append(_patches(module, args[0], positions, output))
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        for i, (x, _) in enumerate(batches):
            batch[0] = i
            with contextlib.suppress(_Stop):
                pruned(x.to(_device(pruned)))
    finally:
        handle.remove()
    device = module.weight.device
    target = torch.cat(rows.target).to(device=device, dtype=torch.float64)
    held = torch.cat(rows.held).to(device)
    fit = ~held
    if not held.any() or not fit.any():  # too few images to hold any out: judge in-sample
        held = fit = torch.ones_like(held)
    before = _relative(torch.cat(rows.current)[held].double(), target[held])
    if note:
        return LayerFit(name, before, before, note)
    inputs = torch.cat(rows.inputs).double()
    with_bias = module.bias is not None
    fit_gram, fit_rhs = _normal_equations(inputs[fit], target[fit], with_bias=with_bias)
    penalties = [ridge * step for step in RIDGE_STEPS]
    errors = []
    for penalty in penalties:
        weight, bias = _solve(fit_gram, fit_rhs, penalty, with_bias=with_bias)
        errors.append(_relative(_predict(inputs[held], weight, bias), target[held]))
    best = min(range(len(errors)), key=errors.__getitem__)
    if not errors[best] < before:
        return LayerFit(name, before, before, "no fit lowered the held-out error; left as pruned")
    if fit is not held:  # refit on every row, held-out ones included
        gram, rhs = _normal_equations(inputs[held], target[held], with_bias=with_bias)
        fit_gram, fit_rhs = fit_gram + gram, fit_rhs + rhs
    weight, bias = _solve(fit_gram, fit_rhs, penalties[best], with_bias=with_bias)
    module.weight.copy_(weight.reshape(module.weight.shape).to(module.weight.dtype))
    if bias is not None and module.bias is not None:
        module.bias.copy_(bias.to(module.bias.dtype))
    return LayerFit(name, before, errors[best])


def _unsupported(module: _Layer) -> str:
    """Why a layer cannot be refitted densely, or an empty string."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped/depthwise convolution: a dense fit would break its block structure"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return "only explicit zero padding is reproduced by im2col"
    return ""


def _patches(module: _Layer, x: Tensor, positions: Tensor, output: Tensor) -> Tensor:
    """The layer's input rows at ``positions``: im2col patches for a conv, features for a linear.

    Only the drawn positions are gathered (one strided read per kernel tap):
    unfolding the whole batch would cost as much as the convolution itself.
    Columns follow ``weight.flatten(1)``: input channel major, then kernel row, column.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).index_select(0, positions)
    assert not isinstance(module.padding, str)
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (
        module.kernel_size,
        module.stride,
        module.dilation,
        module.padding,
    )
    height, width = output.shape[2], output.shape[3]
    sample = positions // (height * width)
    row = positions % (height * width) // width * sh
    col = positions % width * sw
    # Channels last, so that each tap reads whole rows of channels (much faster).
    padded = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)
    taps = [padded[sample, row + i * dh, col + j * dw] for i in range(kh) for j in range(kw)]
    return torch.stack(taps, dim=2).flatten(1)


def _normal_equations(inputs: Tensor, target: Tensor, *, with_bias: bool) -> tuple[Tensor, Tensor]:
    """``(X^T X, X^T Y)`` with a column of ones appended to ``X`` for a bias.

    Sums over rows, so the equations of two row sets add up to those of their union.
    """
    if with_bias:
        inputs = torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], 1)
    return inputs.T @ inputs, inputs.T @ target


def _solve(
    gram: Tensor, rhs: Tensor, penalty: float, *, with_bias: bool
) -> tuple[Tensor, Tensor | None]:
    """Ridge solution ``(W, b)`` of the normal equations; the bias is not penalised.

    The penalty is relative to the mean diagonal of the weights' Gram matrix
    (the mean eigenvalue), so it does not depend on the activations' scale.
    """
    features = gram.shape[0] - int(with_bias)
    diagonal = torch.diagonal(gram)[:features]
    scale = float(diagonal.mean())
    ridge = torch.zeros_like(torch.diagonal(gram))
    ridge[:features] = penalty * (scale if scale > 0 else 1.0)
    system = gram + torch.diag(ridge)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        solution = torch.cholesky_solve(rhs, factor)
    else:  # singular (no ridge, too few rows): the minimum-norm solution
        solution = torch.linalg.lstsq(system.cpu(), rhs.cpu(), driver="gelsd").solution
        solution = solution.to(rhs.device)
    return solution[:features].T, (solution[features] if with_bias else None)


def _predict(inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return inputs @ weight.T if bias is None else inputs @ weight.T + bias


def _relative(prediction: Tensor, target: Tensor) -> float:
    norm = float(torch.linalg.vector_norm(target))
    error = float(torch.linalg.vector_norm(prediction - target))
    if norm == 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / norm


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
