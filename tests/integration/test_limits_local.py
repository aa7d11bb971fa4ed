"""``limits``: a trial over ``trial_s`` fails and the search goes on; ``search_s`` ends the search.

Local mode, real tiny jobs. The slow trials are made slow on purpose by
delaying the real scoring function: what is under test is the limits'
plumbing (the alarm, the recorded reason, the study, the skipped slots,
finalize on what was found), not how long LeNet-5 takes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from cli.local import local_settings, run_local
from core.db import repo
from core.db.models import CandidateStatus
from core.db.session import session_factory, session_scope
from core.spec import JobSpec
from search.study import study_name
from tests.integration.conftest import tiny_spec
from workers.steps import trial


def _slowed(monkeypatch: pytest.MonkeyPatch, delays: list[float]) -> None:
    """The i-th trial's scoring sleeps ``delays[i]`` seconds first (0 after the list)."""
    real, calls = trial.score_candidate, iter(delays)

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(next(calls, 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(trial, "score_candidate", slow)


def _spec(name: str, n_trials: int, limits: dict[str, float]) -> JobSpec:
    return JobSpec.model_validate(
        {**tiny_spec(name, n_trials=n_trials).model_dump(mode="json"), "limits": limits}
    )


def _candidates(out: Path, job_id: str) -> list[Any]:
    settings = local_settings(out, "cpu")
    with session_scope(session_factory(settings.database_url)) as s:
        cands = repo.list_candidates(s, job_id, limit=100, offset=0)
        s.expunge_all()
    return cands


def test_a_trial_over_trial_s_is_failed_and_the_search_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slowed(monkeypatch, [60.0])  # the first trial would take a minute
    start = time.monotonic()
    job = run_local(_spec("trial-limit", 3, {"trial_s": 5.0}), tmp_path, progress=False)
    assert job["status"] == "done", job["error"]
    assert time.monotonic() - start < 50  # stopped at 5 s, not waited out

    cands = _candidates(tmp_path, job["id"])
    assert [c.status for c in cands] == [CandidateStatus.failed] + [CandidateStatus.complete] * 2
    assert cands[0].error == "timed out after 5 s (limits.trial_s)"
    url = local_settings(tmp_path, "cpu").optuna_url
    states = [
        t.state for t in optuna.load_study(study_name=study_name(job["id"]), storage=url).trials
    ]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["best"]["candidate_id"] != cands[0].id and result["stopped_early"] is None


def test_search_s_skips_the_remaining_trials_and_finalizes_the_best_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slowed(monkeypatch, [1.5, 1.5, 1.5, 1.5, 1.5, 1.5])
    job = run_local(_spec("search-limit", 6, {"search_s": 2.0}), tmp_path, progress=False)
    assert job["status"] == "done", job["error"]

    cands = _candidates(tmp_path, job["id"])
    ran = len(cands)
    assert 1 <= ran < 6 and all(c.status == CandidateStatus.complete for c in cands)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["stopped_early"] == f"limits.search_s: {ran} of 6 trials ran in 2 s"
    assert result["best"]["candidate_id"] in {c.id for c in cands}
