"""The catalogue: every method a job can name, once, with what it can do.

Samplers, channel criteria and compression operators are named in the
JobSpec, the OpenAPI document, the dashboard and the docs, and implemented
in ``search`` (samplers) and ``workers`` (criteria, allocators). Their names
and capabilities live here alone, torch-free and import-free, so that:

* the spec's ``Literal`` choices are built from it (and so the OpenAPI enums
  the dashboard reads its choices from);
* callers branch on a capability (``objectives == 2``, ``needs_data``), never
  on a name, so a new method with the same capabilities needs no new branch;
* every registry of implementations is checked against it by a test
  (``tests/test_catalogue.py``): a name without an implementation, or an
  implementation without a name, fails there and not in a user's job.

Adding a method is one entry here plus its implementation in its registry
(docs/architecture.md, "How to add a sampler / criterion / operator").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class SamplerInfo:
    """A sampler: how it proposes, and what ``prepare`` must give it first.

    Attributes:
        summary: One line for the API description and the dashboard.
        objectives: 1 (accuracy) or 2 (accuracy and the cost axis; the study
            is multi-objective and proposals are capped, not repaired, so
            the Pareto front keeps its spread).
        allocator: Replays one allocation computed in ``prepare`` instead of
            proposing (rule-based baselines); its registry is in the workers.
        needs_curves: ``prepare`` computes the sensitivity curves for it.
        seeded: Takes ``prepare``'s allocations as its first population.
        one_ratio: Proposes one ratio shared by every group (uniform).
        needs_channels: Allocates channels, so only with an operator that prunes.
    """

    summary: str
    objectives: int = 1
    allocator: bool = False
    needs_curves: bool = False
    seeded: bool = False
    one_ratio: bool = False
    needs_channels: bool = False


@dataclass(frozen=True)
class CriterionInfo:
    """A channel criterion (which channels of a group survive).

    Attributes:
        summary: One line for the API description and the dashboard.
        needs_data: Runs the network on calibration batches (not weights alone).
        folds: Can fold removed channels into their kept twins (``fold``).
        pushes: Has a discriminant-push pre-training (``push_steps``).
    """

    summary: str
    needs_data: bool = False
    folds: bool = False
    pushes: bool = False


@dataclass(frozen=True)
class OperatorInfo:
    """A compression operator: which kinds of variables the search space has.

    Attributes:
        summary: One line for the API description and the dashboard.
        prunes: Channel-group keep ratios are searched.
        decomposes: Low-rank (SVD) rank ratios are searched.
    """

    summary: str
    prunes: bool
    decomposes: bool


SAMPLERS: Mapping[str, SamplerInfo] = MappingProxyType(
    {
        "tpe": SamplerInfo("Bayesian (Optuna's multivariate TPE)"),
        "nsga2": SamplerInfo("accuracy and the cost objective together (Pareto front)", 2),
        "genetic": SamplerInfo(
            "Hu et al. genetic algorithm seeded by sensitivity", needs_curves=True, seeded=True
        ),
        "random": SamplerInfo("every ratio independently at random"),
        "uniform": SamplerInfo("one ratio for every layer", one_ratio=True),
        "tp_global": SamplerInfo(
            "Torch-Pruning's global ranking", allocator=True, needs_channels=True
        ),
        "sensitivity": SamplerInfo(
            "greedy walk down the sensitivity curves",
            allocator=True,
            needs_curves=True,
            needs_channels=True,
        ),
    }
)

CRITERIA: Mapping[str, CriterionInfo] = MappingProxyType(
    {
        "l1": CriterionInfo("L1 group magnitude"),
        "l2": CriterionInfo("L2 group magnitude"),
        "bn_scale": CriterionInfo("BatchNorm |gamma| (network slimming)"),
        "fpgm": CriterionInfo("distance to the geometric median (He et al. 2019)"),
        "taylor": CriterionInfo("first-order Taylor loss change", needs_data=True),
        "similarity": CriterionInfo(
            "one channel per cluster of similar responses", needs_data=True, folds=True
        ),
        "discriminant": CriterionInfo(
            "class-separation power (Fisher ratio)", needs_data=True, pushes=True
        ),
    }
)

OPERATORS: Mapping[str, OperatorInfo] = MappingProxyType(
    {
        "prune": OperatorInfo("channels only", prunes=True, decomposes=False),
        "lowrank": OperatorInfo("SVD ranks only (ALDS)", prunes=False, decomposes=True),
        "mixed": OperatorInfo("each layer pruned, decomposed, or both", True, True),
    }
)


def sampler(name: str) -> SamplerInfo:
    """The catalogue entry of a sampler (KeyError names it when unknown)."""
    return SAMPLERS[name]


def criterion(name: str) -> CriterionInfo:
    """The catalogue entry of a criterion."""
    return CRITERIA[name]


def operator(name: str) -> OperatorInfo:
    """The catalogue entry of an operator."""
    return OPERATORS[name]


def described(entries: Mapping[str, SamplerInfo | CriterionInfo | OperatorInfo]) -> str:
    """``name: summary; ...`` for a field's description in the OpenAPI document."""
    return "; ".join(f"{name}: {info.summary}" for name, info in entries.items())
