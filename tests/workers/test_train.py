"""Training learns, evaluation is an accuracy, adaptive BN re-estimates statistics."""

from __future__ import annotations

import pytest
import torch

from workers.nets import data, train, zoo


@pytest.fixture(scope="module")
def synthetic() -> data.DataSplits:
    return data.load("synthetic", seed=0, val_fraction=0.1)


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.build("lenet5", in_channels=1, num_classes=10, input_size=28)


def test_fit_learns_well_above_chance(synthetic: data.DataSplits) -> None:
    model = _lenet()
    before = train.evaluate(model, synthetic.test)
    steps: list[int] = []
    stats = train.fit(
        model,
        synthetic.train,
        epochs=2,
        lr=0.05,
        weight_decay=5e-4,
        batch_size=32,
        device="cpu",
        seed=0,
        augment=True,
        on_step=lambda step, loss: steps.append(step),
    )
    after = train.evaluate(model, synthetic.test)
    assert before < 0.3
    assert after > 0.5
    assert stats["steps"] == len(steps) == steps[-1]
    assert stats["final_loss"] < stats["first_loss"]
    assert stats["seconds"] > 0


def test_fractional_epochs_and_steps(synthetic: data.DataSplits) -> None:
    half = train.fit(_lenet(), synthetic.train, epochs=0.5, batch_size=100, seed=0)
    assert half["steps"] == 5
    fixed = train.finetune_steps(_lenet(), synthetic.train, 3, batch_size=16, seed=0)
    assert fixed["steps"] == 3 and fixed["images"] == 48
    with pytest.raises(ValueError):
        train.fit(_lenet(), synthetic.train, epochs=1, steps=3)


def test_fit_is_reproducible(synthetic: data.DataSplits) -> None:
    a, b = _lenet(), _lenet()
    train.fit(a, synthetic.train, steps=5, batch_size=32, seed=7)
    train.fit(b, synthetic.train, steps=5, batch_size=32, seed=7)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_evaluate_is_an_accuracy(synthetic: data.DataSplits) -> None:
    model = _lenet()
    model.train()
    acc = train.evaluate(model, synthetic.val, batch_size=7)
    assert 0.0 <= acc <= 1.0
    assert model.training  # mode restored


def _stat(bn: torch.nn.BatchNorm2d, name: str) -> torch.Tensor:
    value = getattr(bn, name)
    assert isinstance(value, torch.Tensor)
    return value


def test_adaptive_bn(synthetic: data.DataSplits) -> None:
    model = _lenet()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bns[0].momentum = 0.3
    before = [_stat(bn, "running_mean").clone() for bn in bns]
    weights = [p.clone() for p in model.parameters()]
    train.adaptive_bn(model, synthetic.train, calib_batches=3, batch_size=32, seed=0)
    assert not model.training
    assert [bn.momentum for bn in bns] == [0.3, 0.1]
    assert all(
        not torch.equal(b, _stat(bn, "running_mean")) for b, bn in zip(before, bns, strict=True)
    )
    assert all(int(_stat(bn, "num_batches_tracked")) == 3 for bn in bns)
    for w, p in zip(weights, model.parameters(), strict=True):
        assert torch.equal(w, p)
    # Cumulative average: the same calibration gives the same statistics.
    first = _stat(bns[1], "running_var").clone()
    train.adaptive_bn(model, synthetic.train, calib_batches=3, batch_size=32, seed=0)
    torch.testing.assert_close(_stat(bns[1], "running_var"), first)
