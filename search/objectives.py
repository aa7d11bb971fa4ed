"""Objectives: one number per candidate for single-objective samplers.

The budget repair keeps every candidate under the limit, so the penalty is
normally zero; it exists for candidates that could not be repaired exactly
(coarse ``round_to``) and for later samplers that explore past the budget
(METHODS.md, AutoPruning: ``accuracy - lambda * max(0, flops/target - 1)``).
"""

from __future__ import annotations

DEFAULT_LAMBDA = 1.0


def flops_aware_score(accuracy: float, fill: float, lam: float = DEFAULT_LAMBDA) -> float:
    """``accuracy - lam * max(0, fill - 1)``, with ``fill = used / limit``."""
    return accuracy - lam * max(0.0, fill - 1.0)
