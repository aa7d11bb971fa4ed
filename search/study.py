"""The Optuna study of one job: create, ask a proposal, tell a score.

Only storage URLs cross this boundary, so the same calls serve the local
mode (a SQLite file) and a fleet of workers (PostgreSQL). Asks and tells are
short transactions; everything slow happens between them, in the worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
    """Ask the job's study for the next proposal.

    Only the searched variables (:attr:`SearchSpace.searched`) are sampled,
    each named ``r<index>`` after its variable, so a study never spends its
    model on a variable that cannot move; fixed variables get their bound.
    The ``uniform`` sampler draws one ratio shared by all searched variables
    (clipped into each one's bounds where triage narrowed them).
    """
    study = optuna.load_study(
        study_name=study_name(job_id),
        storage=storage(url),
        sampler=make_sampler(sampler, seed=seed, n_trials=n_trials),
    )
    bounds = space.bounds
    searched = space.searched
    ratios = [lo for lo, _ in bounds]
    if not searched:
        trial = study.ask()
    elif shares_one_ratio(sampler):
        low = min(bounds[i][0] for i in searched)
        high = max(bounds[i][1] for i in searched)
        trial = study.ask({"ratio": FloatDistribution(low, high)})
        shared = float(trial.params["ratio"])
        for i in searched:
            ratios[i] = min(bounds[i][1], max(bounds[i][0], shared))
    else:
        names = {i: f"r{i:03d}" for i in searched}
        trial = study.ask({names[i]: FloatDistribution(*bounds[i]) for i in searched})
        for i in searched:
            ratios[i] = float(trial.params[names[i]])
    return Proposal(trial.number, tuple(ratios))


def enqueue_trials(
    job_id: str, url: str, space: SearchSpace, vectors: Sequence[Sequence[float]]
) -> None:
    """Make ``vectors`` the study's next proposals (ALDS allocation, triage allocations).

    They are clipped into the space's bounds and given under the names
    :func:`ask` uses, so the next asks return them whatever the sampler, and
    the sampler learns from their scores like from any trial.
    """
    study = optuna.load_study(study_name=study_name(job_id), storage=storage(url))
    for vector in vectors:
        clipped = space.clip(vector)
        study.enqueue_trial({f"r{i:03d}": clipped[i] for i in space.searched}, skip_if_exists=True)


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
