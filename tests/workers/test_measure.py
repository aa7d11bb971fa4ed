"""Latency timing: enough passes for a stable median, and a time cap for slow networks."""

from __future__ import annotations

import time

import torch
from torch import nn

from workers.nets import measure


class Counted(nn.Module):
    """Identity that takes ``delay_s`` per forward and counts its calls."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.delay_s)
        return x


def test_a_fast_network_gets_every_repeat() -> None:
    model = Counted(0.0)
    ms = measure.latency_ms(model, (1, 4, 4), batch_sizes=(256,), warmup=2, repeats=5)
    assert model.calls == 2 + 5
    assert ms[256] >= 0


def test_a_slow_network_is_timed_within_the_budget_but_at_least_three_times() -> None:
    model = Counted(0.05)
    ms = measure.latency_ms(model, (1, 4, 4), batch_sizes=(256,), repeats=20, budget_s=0.2)
    assert 2 + 3 <= model.calls <= 2 + 4  # 0.2 s / 0.05 s, not the 20 repeats
    assert ms[256] >= 50
    model = Counted(0.05)
    measure.latency_ms(model, (1, 4, 4), batch_sizes=(256,), repeats=20, budget_s=0.01)
    assert model.calls == 2 + measure.MIN_TIMED  # never fewer than three timed passes
