"""Training, fine-tuning, evaluation and adaptive-BN scoring.

One loop serves the baseline, the short per-trial fine-tune and the final
fine-tune: SGD with Nesterov momentum and a warm-up + cosine schedule, which
needs no tuning across those lengths. Budgets are in (fractional) epochs or
in steps, so a trial can be given "300 steps" regardless of dataset size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from workers.nets.data import Split

WARMUP_FRACTION = 0.05
MAX_WARMUP_STEPS = 200
CHECK_EVERY = 50

StepCallback = Callable[[int, float], None]
# (logits, inputs, labels) -> scalar loss; the default is cross-entropy.
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def fit(
    model: nn.Module,
    split: Split,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    augment: bool = True,
    on_step: StepCallback | None = None,
    loss_fn: LossFn | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``split``.

    Exactly one of ``epochs`` (may be fractional: 0.5 is half an epoch of
    steps) and ``steps`` is given. The learning rate warms up linearly over
    the first 5% of steps (at most 200) and then follows a cosine to zero, so
    a short budget still ends at a low learning rate. Weight decay applies
    to conv/linear weights only: decaying BN scales or biases only hurts.

    Args:
        model: Network to train (moved to ``device``; left in eval mode).
        split: Training images.
        epochs: Passes over ``split``.
        steps: Optimiser steps (alternative to ``epochs``).
        lr: Peak learning rate.
        weight_decay: L2 penalty on conv/linear weights.
        batch_size: Images per step.
        device: Where to train.
        seed: Seeds the batch order and the augmentation.
        augment: Random shifts (and flips where valid), see :meth:`Split.batches`.
        on_step: Called as ``on_step(step, loss)`` after every step, e.g. to
            report progress or raise to cancel (reading the loss synchronises
            CUDA each step; leave it out for full GPU speed).
        loss_fn: Replaces cross-entropy, e.g. distillation from a teacher or
            a regulariser that reads features captured by hooks; called as
            ``loss_fn(logits, inputs, labels)`` right after the forward pass.

    Returns:
        ``steps``, ``epochs`` (actually run), ``images``, ``seconds``,
        ``images_per_s``, ``first_loss``, ``final_loss`` (mean of the last
        tenth of the steps) and ``mean_loss``.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs and steps")
    if len(split) == 0:
        raise ValueError("cannot train on an empty split")
    per_epoch = math.ceil(len(split) / batch_size)
    total = int(steps) if steps is not None else math.ceil(float(epochs or 0) * per_epoch)
    if total < 1:
        raise ValueError(f"the budget gives no training step (epochs={epochs}, steps={steps})")

    model.to(device)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    warmup = max(1, min(MAX_WARMUP_STEPS, round(WARMUP_FRACTION * total)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup, total))
    criterion = nn.CrossEntropyLoss()
    compute = loss_fn or (lambda logits, _x, y: criterion(logits, y))
    generator = torch.Generator().manual_seed(seed)

    # Losses stay on the device: reading each one would synchronise CUDA every step.
    pending: list[Tensor] = []
    losses: list[float] = []
    images = 0
    start = time.perf_counter()
    model.train()
    for step, (x, y) in enumerate(_endless(split, batch_size, generator, augment), start=1):
        optimizer.zero_grad(set_to_none=True)
        loss = compute(model(x), x, y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        pending.append(loss.detach())
        images += int(y.shape[0])
        if on_step is not None:
            on_step(step, float(pending[-1]))
        if step % CHECK_EVERY == 0 or step >= total:
            losses += _checked(pending, step)
            pending = []
        if step >= total:
            break
    _synchronize(device)
    seconds = time.perf_counter() - start
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": len(losses),
        "epochs": images / len(split),
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else float("inf"),
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "mean_loss": sum(losses) / len(losses),
    }


def _checked(pending: list[Tensor], step: int) -> list[float]:
    """Move a window of losses to the host and stop a diverged run."""
    values = torch.stack(pending).float().cpu().tolist()
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(f"training diverged before step {step} (loss {values[-1]})")
    return values


def calibration_batches(
    split: Split, count: int, *, batch_size: int = 128, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """``count`` shuffled, un-augmented ``(inputs, labels)`` batches for data-driven criteria.

    Drawn once and reused, so every criterion, reconstruction or statistic
    computed for one candidate sees the very same images.
    """
    generator = torch.Generator().manual_seed(seed)
    return list(split.batches(batch_size, shuffle=True, generator=generator, limit=count))


def finetune_steps(model: nn.Module, split: Split, steps: int, **kwargs: Any) -> dict[str, Any]:
    """Short fine-tune by step count (a trial's budget); see :func:`fit` for the options."""
    return fit(model, split, steps=steps, **kwargs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    limit: int | None = None,
) -> float:
    """Top-1 accuracy in ``[0, 1]`` on ``split`` (eval mode, no gradients).

    The model's train/eval mode is restored afterwards. ``limit`` caps the
    number of batches, for a cheap estimate.
    """
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    was_training = model.training
    model.to(device).eval()
    correct = torch.zeros((), dtype=torch.long, device=split.device)
    seen = 0
    for x, y in split.batches(batch_size, shuffle=False, generator=None, limit=limit):
        correct += (model(x).argmax(dim=1) == y).sum()
        seen += int(y.shape[0])
    model.train(was_training)
    return float(correct) / seen


@torch.no_grad()
def adaptive_bn(
    model: nn.Module,
    split: Split,
    *,
    calib_batches: int = 20,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> None:
    """Re-estimate every BatchNorm's statistics on a few training batches (EagleEye).

    After pruning, the stored running statistics describe channels' inputs
    that no longer exist, which makes the accuracy of an un-fine-tuned
    candidate meaningless. Resetting them and taking a cumulative average
    (``momentum=None``) over ``calib_batches`` batches in train mode makes it
    a cheap and faithful predictor of the accuracy after fine-tuning. No
    weight changes. The model is left in eval mode.
    """
    model.to(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    generator = torch.Generator().manual_seed(seed)
    model.train()
    try:
        for x, _ in split.batches(
            batch_size, shuffle=True, generator=generator, limit=calib_batches
        ):
            model(x)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.eval()


def _endless(
    split: Split, batch_size: int, generator: torch.Generator, augment: bool
) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from split.batches(batch_size, shuffle=True, generator=generator, augment=augment)


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
