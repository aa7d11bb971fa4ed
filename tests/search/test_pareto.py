from __future__ import annotations

from search.pareto import Point, pareto_front


def test_front_keeps_only_non_dominated_points() -> None:
    points = [
        Point(1, 0.90, 100.0),
        Point(2, 0.85, 50.0),
        Point(3, 0.80, 60.0),  # dominated by 2
        Point(4, 0.90, 120.0),  # dominated by 1
        Point(5, 0.95, 200.0),
        Point(6, 0.70, 10.0),
    ]
    assert [p.id for p in pareto_front(points)] == [6, 2, 1, 5]


def test_empty_and_ties() -> None:
    assert pareto_front([]) == []
    assert [p.id for p in pareto_front([Point(1, 0.5, 1.0), Point(2, 0.5, 1.0)])] == [1]
