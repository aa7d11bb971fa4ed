"""Batches for overnight searches: a list of JobSpecs, or a base spec and a grid.

A grid maps dotted JobSpec paths to the values to try
(``{"target.flops_ratio": [0.5, 0.25], "search.sampler": ["tpe", "random"]}``);
the batch is their cartesian product. Every expanded spec is validated
before anything is stored, so a bad cell rejects the whole batch with the
field named (``grid.search.sampler[1]: ...``) and nothing half-created.
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.spec import JobSpec

MAX_JOBS = 200
# Every trial is a queued task: one request must not flood the queue (200
# jobs of 10,000 trials would be two million tasks).
MAX_TRIALS = 20_000
GridValues = Annotated[list[Any], Field(min_length=1, max_length=50)]


class BatchCreate(BaseModel):
    """``POST /v1/batches``: ``jobs`` or ``base`` + ``grid``, not both."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    jobs: list[JobSpec] | None = Field(default=None, min_length=1, max_length=MAX_JOBS)
    base: JobSpec | None = None
    grid: dict[str, GridValues] | None = Field(default=None, min_length=1, max_length=6)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if (self.jobs is None) == (self.base is None):
            raise ValueError("give either jobs (a list of JobSpecs) or base and grid")
        if (self.base is None) != (self.grid is None):
            raise ValueError("base and grid go together")
        if self.grid is not None:
            size = 1
            for values in self.grid.values():
                size *= len(values)
            if size > MAX_JOBS:
                raise ValueError(f"the grid makes {size} jobs; at most {MAX_JOBS}")
        return self

    def specs(self) -> list[JobSpec]:
        """The batch's JobSpecs, in order (grid: last key varies fastest).

        Raises:
            ValueError: a grid cell is not a valid JobSpec (the message names
                the grid key and the value's index), or the batch asks for
                more than :data:`MAX_TRIALS` trials in all.
        """
        specs = list(self.jobs) if self.jobs is not None else self._expand()
        total = sum(spec.search.n_trials for spec in specs)
        if total > MAX_TRIALS:
            where = "jobs" if self.jobs is not None else "grid"
            raise ValueError(f"{where}: the batch asks for {total} trials; at most {MAX_TRIALS}")
        return specs

    def _expand(self) -> list[JobSpec]:
        assert self.base is not None and self.grid is not None
        base = self.base.model_dump(mode="json")
        keys = list(self.grid)
        specs = []
        for combo in itertools.product(*(enumerate(self.grid[k]) for k in keys)):
            raw = copy.deepcopy(base)
            for key, (_, value) in zip(keys, combo, strict=True):
                _set(raw, key, value)
            label = "-".join(
                f"{k.rsplit('.', 1)[-1]}_{v}" for k, (_, v) in zip(keys, combo, strict=True)
            )
            raw["name"] = re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{base['name']}-{label}")[:100]
            try:
                specs.append(JobSpec.model_validate(raw))
            except ValidationError as exc:
                culprit = _culprit(exc, keys, combo)
                raise ValueError(f"grid.{culprit}: {exc.errors()[0]['msg']}") from exc
        return specs


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            raise ValueError(f"grid.{path}: {key!r} is not a section of the JobSpec")
        node = child
    node[leaf] = value


def _culprit(exc: ValidationError, keys: list[str], combo: tuple[Any, ...]) -> str:
    """The grid key (and value index) a validation error points at."""
    loc = ".".join(str(p) for p in exc.errors()[0]["loc"])
    for key, (index, _) in zip(keys, combo, strict=True):
        if loc == key or loc.startswith(key + ".") or key.startswith(loc):
            return f"{key}[{index}]"
    return f"{keys[0]}[{combo[0][0]}] ({loc})"
