"""Distillation: plain CE at weight 0, no soft term for a perfect student, pulls to the teacher."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from workers.compress.distill import distill_loss, soft_kl
from workers.nets import data, train, zoo


def _lenet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return zoo.build("lenet5", in_channels=1, num_classes=10, input_size=28).eval()


def _batch(seed: int = 0, n: int = 16) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randint(
        0, 10, (n,), generator=generator
    )


def test_weight_zero_is_cross_entropy_and_never_runs_the_teacher() -> None:
    calls: list[int] = []
    teacher = _lenet(1)

    def count(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        calls.append(1)

    teacher.register_forward_hook(count)
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(5))
    x, y = _batch()
    loss = distill_loss(teacher, weight=0.0)(logits, x, y)
    assert torch.equal(loss, nn.functional.cross_entropy(logits, y))
    assert calls == []


def test_soft_term_vanishes_when_the_student_is_the_teacher() -> None:
    model = _lenet(0)
    x, y = _batch()
    with torch.no_grad():
        logits = model(x)
    ce = nn.functional.cross_entropy(logits, y)
    assert float(distill_loss(model, weight=1.0)(logits, x, y)) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(distill_loss(model, weight=0.5)(logits, x, y), 0.5 * ce)


def test_loss_matches_the_formula_and_scales_by_t_squared() -> None:
    teacher = _lenet(1)
    x, y = _batch()
    student = torch.randn(16, 10, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        target = teacher(x)
    t = 3.0
    p = torch.softmax(target / t, dim=1)
    kl = (p * (p.log() - torch.log_softmax(student / t, dim=1))).sum(1).mean()
    expected = 0.7 * nn.functional.cross_entropy(student, y) + 0.3 * t * t * kl
    got = distill_loss(teacher, temperature=t, weight=0.3)(student, x, y)
    torch.testing.assert_close(got, expected)
    assert float(soft_kl(target, student, t)) == pytest.approx(float(kl), rel=1e-5)


def test_teacher_runs_in_eval_mode_without_gradients() -> None:
    teacher = _lenet(1).train()
    bn = teacher.get_submodule("features.1")
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.running_mean is not None
    stats = bn.running_mean.clone()
    student = torch.zeros(16, 10, requires_grad=True)
    x, y = _batch()
    distill_loss(teacher, weight=1.0)(student, x, y).backward()
    assert not teacher.training
    assert torch.equal(bn.running_mean, stats)
    assert all(p.grad is None for p in teacher.parameters())
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


def test_fit_with_distillation_moves_the_student_toward_the_teacher() -> None:
    splits = data.load("synthetic", seed=0, val_fraction=0.1)
    teacher, student = _lenet(1), _lenet(2)
    x, _ = next(splits.val.batches(64, shuffle=False, generator=None))

    def gap() -> float:
        with torch.no_grad():
            return float(soft_kl(teacher(x), student.eval()(x)))

    before = gap()
    train.fit(
        student, splits.train, steps=15, batch_size=32, lr=0.02, augment=False,
        loss_fn=distill_loss(teacher, temperature=2.0, weight=1.0),
    )  # fmt: skip
    assert gap() < 0.5 * before


@pytest.mark.parametrize(
    ("temperature", "weight"), [(0.0, 0.5), (-1.0, 0.5), (4.0, -0.1), (4.0, 1.5)]
)
def test_rejects_bad_arguments(temperature: float, weight: float) -> None:
    with pytest.raises(ValueError):
        distill_loss(_lenet(0), temperature=temperature, weight=weight)
