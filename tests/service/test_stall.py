"""A stalled job: searching, and no trial finished for N times its median trial time.

The rule itself (``service.stall.assess``), then what the API's job view,
the job list and ``/metrics`` say about a job that stopped moving and one
that did not, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from core.db import repo
from core.db.models import CandidateStatus, JobStatus
from core.db.session import session_factory, session_scope
from core.settings import Settings
from service.stall import assess
from tests.service.conftest import keyed_client

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SPEC = {"name": "s", "dataset": {"name": "synthetic"}, "target": {"flops_ratio": 0.5}}


def _ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def _trial(started_ago: float, took_s: float) -> tuple[CandidateStatus, datetime, datetime]:
    return CandidateStatus.complete, _ago(started_ago), _ago(started_ago - took_s)


def test_a_job_is_stalled_after_n_median_trials_with_no_finish_and_not_before() -> None:
    trials = [_trial(500 + 10 * i, took_s=10.0) for i in range(5)]  # last finish 490 s ago
    found = assess(trials, _ago(1000), NOW, factor=5, floor_s=60)
    assert found is not None
    assert (found.idle_s, found.threshold_s, found.median_trial_s) == (490, 60, 10)
    assert assess(trials, _ago(1000), NOW, factor=50, floor_s=60) is None  # 500 s > 490 s
    assert assess(trials, _ago(1000), NOW, factor=5, floor_s=600) is None  # the floor holds


def test_without_a_finished_trial_the_search_start_counts_and_the_floor_alone() -> None:
    assert assess([], _ago(100), NOW, factor=5, floor_s=120) is None
    found = assess([], _ago(130), NOW, factor=5, floor_s=120)
    assert found is not None and found.median_trial_s is None and found.idle_s == 130


def test_duplicates_are_progress_but_not_trial_times() -> None:
    dup = (CandidateStatus.duplicate, _ago(10), _ago(9))  # its time was a wait for a twin
    trials = [dup, _trial(900, took_s=100.0)]
    assert assess(trials, _ago(1000), NOW, factor=5, floor_s=1) is None  # finished 9 s ago
    found = assess([_trial(900, took_s=100.0), _trial(3000, took_s=1.0)], _ago(4000), NOW, 1, 1)
    assert found is not None and found.median_trial_s == pytest.approx(50.5)


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(
        home=tmp_path / "home", database_url=db_url, redis_url=redis_url, stall_floor_s=60
    )


@pytest.fixture
def alice(settings: Settings) -> Iterator[TestClient]:
    with keyed_client(settings, "alice") as client:
        yield client


def _searching(settings: Settings, client: httpx.Client, finished_ago: float) -> str:
    """A job searching for an hour whose trials took 10 s; the last ended ``finished_ago``."""
    job_id = client.post("/v1/jobs", json=SPEC).json()["id"]
    now = datetime.now(UTC)
    with session_scope(session_factory(settings.database_url)) as s:
        repo.transition(s, job_id, JobStatus.preparing, allowed_from={JobStatus.queued})
        started = (now - timedelta(hours=1)).isoformat()
        repo.update_job(s, job_id, timings={"search_started": started})
        repo.transition(s, job_id, JobStatus.searching, allowed_from={JobStatus.preparing})
        for n in range(3):
            end = now - timedelta(seconds=finished_ago + 20 * n)
            c = repo.add_candidate(
                s, job_id, trial_number=n, key=str(n), proposed=[1.0], ratios=[1.0], counts=[4],
                flops=1.0, params=1.0, status=CandidateStatus.running,
                started_at=end - timedelta(seconds=10),
            )  # fmt: skip
            repo.finish_candidate(s, c.id, status=CandidateStatus.complete, finished_at=end)
    return job_id


def test_the_job_view_the_list_and_metrics_show_a_stalled_job(
    alice: TestClient, settings: Settings
) -> None:
    stuck = _searching(settings, alice, finished_ago=600)  # 600 s > max(60, 5 x 10 s)
    moving = _searching(settings, alice, finished_ago=5)

    view = alice.get(f"/v1/jobs/{stuck}").json()
    assert view["stalled"]["median_trial_s"] == pytest.approx(10)
    assert view["stalled"]["threshold_s"] == pytest.approx(60)
    assert view["stalled"]["idle_s"] >= 600
    assert alice.get(f"/v1/jobs/{moving}").json()["stalled"] is None
    listed = {j["id"]: j["stalled"] for j in alice.get("/v1/jobs").json()["items"]}
    assert listed[stuck] is not None and listed[moving] is None

    lines = set(alice.get("/metrics").text.splitlines())
    assert "prunesearch_jobs_stalled 1.0" in lines


def test_the_job_view_says_whether_there_is_a_sensitivity_report(
    alice: TestClient, settings: Settings
) -> None:
    job_id = alice.post("/v1/jobs", json=SPEC).json()["id"]
    assert alice.get(f"/v1/jobs/{job_id}").json()["has_sensitivity"] is False
    with session_scope(session_factory(settings.database_url)) as s:
        repo.update_job(s, job_id, triage={"curves": {}})
    assert alice.get(f"/v1/jobs/{job_id}").json()["has_sensitivity"] is True
