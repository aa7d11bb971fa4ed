"""Pareto front over (accuracy: higher is better, cost: lower is better).

The cost is whichever objective the job trades accuracy against: FLOPs,
parameters or measured latency, absolute or as a ratio of the baseline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    id: int
    accuracy: float
    cost: float


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """Non-dominated points, sorted by cost ascending.

    A point is dominated when another is at least as accurate at no more
    cost and strictly better in one of them. Sweeping by cost and
    keeping each point that beats the best accuracy so far does that in
    O(n log n).
    """
    ordered = sorted(points, key=lambda p: (p.cost, -p.accuracy, p.id))
    front: list[Point] = []
    for p in ordered:
        if not front or p.accuracy > front[-1].accuracy:
            front.append(p)
    return front
