"""The embedded default: one process, SQLite files, the same tasks as the workers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli.local import local_settings, run_local
from core.db import repo
from core.db.models import CandidateStatus
from core.db.session import session_factory, session_scope
from tests.integration.conftest import tiny_spec
from workers import export
from workers.verify import verify


@pytest.mark.parametrize(
    ("sampler", "criterion"), [("tpe", "l1"), ("uniform", "l1"), ("random", "l2")]
)
def test_local_search_writes_a_verified_result(
    tmp_path: Path, sampler: str, criterion: str
) -> None:
    spec = tiny_spec(f"local-{sampler}", n_trials=6, sampler=sampler, criterion=criterion)
    job = run_local(spec, tmp_path, progress=False)
    assert job["status"] == "done", job["error"]

    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result) >= {"baseline", "best", "pareto", "timings"}
    assert set(result["timings"]) == {"prepare_s", "search_s", "ladder_s", "finalize_s"}
    best = result["best"]
    assert best["flops"] <= 0.5 * result["baseline"]["flops"] * 1.01
    assert set(best["latency_ms"]) == {"1", "256"}
    # One baseline latency: the job (as the API shows it) and result.json agree.
    assert job["baseline"]["latency_ms"] == result["baseline"]["latency_ms"]
    assert best["criterion"] == criterion
    assert result["pareto"] and all(p["flops"] > 0 for p in result["pareto"])

    # Every claim re-measured from the exported files alone.
    checks = verify(tmp_path, settings=local_settings(tmp_path, "cpu"))
    assert all(c.ok for c in checks), checks
    assert export.load(tmp_path)  # rebuilt without pickle

    factory = session_factory(local_settings(tmp_path, "cpu").database_url)
    with session_scope(factory) as s:
        timings = repo.get_job(s, job["id"]).timings
        cands = repo.list_candidates(s, job["id"], limit=100, offset=0)
    # The phases add up: the search ends where finalize starts, the ladder is finalize's.
    opened, closed = (
        datetime.fromisoformat(timings[k]) for k in ("search_started", "finalize_started")
    )
    assert result["timings"]["search_s"] == pytest.approx(
        (closed - opened).total_seconds(), abs=1e-3
    )
    ends = [c.finished_at for c in cands if c.finished_at is not None]
    assert len(ends) == len(cands)
    assert all((e if e.tzinfo else e.replace(tzinfo=UTC)) <= closed for e in ends)
    assert result["timings"]["ladder_s"] <= result["timings"]["finalize_s"]
    with session_scope(factory) as s:
        assert len(cands) == spec.search.n_trials
        assert [c.trial_number for c in cands] == list(range(spec.search.n_trials))
        statuses = {c.status for c in cands}
        assert CandidateStatus.failed not in statuses
        for c in cands:
            assert c.flops <= 0.5 * result["baseline"]["profile_flops"] + 1e-6
            if c.status == CandidateStatus.complete:
                assert c.timings["prune_s"] > 0 and c.timings["eval_s"] > 0
    if sampler == "uniform":
        # After budget repair every uniform proposal is the same network: one
        # evaluation, the rest recorded as duplicates.
        assert sum(c.status == CandidateStatus.complete for c in cands) == 1


def test_infeasible_budget_fails_the_job_with_a_reason(tmp_path: Path) -> None:
    spec = tiny_spec("too-small").model_copy(
        update={"target": tiny_spec("x").target.model_copy(update={"flops_ratio": 0.01})}
    )
    job = run_local(spec, tmp_path, progress=False)
    assert job["status"] == "failed"
    assert "min_ratio" in job["error"]
    assert not (tmp_path / "result.json").exists()


def test_finetune_scoring_trains_each_candidate_before_validating(tmp_path: Path) -> None:
    base = tiny_spec("local-finetune", n_trials=3)
    spec = base.model_copy(
        update={
            "scoring": base.scoring.model_copy(update={"mode": "finetune", "finetune_steps": 5}),
            "model": base.model.model_copy(update={"pretrain_epochs": 1}),
        }
    )
    adaptive = run_local(
        base.model_copy(update={"model": spec.model}), tmp_path / "a", progress=False
    )
    tuned = run_local(spec, tmp_path / "b", progress=False)
    assert adaptive["status"] == tuned["status"] == "done"
    for job, out in ((adaptive, tmp_path / "a"), (tuned, tmp_path / "b")):
        with session_scope(session_factory(local_settings(out, "cpu").database_url)) as s:
            cands = repo.list_candidates(s, job["id"], limit=10, offset=0)
            job["tune"] = [c.timings.get("finetune_s", 0.0) for c in cands]
            job["accs"] = [c.accuracy for c in cands]
    # Same seed, same proposals: only the five SGD steps differ, and they cost time
    # and change the scores.
    assert all(t > 0 for t in tuned["tune"]) and not any(adaptive["tune"])
    assert tuned["accs"] != adaptive["accs"]
