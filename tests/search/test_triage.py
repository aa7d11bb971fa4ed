"""Sensitivity curves -> bounds and seeds (search.triage)."""

from __future__ import annotations

from search.triage import equal_drop, narrow, safe_ratio, seed_vectors

RATIOS = [round(0.1 * i, 1) for i in range(1, 10)]
# Unpruned proxy accuracy 0.90.
FLAT = [(r, 0.90) for r in RATIOS]  # pruning it costs nothing
CLIFF = [(r, 0.90 if r >= 0.6 else 0.30) for r in RATIOS]  # collapses below 0.6
GENTLE = [(r, 0.90 - 0.05 * (1 - r)) for r in RATIOS]  # loses up to 4.5 points
HOPELESS = [(r, 0.20) for r in RATIOS]  # critical at every tested ratio


def test_safe_ratio_walks_down_from_the_top_and_stops_at_the_first_violation() -> None:
    assert safe_ratio(FLAT, 0.90, 0.01) == 0.1
    assert safe_ratio(CLIFF, 0.90, 0.01) == 0.6
    assert safe_ratio(HOPELESS, 0.90, 0.01) is None
    dip = [(0.9, 0.9), (0.5, 0.5), (0.1, 0.9)]  # recovers below the dip: still unsafe
    assert safe_ratio(dip, 0.90, 0.01) == 0.9


def test_narrow_raises_critical_floors_and_lowers_insensitive_ceilings() -> None:
    names = ["flat", "cliff", "gentle", "hopeless", "unscanned"]
    curves = {"flat": FLAT, "cliff": CLIFF, "gentle": GENTLE, "hopeless": HOPELESS}
    out = narrow(names, curves, 0.90, tolerance=0.02, min_ratio=0.1)
    bounds = dict(zip(names, out.bounds, strict=True))

    assert bounds["flat"][0] == 0.1 and bounds["flat"][1] < 0.5
    assert out.reasons["flat"] == "insensitive"
    assert bounds["cliff"][0] == 0.6  # never below the cliff
    assert "critical" in out.reasons["cliff"]
    assert bounds["hopeless"] == (0.9, 1.0)
    assert out.reasons["hopeless"] == "critical"
    assert bounds["unscanned"] == (0.1, 1.0)
    assert out.reasons["unscanned"] == "unchanged"
    assert all(lo <= hi for lo, hi in out.bounds)


def test_narrow_never_widens_the_job_bounds() -> None:
    out = narrow(["flat"], {"flat": FLAT}, 0.90, tolerance=0.02, min_ratio=0.3, max_ratio=0.35)
    assert out.bounds == ((0.3, 0.35),)


def test_equal_drop_gives_every_group_the_same_loss() -> None:
    names = ["flat", "cliff", "gentle"]
    curves = {"flat": FLAT, "cliff": CLIFF, "gentle": GENTLE}
    small = equal_drop(names, curves, 0.90, 0.01)
    large = equal_drop(names, curves, 0.90, 0.05)
    assert small[0] == 0.1 and small[1] == 0.6
    assert small[2] > large[2]  # a larger allowed drop prunes the gentle group more
    assert equal_drop(["none"], curves, 0.90, 0.01) == (1.0,)


def test_seed_vectors_are_distinct() -> None:
    seeds = seed_vectors(
        ["cliff", "gentle"], {"cliff": CLIFF, "gentle": GENTLE}, 0.90, tolerance=0.005, count=3
    )
    assert len(seeds) == 3
    assert len(set(seeds)) == 3
