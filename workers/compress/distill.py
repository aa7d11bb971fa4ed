"""Knowledge distillation from the unpruned base model (Hinton et al. 2015).

A pruned candidate starts close to its parent, so the parent's softened
outputs are a richer target than the labels alone: they say which wrong
classes are *nearly* right. Deep Net Triage (Nowak & Corso 2018) found that
distillation speeds up recovery but caps accuracy at the parent's, which is
why it is an option (``distill: true``) of every fine-tune rather than the
default. The loss plugs into :func:`workers.nets.train.fit` as ``loss_fn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.nets.train import LossFn


def distill_loss(teacher: nn.Module, *, temperature: float = 4.0, weight: float = 0.5) -> LossFn:
    """``(1-weight)*CE(student, y) + weight * T^2 * KL(softmax(teacher/T) || softmax(student/T))``.

    The ``T^2`` factor keeps the soft term's gradients on the scale of the
    hard term's whatever the temperature, so ``weight`` means the same at
    any ``T``. The teacher runs in eval mode (its BN statistics must not
    follow the student's batches) without gradients, on the inputs' device;
    it is put in eval mode and moved there when the loss is first called.

    Args:
        teacher: The base model; its logits must have the student's shape.
        temperature: Softening ``T`` (> 0); higher spreads the teacher's mass
            over more classes.
        weight: Share of the distillation term, in ``[0, 1]``; 0 is plain
            cross-entropy (the teacher is then never run), 1 ignores labels.

    Returns:
        ``loss_fn(logits, inputs, labels)`` for :func:`workers.nets.train.fit`.

    Raises:
        ValueError: ``temperature <= 0`` or ``weight`` outside ``[0, 1]``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    scale = float(temperature) ** 2

    def loss_fn(logits: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        hard = F.cross_entropy(logits, labels) if weight < 1.0 else None
        if weight == 0.0:
            assert hard is not None
            return hard
        soft = scale * soft_kl(_teacher_logits(teacher, inputs), logits, temperature)
        return soft if hard is None else (1.0 - weight) * hard + weight * soft

    return loss_fn


def soft_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``KL(softmax(teacher/T) || softmax(student/T))`` averaged over the batch.

    Computed from log-probabilities on both sides, so a class the teacher
    rules out almost entirely cannot produce ``0 * log 0`` NaNs.
    """
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, inputs: Tensor) -> Tensor:
    if teacher.training:
        teacher.eval()
    first = next(teacher.parameters(), None)
    if first is not None and first.device != inputs.device:
        teacher.to(inputs.device)
    return teacher(inputs)
