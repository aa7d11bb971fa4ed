"""Turn triage sensitivity curves into search-space bounds and first trials.

A sensitivity curve gives, for one channel group pruned alone, the proxy
accuracy at keep ratios 0.1 ... 0.9 (Deep Net Triage, METHODS.md section 4).
Two readings of it save evaluations:

* a *critical* group (accuracy collapses when it is pruned) gets a higher
  lower bound, so the sampler stops proposing ratios known to be hopeless;
* an *insensitive* group (accuracy barely moves) gets a lower upper bound,
  so budget is not spent on channels that buy nothing.

The same curves give a greedy allocation, "every group gives up the same
accuracy", which seeds the first trials. All of it is plain arithmetic on the
curves; the sampler, the budget repair and the workers are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Curve = Sequence[tuple[float, float]]  # (ratio, proxy accuracy), any order

# A drop this many times the tolerance marks the ratios a group cannot go below.
CRITICAL_FACTOR = 5.0
# Headroom above the ratio where an insensitive group becomes harmless.
HEADROOM = 0.2


@dataclass(frozen=True)
class Narrowed:
    """Per-group ratio bounds read from the curves, and why each was set.

    Attributes:
        bounds: ``(lo, hi)`` per group, in the order of the names given.
        reasons: Group name -> ``"critical"``, ``"insensitive"`` or ``"unchanged"``.
    """

    bounds: tuple[tuple[float, float], ...]
    reasons: dict[str, str]


def drops(curve: Curve, reference: float) -> list[tuple[float, float]]:
    """``(ratio, reference - accuracy)`` sorted by ratio, descending."""
    return sorted(((float(r), reference - float(a)) for r, a in curve), reverse=True)


def safe_ratio(curve: Curve, reference: float, max_drop: float) -> float | None:
    """Smallest tested ratio from which every larger tested ratio drops at most ``max_drop``.

    Walking down from the largest ratio and stopping at the first violation
    makes a noisy curve (a dip then a recovery) count as sensitive, which is
    the safe side for a bound. ``None`` when even the largest ratio drops more.
    """
    found: float | None = None
    for ratio, drop in drops(curve, reference):
        if drop > max_drop:
            break
        found = ratio
    return found


def narrow(
    names: Sequence[str],
    curves: Mapping[str, Curve],
    reference: float,
    *,
    tolerance: float,
    min_ratio: float,
    max_ratio: float = 1.0,
) -> Narrowed:
    """Bounds per group from its curve; groups without a curve keep the defaults.

    Args:
        names: Group names in profile order.
        curves: Sensitivity curve per group name.
        reference: Proxy accuracy of the unpruned network, scored like the curves.
        tolerance: An accuracy drop up to this is "harmless".
        min_ratio: The job's lower bound (never lowered).
        max_ratio: The job's upper bound (never raised).
    """
    bounds: list[tuple[float, float]] = []
    reasons: dict[str, str] = {}
    for name in names:
        lo, hi, reason = min_ratio, max_ratio, "unchanged"
        curve = curves.get(name)
        if curve:
            tested = sorted(float(r) for r, _ in curve)
            floor = safe_ratio(curve, reference, CRITICAL_FACTOR * tolerance)
            if floor is None or floor > tested[0]:
                lo, reason = max(min_ratio, tested[-1] if floor is None else floor), "critical"
            harmless = safe_ratio(curve, reference, tolerance)
            if harmless is not None and harmless + HEADROOM < max_ratio:
                hi = max(lo + HEADROOM, harmless + HEADROOM)
                reason = "insensitive" if reason == "unchanged" else "critical, insensitive"
            hi = min(max_ratio, hi)
            lo = min(lo, hi)
        bounds.append((lo, hi))
        reasons[name] = reason
    return Narrowed(tuple(bounds), reasons)


def equal_drop(
    names: Sequence[str],
    curves: Mapping[str, Curve],
    reference: float,
    max_drop: float,
    *,
    default: float = 1.0,
) -> tuple[float, ...]:
    """Greedy allocation: each group at the smallest ratio that costs at most ``max_drop``.

    Groups that lose more than ``max_drop`` at every tested ratio, or have no
    curve, keep ``default``. The budget repair then scales the vector onto the
    budget while keeping its shape, so only the shape matters here.
    """
    return tuple(
        (safe_ratio(curves[n], reference, max_drop) or default) if curves.get(n) else default
        for n in names
    )


def seed_vectors(
    names: Sequence[str],
    curves: Mapping[str, Curve],
    reference: float,
    *,
    tolerance: float,
    count: int,
) -> list[tuple[float, ...]]:
    """Up to ``count`` distinct equal-drop allocations, at drops tolerance x 1, 2, 4, ..."""
    seeds: list[tuple[float, ...]] = []
    factor = 1.0
    for _ in range(8 * count):
        if len(seeds) >= count:
            break
        vector = equal_drop(names, curves, reference, tolerance * factor)
        if vector not in seeds:
            seeds.append(vector)
        factor *= 2.0
    return seeds
