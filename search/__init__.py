"""What to try next: search space, cost model, budget repair, samplers.

Pure by contract (DESIGN.md): imports optuna and numpy only, never torch,
redis, rq, sqlalchemy or fastapi, so the API and the tests can reason about
candidates without a network in memory.
"""

from __future__ import annotations

from search.alds import alds_allocate, max_error, uniform_rank
from search.allocate import global_ranking, greedy_sensitivity
from search.budget import Budget, Repaired, cap, repair, unrepaired
from search.errors import InfeasibleBudget, ProfileError, SearchError, UnknownSampler
from search.genetic import GeneticSampler
from search.objectives import flops_aware_score
from search.pareto import Point, pareto_front
from search.profile import Group, ModelProfile, RankSlot, Term, factorisation, kept_channels
from search.samplers import ALLOCATORS, SAMPLERS, directions, make_sampler, shares_one_ratio
from search.space import GRANULARITIES, OPERATORS, SearchSpace, Variable, candidate_key
from search.study import (
    Proposal,
    ask,
    create_study,
    delete_study,
    enqueue_trials,
    granularity_of,
    heartbeat,
    set_allocation,
    set_seeds,
    silent,
    tell,
)

__all__ = [
    "ALLOCATORS",
    "GRANULARITIES",
    "OPERATORS",
    "SAMPLERS",
    "Budget",
    "GeneticSampler",
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
    "Variable",
    "alds_allocate",
    "ask",
    "candidate_key",
    "cap",
    "create_study",
    "delete_study",
    "directions",
    "enqueue_trials",
    "factorisation",
    "flops_aware_score",
    "global_ranking",
    "granularity_of",
    "greedy_sensitivity",
    "heartbeat",
    "kept_channels",
    "make_sampler",
    "max_error",
    "pareto_front",
    "repair",
    "set_allocation",
    "set_seeds",
    "shares_one_ratio",
    "silent",
    "tell",
    "uniform_rank",
    "unrepaired",
]
