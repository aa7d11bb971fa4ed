"""FLOPs, parameters and latency of a (pruned) network.

``count`` is the reference the ModelProfile is tested against, so it is
torch-pruning's own counter and nothing else. Latency is the median of a few
timed forward passes after warm-up: medians shrug off the odd scheduler
hiccup that would dominate a mean over so few repeats.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

MIN_TIMED = 3  # timed passes a latency median rests on, whatever the budget


def count(
    model: nn.Module, input_shape: tuple[int, int, int], device: str | torch.device = "cpu"
) -> tuple[float, float]:
    """MACs and parameters of ``model`` for one ``(C, H, W)`` input.

    The model is not changed, nor moved (torch-pruning counts on a deep copy;
    a model elsewhere than ``device`` is copied there first).
    """
    dev = torch.device(device)
    first = next(model.parameters(), None)
    if first is not None and first.device != dev:
        model = copy.deepcopy(model).to(dev)
    example = torch.zeros(1, *input_shape, device=dev)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), float(params)


@torch.inference_mode()
def latency_ms(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] = (1, 256),
    warmup: int = 2,
    repeats: int = 5,
    budget_s: float = 1.0,
) -> dict[int, float]:
    """Median forward time in milliseconds per batch size, in eval mode.

    CUDA is synchronised around every timed pass so that the time covers the
    kernels, not just their launch. The model's mode is restored.

    Args:
        model: Network to time (moved to ``device``).
        input_shape: ``(C, H, W)`` of one image.
        device: Where to run.
        batch_sizes: Batch sizes to time (1 = interactive, 256 = throughput).
        warmup: Untimed passes first (allocator, cuDNN autotuning, caches).
        repeats: Timed passes at batch 256; smaller batches get proportionally
            more (at most 200), so the median is stable.
        budget_s: Rough time cap per batch size: a pass slower than
            ``budget_s / repeats`` cuts the timed passes, never below 3. A big
            network at batch 256 on a CPU takes most of a second per pass, and
            finalize times two networks three times over.
    """
    if repeats < 1 or warmup < 1:
        raise ValueError("repeats and warmup must be at least 1")
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    result: dict[int, float] = {}
    try:
        for batch in batch_sizes:
            x = torch.randn(batch, *input_shape, device=dev)
            # Small batches take microseconds and jitter a lot: time more of them.
            n = max(repeats, min(200, repeats * 256 // batch))
            for _ in range(max(warmup, n // 10)):
                start = time.perf_counter()
                model(x)
                _sync(dev)
            per_pass = time.perf_counter() - start
            n = min(n, max(MIN_TIMED, int(budget_s / max(per_pass, 1e-9))))
            times = []
            for _ in range(n):
                _sync(dev)
                start = time.perf_counter()
                model(x)
                _sync(dev)
                times.append((time.perf_counter() - start) * 1000.0)
            result[int(batch)] = statistics.median(times)
    finally:
        model.train(was_training)
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
