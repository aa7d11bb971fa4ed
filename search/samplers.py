"""Samplers: which ratio vector to try next.

Every trial runs in whichever worker process picks it up, so a sampler is
rebuilt from its name and seed for every ask. A plain seeded Optuna sampler
rebuilt that way would replay the same random stream each time (every
startup trial identical); :class:`PerTrialSeed` instead derives the inner
sampler's seed from the job seed and the trial number, which keeps a search
deterministic for a given seed when trials run one after another, and
distinct when they run in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from optuna import Study
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from search import catalogue
from search.errors import SearchError, UnknownSampler
from search.genetic import GeneticSampler

SAMPLERS = tuple(catalogue.SAMPLERS)
# Samplers that replay one allocation computed in ``prepare`` (rule-based baselines).
ALLOCATORS = frozenset(name for name, info in catalogue.SAMPLERS.items() if info.allocator)
ALLOCATION_KEY = "prunesearch:allocation"

# A factory makes the inner sampler from (seed, generation size, startup trials).
Factory = Callable[[int, int, int], BaseSampler]


def _tpe(seed: int, population: int, startup: int) -> BaseSampler:
    return TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True)


def _nsga2(seed: int, population: int, startup: int) -> BaseSampler:
    return NSGAIISampler(population_size=population, seed=seed)


def _genetic(seed: int, population: int, startup: int) -> BaseSampler:
    return GeneticSampler(population_size=population, seed=seed)


def _random(seed: int, population: int, startup: int) -> BaseSampler:
    return RandomSampler(seed=seed)


# Proposing samplers by catalogue name; the catalogue's allocators replay
# prepare's allocation through :class:`AllocationSampler` instead.
REGISTRY: Mapping[str, Factory] = MappingProxyType(
    {"tpe": _tpe, "nsga2": _nsga2, "genetic": _genetic, "random": _random, "uniform": _random}
)


def make_sampler(
    name: str, *, seed: int, n_trials: int, population: int | None = None
) -> BaseSampler:
    """The sampler called ``name`` for a job of ``n_trials`` trials.

    * ``tpe``: Optuna's multivariate TPE with the constant liar, so parallel
      workers do not all crowd the same promising region.
    * ``nsga2``: Optuna's NSGA-II on two objectives (accuracy up, cost down).
    * ``genetic``: :class:`~search.genetic.GeneticSampler`.
    * ``random``: every variable independently uniform (the baseline every
      search must beat at equal evaluations, METHODS.md).
    * ``uniform``: one ratio shared by all groups, at random (after budget
      repair every proposal is the same network, scored once).
    * allocators (``tp_global`` / ``sensitivity``): replay the allocation
      ``prepare`` stored (:data:`ALLOCATION_KEY`): Torch-Pruning's global
      ranking, or the greedy walk down the sensitivity curves. Every trial
      proposes it, so after the first the duplicate check makes them free.

    ``population`` sets the generation size of ``nsga2`` and ``genetic``;
    by default a quarter of the trials, between 4 and 50, so that even a
    short search sees a few generations.
    """
    if name not in SAMPLERS:
        raise UnknownSampler(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if name in ALLOCATORS:
        return AllocationSampler()
    pop = population or max(4, min(50, n_trials // 4))
    startup = max(3, min(10, n_trials // 4))
    factory = REGISTRY[name]
    return PerTrialSeed(lambda s: factory(s, pop, startup), seed)


def shares_one_ratio(name: str) -> bool:
    """Whether the sampler proposes one ratio for all groups (the uniform baseline)."""
    return catalogue.sampler(name).one_ratio


def directions(name: str) -> tuple[str, ...]:
    """Study directions: accuracy alone, or accuracy and cost for a two-objective sampler."""
    return ("maximize", "minimize") if catalogue.sampler(name).objectives == 2 else ("maximize",)


class AllocationSampler(BaseSampler):
    """Proposes the allocation stored on the study, whatever the trial."""

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        allocation = study.user_attrs.get(ALLOCATION_KEY)
        if allocation is None or param_name not in allocation:
            raise SearchError(f"the study has no stored allocation for {param_name!r}")
        assert isinstance(param_distribution, FloatDistribution)
        value = float(allocation[param_name])
        return min(param_distribution.high, max(param_distribution.low, value))


class PerTrialSeed(BaseSampler):
    """Delegates to ``factory(seed_for(trial.number))`` (see module docstring)."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._current: tuple[int, BaseSampler] | None = None

    def _inner(self, trial: FrozenTrial) -> BaseSampler:
        if self._current is None or self._current[0] != trial.number:
            derived = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
            self._current = (trial.number, self._factory(derived))
        return self._current[1]

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner(trial).before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner(trial).after_trial(study, trial, state, values)
