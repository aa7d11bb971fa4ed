"""What to try next: search space, cost model, budget repair, samplers.

Pure by contract (DESIGN.md): imports optuna and numpy only, never torch,
redis, rq, sqlalchemy or fastapi, so the API and the tests can reason about
candidates without a network in memory.
"""

from __future__ import annotations

from search.budget import Budget, Repaired, repair
from search.errors import InfeasibleBudget, ProfileError, SearchError, UnknownSampler
from search.objectives import flops_aware_score
from search.pareto import Point, pareto_front
from search.profile import Group, ModelProfile, Term, kept_channels
from search.samplers import SAMPLERS, make_sampler
from search.space import SearchSpace, candidate_key
from search.study import Proposal, ask, create_study, tell

__all__ = [
    "SAMPLERS",
    "Budget",
    "Group",
    "InfeasibleBudget",
    "ModelProfile",
    "Point",
    "ProfileError",
    "Proposal",
    "Repaired",
    "SearchError",
    "SearchSpace",
    "Term",
    "UnknownSampler",
    "ask",
    "candidate_key",
    "create_study",
    "flops_aware_score",
    "kept_channels",
    "make_sampler",
    "pareto_front",
    "repair",
    "tell",
]
