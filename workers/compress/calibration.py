"""Calibration rows for reconstruction: which layers to refit, and the rows they are fitted on.

:func:`workers.compress.reconstruct.reconstruct` refits every layer whose
input channels were pruned. This module finds those layers and their forward
order (:func:`pruned_consumers`, :func:`forward_order`), draws each layer's
rows and records their targets in the unpruned network
(:func:`collect_targets`), and reads a layer's rows out of its inputs and
outputs (:func:`patches`, :func:`output_rows`), all with forward hooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.compress.groups import channel_groups
from workers.errors import PruneError

Layer = nn.Conv2d | nn.Linear
LAYERS = (nn.Conv2d, nn.Linear)
# Every HOLD_OUT-th image of a batch is kept out of the fit to measure it honestly.
HOLD_OUT = 5


@dataclass
class Rows:
    """Calibration rows of one layer: where they are, the target, and the fit's input."""

    positions: list[Tensor]
    held: list[Tensor]
    target: list[Tensor]
    inputs: list[Tensor]
    current: list[Tensor]


def pruned_consumers(
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
        if not isinstance(module, LAYERS):
            continue
        ref = ref_modules.get(name)
        if not isinstance(ref, LAYERS) or type(ref) is not type(module):
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


def _dims(module: Layer) -> tuple[int, int]:
    """(input, output) channels of a conv or features of a linear layer."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def forward_order(
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
        pruned(example.to(device_of(pruned)))
    finally:
        for handle in handles:
            handle.remove()
    shared = sorted({name for name in calls if calls.count(name) > 1})
    return [name for name in dict.fromkeys(calls) if name not in shared], shared


def quotas(max_rows: int, count: int) -> list[int]:
    """Rows to draw from each batch: ``max_rows`` spread evenly."""
    base, extra = divmod(max_rows, count)
    return [base + (i < extra) for i in range(count)]


def _row_count(module: Layer, output: Tensor) -> int:
    """Rows an output offers: one per sample and position for a conv, per sample for a linear."""
    if isinstance(module, nn.Conv2d):
        return output.numel() // output.shape[1]
    return output.numel() // output.shape[-1]


def output_rows(module: Layer, output: Tensor, positions: Tensor) -> Tensor:
    """``output`` at the drawn rows, as ``[rows, channels]``, without copying the rest."""
    if isinstance(module, nn.Conv2d):
        spatial = output.shape[2] * output.shape[3]
        channels_last = output.flatten(2).transpose(1, 2)
        return channels_last[positions // spatial, positions % spatial]
    return output.reshape(-1, output.shape[-1]).index_select(0, positions)


def collect_targets(
    reference: nn.Module,
    order: Sequence[str],
    layers: Mapping[str, list[int] | None],
    batches: Sequence[tuple[Tensor, Tensor]],
    quota: Sequence[int],
    generator: torch.Generator,
) -> dict[str, Rows]:
    """One pass of the reference per batch: draw each layer's rows and keep their targets."""
    modules = dict(reference.named_modules())
    rows = {name: Rows([], [], [], [], []) for name in order}
    current: list[int] = [0]

    def hook(name: str, module: nn.Module, output: Tensor) -> None:
        assert isinstance(module, LAYERS)
        count = _row_count(module, output)
        take = min(quota[current[0]], count)
        positions = torch.randperm(count, generator=generator)[:take].to(output.device)
        target = output_rows(module, output, positions)
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
            reference(x.to(device_of(reference)))
    finally:
        for handle in handles:
            handle.remove()
    return rows


def patches(module: Layer, x: Tensor, positions: Tensor, output: Tensor) -> Tensor:
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


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
