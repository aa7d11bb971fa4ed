"""What to try next: search space, cost model, budget repair, samplers.

Pure by contract (DESIGN.md): imports optuna and numpy only, never torch,
redis, rq, sqlalchemy or fastapi, so the API and the tests can reason about
candidates without a network in memory.
"""

from __future__ import annotations

from search.alds import alds_allocate, max_error, uniform_rank
from search.budget import Budget, Repaired, repair, unrepaired
from search.errors import InfeasibleBudget, ProfileError, SearchError, UnknownSampler
from search.objectives import flops_aware_score
from search.pareto import Point, pareto_front
from search.profile import Group, ModelProfile, RankSlot, Term, factorisation, kept_channels
from search.samplers import SAMPLERS, make_sampler, shares_one_ratio
from search.space import OPERATORS, SearchSpace, candidate_key
from search.study import Proposal, ask, create_study, enqueue_trials, tell

__all__ = [
    "OPERATORS",
    "SAMPLERS",
    "Budget",
    "Group",
    "InfeasibleBudget",
    "ModelProfile",
    "Point",
    "ProfileError",
    "Proposal",
    "RankSlot",
    "Repaired",
    "SearchError",
    "SearchSpace",
    "Term",
    "UnknownSampler",
    "alds_allocate",
    "ask",
    "candidate_key",
    "create_study",
    "enqueue_trials",
    "factorisation",
    "flops_aware_score",
    "kept_channels",
    "make_sampler",
    "max_error",
    "pareto_front",
    "repair",
    "shares_one_ratio",
    "tell",
    "uniform_rank",
    "unrepaired",
]
