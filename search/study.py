"""The Optuna study of one job: create, ask a proposal, tell a score.

Only storage URLs cross this boundary, so the same calls serve the local
mode (a SQLite file) and a fleet of workers (PostgreSQL). Asks and tells are
short transactions; everything slow happens between them, in the worker.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.study import StudyDirection
from optuna.trial import TrialState

from search.errors import SearchError
from search.genetic import SEEDS_KEY
from search.samplers import (
    ALLOCATION_KEY,
    ALLOCATORS,
    directions,
    make_sampler,
    shares_one_ratio,
)
from search.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats under ask/tell are deliberate (see HEARTBEAT_S): silence Optuna's
# notice that they are meant for optimize(), and the experimental-API notices.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=ExperimentalWarning, module="optuna")
warnings.filterwarnings("ignore", category=ExperimentalWarning, module="search.study")


@dataclass(frozen=True)
class Proposal:
    """A sampler's raw proposal: one ratio per variable, not yet repaired."""

    number: int
    ratios: tuple[float, ...]


_storages: dict[str, RDBStorage] = {}
OPEN_ATTEMPTS = 5
# A scoring trial records a heartbeat every HEARTBEAT_S (:func:`heartbeat`); one
# silent for GRACE_S (its process died) is failed before the next ask, so the
# sampler never waits on it. Optuna runs heartbeats only inside optimize(),
# not under ask/tell, hence the explicit thread. A trial waiting for another
# one's score gives up on it sooner, once it is silent for SILENT_S
# (:func:`silent`): four missed beats, where one trial would else stall.
HEARTBEAT_S = 5
GRACE_S = 60
SILENT_S = 20


def storage(url: str) -> RDBStorage:
    """One RDB storage per URL and process (it owns a connection pool).

    SQLite gets a long busy timeout because several local worker processes
    may write the same file. The first processes to open a fresh database
    race to stamp Optuna's schema version (the API creating a study while a
    worker prefetches); the loser sees a unique-constraint error, so opening
    is retried (any error: a lasting one is raised after the last attempt):
    the second attempt finds the schema in place.
    """
    if url not in _storages:
        kwargs: dict[str, object] = {}
        if url.startswith("sqlite"):
            kwargs = {"connect_args": {"timeout": 60}}
            path = url.removeprefix("sqlite:///")
            if path != url and path and not path.startswith(":"):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(OPEN_ATTEMPTS):
            try:
                _storages[url] = RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                )
                break
            except Exception:  # SQLAlchemy's errors; this package does not import it
                if attempt == OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    return _storages[url]


def _probe(url: str) -> RDBStorage:
    """A second storage of ``url`` whose grace period is :data:`SILENT_S`, to read silences."""
    key = f"silent:{url}"
    if key not in _storages:
        storage(url)  # the schema is in place (and the folder made) before this one opens
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        _storages[key] = RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=SILENT_S
        )
    return _storages[key]


def _after_fork_in_child() -> None:
    # A worker's parent opens the storage once (schema checks take ~0.1 s);
    # each forked task keeps the engine but must not reuse the parent's
    # connections, so it drops the pool without closing them.
    for key in list(_storages):
        _storages[key].engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def study_name(job_id: str) -> str:
    return f"prunesearch-{job_id}"


def create_study(job_id: str, url: str, sampler: str = "tpe") -> None:
    """Create the job's study (idempotent: a retried ``prepare`` reuses it).

    ``nsga2`` studies have two directions (accuracy up, cost down); every
    other sampler's study has one.
    """
    optuna.create_study(
        study_name=study_name(job_id),
        storage=storage(url),
        directions=[StudyDirection[d.upper()] for d in directions(sampler)],
        load_if_exists=True,
    )


def _load(job_id: str, url: str, sampler: BaseSampler | None = None) -> optuna.Study:
    return optuna.load_study(study_name=study_name(job_id), storage=storage(url), sampler=sampler)


def granularity_of(sampler: str, granularity: str) -> str:
    """The granularity a sampler really searches: ``uniform`` always ties the network."""
    return "network" if shares_one_ratio(sampler) else granularity


def ask(
    job_id: str,
    url: str,
    space: SearchSpace,
    *,
    sampler: str,
    seed: int,
    n_trials: int,
    granularity: str = "group",
    population: int | None = None,
) -> Proposal:
    """Ask the job's study for the next proposal.

    Only the searched variables (:attr:`SearchSpace.searched`) are sampled,
    one study parameter per :class:`~search.space.Variable` of the
    granularity (``r012``, ``s1`` or ``ratio``), so a study never spends its
    model on a variable that cannot move; fixed variables get their bound.
    """
    study = _load(
        job_id, url, make_sampler(sampler, seed=seed, n_trials=n_trials, population=population)
    )
    how = granularity_of(sampler, granularity)
    variables = space.variables(how)
    if sampler in ALLOCATORS:  # refuse before a trial number is spent on a doomed ask
        stored = study.user_attrs.get(ALLOCATION_KEY) or {}
        missing = [v.name for v in variables if v.name not in stored]
        if missing:
            raise SearchError(
                f"sampler {sampler} needs the allocation prepare stores; none for {missing}"
            )
    fail_stale_trials(study)
    trial = study.ask({v.name: FloatDistribution(v.low, v.high) for v in variables})
    values = {v.name: float(trial.params[v.name]) for v in variables}
    return Proposal(trial.number, space.expand(how, values))


def enqueue_trials(
    job_id: str,
    url: str,
    space: SearchSpace,
    vectors: Sequence[Sequence[float]],
    granularity: str = "group",
) -> None:
    """Make ``vectors`` the study's next proposals (ALDS allocation, triage allocations).

    They are given under the names :func:`ask` uses (:meth:`SearchSpace.collapse`),
    so the next asks return them whatever the sampler, and the sampler
    learns from their scores like from any trial.
    """
    study = _load(job_id, url)
    for vector in vectors:
        study.enqueue_trial(space.collapse(granularity, vector), skip_if_exists=True)


def set_allocation(
    job_id: str, url: str, space: SearchSpace, vector: Sequence[float], granularity: str = "group"
) -> None:
    """Store the allocation that ``tp_global`` and ``sensitivity`` propose."""
    study = _load(job_id, url)
    study.set_user_attr(ALLOCATION_KEY, space.collapse(granularity, vector))


def set_seeds(
    job_id: str,
    url: str,
    space: SearchSpace,
    vectors: Sequence[Sequence[float]],
    granularity: str = "group",
) -> None:
    """Store the vectors the ``genetic`` sampler breeds its first generation from."""
    study = _load(job_id, url)
    study.set_user_attr(SEEDS_KEY, [space.collapse(granularity, v) for v in vectors])


def tell(job_id: str, url: str, number: int, values: float | Sequence[float] | None) -> None:
    """Report a trial's objective value(s), or its failure when ``values`` is None.

    Telling an already finished trial is a no-op, so a retried task cannot
    corrupt the study.
    """
    study = _load(job_id, url)
    if values is None:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    else:
        study.tell(number, values, skip_if_finished=True)


def delete_study(job_id: str, url: str) -> bool:
    """Remove the job's study and its trials; False when there was none."""
    try:
        optuna.delete_study(study_name=study_name(job_id), storage=storage(url))
    except KeyError:
        return False
    return True


def silent(job_id: str, url: str, numbers: Collection[int]) -> set[int]:
    """Which of the trials ``numbers`` run without a heartbeat for :data:`SILENT_S` seconds.

    Read-only (nothing is failed here) and measured by the database's clock,
    as Optuna's own staleness is. A trial that never recorded a heartbeat is
    not silent: its process has not reached :func:`heartbeat` yet.
    """
    if not numbers:
        return set()
    probe = _probe(url)
    study_id = probe.get_study_id_from_name(study_name(job_id))
    # Optuna has no public reader of heartbeats; this is the query its own
    # fail_stale_trials runs, with this storage's shorter grace period.
    stale = set(probe._get_stale_trial_ids(study_id))
    return {
        n for n in numbers
        if probe.get_trial_id_from_study_id_trial_number(study_id, n) in stale
    }  # fmt: skip


@contextmanager
def heartbeat(job_id: str, url: str, number: int, every: float = HEARTBEAT_S) -> Iterator[None]:
    """Record the trial's heartbeat every ``every`` seconds while the block runs.

    The first beat is recorded at once, so a trial whose process dies at
    any point afterwards is found stale by :func:`ask` after ``GRACE_S``.
    """
    store = storage(url)
    study_id = store.get_study_id_from_name(study_name(job_id))
    trial_id = store.get_trial_id_from_study_id_trial_number(study_id, number)
    store.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                store.record_heartbeat(trial_id)
            except Exception:  # a missed beat only risks an early stale verdict
                continue

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
