"""Pareto front over (accuracy: higher is better, FLOPs: lower is better)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    id: int
    accuracy: float
    flops: float


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """Non-dominated points, sorted by FLOPs ascending.

    A point is dominated when another is at least as accurate with at most as
    many FLOPs and strictly better in one of them. Sweeping by FLOPs and
    keeping each point that beats the best accuracy so far does that in
    O(n log n).
    """
    ordered = sorted(points, key=lambda p: (p.flops, -p.accuracy, p.id))
    front: list[Point] = []
    for p in ordered:
        if not front or p.accuracy > front[-1].accuracy:
            front.append(p)
    return front
