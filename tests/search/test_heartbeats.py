"""Trials under ask/tell: a silent trial is failed before the next ask; a late tell is harmless."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import ask, create_study, heartbeat, tell
from search import study as study_module
from search.profile import ModelProfile
from search.space import SearchSpace
from search.study import study_name


def _states(url: str, job: str) -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name=study_name(job), storage=url).trials]


def test_a_trial_whose_heartbeat_stops_is_failed_at_the_next_ask(
    tmp_path: Path, profile: ModelProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(study_module, "GRACE_S", 1)  # read when this URL's storage opens
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    space = SearchSpace(profile, min_ratio=0.2)
    create_study("job", url)
    kwargs = {"sampler": "random", "seed": 0, "n_trials": 5}

    dead = ask("job", url, space, **kwargs)
    with heartbeat("job", url, dead.number):  # one beat, then its process "dies"
        pass
    alive = ask("job", url, space, **kwargs)
    with heartbeat("job", url, alive.number, every=0.2):
        # SQLite stores beats in whole seconds: 2.6 s puts the dead beat more than
        # GRACE_S behind whatever second the next ask reads; alive keeps beating.
        time.sleep(2.6)
        ask("job", url, space, **kwargs)
    assert _states(url, "job") == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]

    # The run thought dead reports late: Optuna keeps the FAIL, no error, nothing counted.
    tell("job", url, dead.number, 0.9)
    tell("job", url, alive.number, 0.7)
    tell("job", url, alive.number, None)  # a second report of a finished trial: no-op too
    assert _states(url, "job")[:2] == [TrialState.FAIL, TrialState.COMPLETE]
    best = optuna.load_study(study_name=study_name("job"), storage=url).best_trial
    assert (best.number, best.value) == (alive.number, 0.7)


def test_silent_names_the_trials_whose_heartbeat_stopped_and_fails_none(
    tmp_path: Path, profile: ModelProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(study_module, "SILENT_S", 1)  # read when this URL's probe opens
    url = f"sqlite:///{tmp_path / 'silent.db'}"
    create_study("job", url)
    space = SearchSpace(profile, min_ratio=0.2)
    dead, alive, unborn = (
        ask("job", url, space, sampler="random", seed=0, n_trials=5) for _ in range(3)
    )
    numbers = [dead.number, alive.number, unborn.number]
    with heartbeat("job", url, dead.number):  # one beat, then its process "dies"
        pass
    with heartbeat("job", url, alive.number, every=0.2):
        assert study_module.silent("job", url, numbers) == set()
        time.sleep(2.6)  # SQLite's whole seconds: dead is now more than SILENT_S behind
        assert study_module.silent("job", url, numbers) == {dead.number}
    assert study_module.silent("job", url, []) == set()
    # Only read: every trial is still running (a twin's silence is not a verdict).
    assert _states(url, "job") == [TrialState.RUNNING] * 3
