"""Torch-Pruning's own pruners as peers of a search, at the same FLOPs and the same fine-tune.

Our ``tp_global`` sampler re-implements Torch-Pruning's global ranking inside
the search; checked only against itself it proves nothing. Here the library
itself prunes: ``tp.pruner.MetaPruner`` with ``GroupMagnitudeImportance(p=2)``
(L2 group magnitude, its default mean normaliser), once with
``global_pruning=True`` (one ranking across layers) and once with
``global_pruning=False`` (every layer loses the same share). Its knob is a
channel ratio, not FLOPs, so the ratio is found by bisection until the
network's FLOPs (counted by Torch-Pruning's own ``count_ops_and_params``, the
counter our cost model matches term by term) are at or just under the target.
No layer keeps less than ``1 - max_pruning_ratio`` of its channels, as
``search.min_ratio`` bounds the search, and the classifier's outputs are never
pruned. The caller then fine-tunes the result exactly as a job's finalize
does and scores it on the whole test set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch_pruning as tp
from torch import Tensor, nn

from workers.nets import measure, zoo

PEERS = {"tp_meta_global": True, "tp_meta_uniform": False}  # name -> global_pruning
BISECTION_STEPS = 25


@dataclass(frozen=True)
class Pruned:
    """A peer's network and how it was reached."""

    model: nn.Module
    pruning_ratio: float
    flops_ratio: float
    params_ratio: float


def prune_to(
    baseline: nn.Module,
    example: Tensor,
    flops_ratio: float,
    *,
    global_pruning: bool,
    min_ratio: float = 0.1,
    tolerance: float = 0.005,
) -> Pruned:
    """The largest Torch-Pruning cut of ``baseline`` whose FLOPs are at most ``flops_ratio``.

    Bisection on ``pruning_ratio`` (FLOPs fall as it rises); stops once the
    FLOPs are within ``tolerance`` under the target.

    Raises:
        ValueError: No ratio reaches the target within the ``min_ratio`` floor.
    """
    _, channels, height, width = example.shape
    shape, device = (channels, height, width), example.device
    base_macs, base_params = measure.count(baseline, shape, device)
    low, high = 0.0, 1.0 - min_ratio
    found: Pruned | None = None
    for _ in range(BISECTION_STEPS):
        ratio = (low + high) / 2
        model = _cut(baseline, example, ratio, global_pruning, 1.0 - min_ratio)
        macs, params = measure.count(model, shape, device)
        if macs / base_macs > flops_ratio:
            low = ratio
            continue
        high = ratio
        found = Pruned(model, ratio, macs / base_macs, params / base_params)
        if flops_ratio - found.flops_ratio <= tolerance:
            break
    if found is None:
        raise ValueError(f"Torch-Pruning cannot reach {flops_ratio:.3f} of the FLOPs")
    return found


def _cut(
    baseline: nn.Module, example: Tensor, ratio: float, global_pruning: bool, max_ratio: float
) -> nn.Module:
    model = copy.deepcopy(baseline).eval()
    _, classifier = zoo.classifier_of(model)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        max_pruning_ratio=max_ratio,
        ignored_layers=[classifier],
    )
    pruner.step()
    return model
