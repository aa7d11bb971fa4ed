"""The Optuna study of one job: create, ask a proposal, tell a score.

Only storage URLs cross this boundary, so the same calls serve the local
mode (a SQLite file) and a fleet of workers (PostgreSQL). Asks and tells are
short transactions; everything slow happens between them, in the worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search.samplers import make_sampler, shares_one_ratio
from search.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Proposal:
    """A sampler's raw proposal: one ratio per group, not yet repaired."""

    number: int
    ratios: tuple[float, ...]


_storages: dict[str, RDBStorage] = {}


def storage(url: str) -> RDBStorage:
    """One RDB storage per URL and process (it owns a connection pool).

    SQLite gets a long busy timeout because several local worker processes
    may write the same file.
    """
    if url not in _storages:
        kwargs: dict[str, object] = {}
        if url.startswith("sqlite"):
            kwargs = {"connect_args": {"timeout": 60}}
        _storages[url] = RDBStorage(url, engine_kwargs=kwargs)
    return _storages[url]


def _after_fork_in_child() -> None:
    # A worker's parent opens the storage once (schema checks take ~0.1 s);
    # each forked task keeps the engine but must not reuse the parent's
    # connections, so it drops the pool without closing them.
    for url in list(_storages):
        _storages[url].engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def study_name(job_id: str) -> str:
    return f"prunesearch-{job_id}"


def create_study(job_id: str, url: str) -> None:
    """Create the job's study (idempotent: a retried ``prepare`` reuses it)."""
    optuna.create_study(
        study_name=study_name(job_id),
        storage=storage(url),
        direction="maximize",
        load_if_exists=True,
    )


def ask(
    job_id: str, url: str, space: SearchSpace, *, sampler: str, seed: int, n_trials: int
) -> Proposal:
    """Ask the job's study for the next proposal."""
    study = optuna.load_study(
        study_name=study_name(job_id),
        storage=storage(url),
        sampler=make_sampler(sampler, seed=seed, n_trials=n_trials),
    )
    dist = FloatDistribution(space.min_ratio, space.max_ratio)
    if shares_one_ratio(sampler):
        trial = study.ask({"ratio": dist})
        ratios = (float(trial.params["ratio"]),) * space.size
    else:
        trial = study.ask({f"r{g:03d}": dist for g in range(space.size)})
        ratios = tuple(float(trial.params[f"r{g:03d}"]) for g in range(space.size))
    return Proposal(trial.number, ratios)


def tell(job_id: str, url: str, number: int, score: float | None) -> None:
    """Report a trial's score, or its failure when ``score`` is None.

    Telling an already finished trial is a no-op, so a retried task cannot
    corrupt the study.
    """
    study = optuna.load_study(study_name=study_name(job_id), storage=storage(url))
    if score is None:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    else:
        study.tell(number, score, skip_if_finished=True)
