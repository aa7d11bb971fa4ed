"""A genetic sampler over ratio vectors (after Hu et al., 2018; METHODS.md section 6).

It is an Optuna sampler built on :class:`optuna.samplers.BaseGASampler`, so
generations and each generation's parents live in the study's storage:
several workers can breed the same population, and a study resumes where it
stopped after its process died, exactly like the built-in samplers.

* **Initial population, sensitivity-informed.** When the job stored seed
  vectors (:func:`search.study.set_seeds`; the greedy sensitivity allocation
  and the equal-drop allocations), generation 0 is made of those seeds and
  mutations of them; otherwise it is uniform random.
* **Selection.** The parents of generation ``g`` are the ``population_size``
  best of generation ``g-1`` and its parents (elitism, as in the paper).
* **Crossover and mutation.** Two parents picked by binary tournament give a
  child by uniform crossover; every gene then mutates with probability
  ``mutation_prob`` by a Gaussian step of ``sigma`` times its range.
* **Two-step fitness.** The sampler sees the cheap score (adaptive BN) of
  every child; the expensive one (short fine-tune) is the job's promotion
  ladder over the best candidates (``scoring.promote_top_k``), as the
  paper's "approximate fitness first, exact fitness for the elite".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna import Study
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseGASampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial

SEEDS_KEY = "prunesearch:seeds"


class GeneticSampler(BaseGASampler):
    """Elitist GA with tournament selection, uniform crossover and Gaussian mutation.

    Args:
        population_size: Children per generation (and parents kept).
        seed: Seed of this sampler's random stream.
        mutation_prob: Chance that a gene mutates; default ``1 / genes``
            (at least one gene per child on average).
        sigma: Mutation step as a fraction of a gene's range.
    """

    def __init__(
        self,
        *,
        population_size: int,
        seed: int | None = None,
        mutation_prob: float | None = None,
        sigma: float = 0.1,
    ) -> None:
        if population_size < 2:
            raise ValueError("population_size must be at least 2")
        super().__init__(population_size=population_size)
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self._mutation_prob = mutation_prob
        self._sigma = sigma
        self._space = IntersectionSearchSpace()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {
            name: dist
            for name, dist in self._space.calculate(study).items()
            if isinstance(dist, FloatDistribution)
        }

    def select_parent(self, study: Study, generation: int) -> list[FrozenTrial]:
        """The best ``population_size`` of the previous generation and its parents."""
        pool = {
            t._trial_id: t
            for t in self.get_population(study, generation - 1)
            + self.get_parent_population(study, generation - 1)
        }
        ranked = sorted(pool.values(), key=lambda t: (-_value(t), t.number))
        assert self.population_size is not None
        return ranked[: self.population_size]

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        generation = self.get_trial_generation(study, trial)
        if generation == 0 or not search_space:
            return {}
        parents = self.get_parent_population(study, generation)
        if len(parents) < 2:
            return {}
        mother, father = self._tournament(parents), self._tournament(parents)
        names = sorted(search_space)
        prob = self._mutation_prob if self._mutation_prob is not None else 1.0 / len(names)
        child: dict[str, Any] = {}
        for name in names:
            dist = search_space[name]
            assert isinstance(dist, FloatDistribution)
            source = mother if self._rng.random() < 0.5 else father
            value = float(source.params.get(name, mother.params.get(name, dist.low)))
            if self._rng.random() < prob:
                value += self._rng.normal(0.0, self._sigma * (dist.high - dist.low))
            child[name] = min(dist.high, max(dist.low, value))
        return child

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """Generation 0: a mutated seed where the job stored seeds, else uniform random."""
        seeds = study.user_attrs.get(SEEDS_KEY) or []
        if seeds and isinstance(param_distribution, FloatDistribution):
            seed = seeds[trial.number % len(seeds)]
            if param_name in seed:
                d = param_distribution
                value = float(seed[param_name]) + self._rng.normal(
                    0.0, 2 * self._sigma * (d.high - d.low)
                )
                return min(d.high, max(d.low, value))
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def _tournament(self, parents: list[FrozenTrial]) -> FrozenTrial:
        a, b = self._rng.choice(len(parents), size=2, replace=False)
        return max(parents[int(a)], parents[int(b)], key=lambda t: (_value(t), -t.number))


def _value(trial: FrozenTrial) -> float:
    return float(trial.values[0]) if trial.values else float("-inf")
