"""Per-owner quotas: jobs not yet ended, and trials of them not yet finished.

A submission over either quota is a 429 naming the quota, its limit and the owner's count, and
stores and queues nothing; a batch counts all its cells; an idempotent replay is not a new
submission; concurrent submissions cannot pass the check together.
Real Redis and both database backends, through the real app.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import func, select

from core.db import repo
from core.db.models import Batch, CandidateStatus, Job
from core.db.session import session_factory
from core.errors import QuotaExceeded
from core.queue import INTERACTIVE
from core.settings import Settings
from core.spec import JobSpec
from service.quotas import admission
from tests.service.conftest import SPEC, keyed_client


def _settings(
    tmp_path: Path,
    db_url: str,
    redis_url: str,
    max_active_jobs: int = 0,
    max_queued_trials: int = 0,
) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=db_url,
        redis_url=redis_url,
        rate_limit=0,
        max_active_jobs=max_active_jobs,
        max_queued_trials=max_queued_trials,
    )


def _stored(settings: Settings, redis: Redis) -> tuple[int, int, int]:
    """(jobs, batches, RQ keys): what a refused submission must leave as it was."""
    with session_factory(settings.database_url)() as s:
        jobs = s.scalar(select(func.count()).select_from(Job))
        batches = s.scalar(select(func.count()).select_from(Batch))
    return int(jobs or 0), int(batches or 0), sum(1 for _ in redis.scan_iter("rq:*"))


def test_a_job_over_the_active_jobs_quota_is_429_and_stores_nothing(
    tmp_path: Path, db_url: str, redis_url: str, redis: Redis
) -> None:
    settings = _settings(tmp_path, db_url, redis_url, max_active_jobs=2)
    with keyed_client(settings, "alice") as alice:
        first = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 201
        assert alice.post("/v1/jobs", json=SPEC).status_code == 201
        before = _stored(settings, redis)

        refused = alice.post("/v1/jobs", json=SPEC)
        assert refused.status_code == 429, refused.text
        detail = refused.json()["detail"]
        assert "max_active_jobs" in detail and "2" in detail and "you have 2" in detail, detail
        assert _stored(settings, redis) == before
        # A retry of a stored submission is its first reply, whatever the quota.
        replay = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "k1"})
        assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]

        assert alice.post(f"/v1/jobs/{first.json()['id']}/cancel").status_code == 200
        assert alice.post("/v1/jobs", json=SPEC).status_code == 201  # an ended job frees one
        with keyed_client(settings, "bob") as bob:  # each owner has a quota of their own
            assert bob.post("/v1/jobs", json=SPEC).status_code == 201


def test_trials_over_the_queued_trials_quota_are_429_and_finished_ones_free_it(
    tmp_path: Path, db_url: str, redis_url: str, redis: Redis
) -> None:
    settings = _settings(tmp_path, db_url, redis_url, max_queued_trials=5)
    with keyed_client(settings, "alice") as alice:
        first = alice.post("/v1/jobs", json=SPEC).json()["id"]
        assert alice.post("/v1/jobs", json=SPEC).status_code == 201
        before = _stored(settings, redis)

        refused = alice.post("/v1/jobs", json=SPEC)  # 4 queued + 2 > 5
        assert refused.status_code == 429, refused.text
        detail = refused.json()["detail"]
        assert "max_queued_trials" in detail and "5" in detail and "you have 4" in detail, detail
        assert _stored(settings, redis) == before

        with session_factory(settings.database_url)() as s:  # one trial of the first finishes
            c = repo.add_candidate(
                s, first, trial_number=0, key="0", proposed=[1.0], ratios=[1.0], counts=[4],
                flops=1.0, params=1.0, status=CandidateStatus.running,
            )  # fmt: skip
            repo.finish_candidate(s, c.id, status=CandidateStatus.complete)
        assert alice.post("/v1/jobs", json=SPEC).status_code == 201  # 3 + 2 <= 5


def test_a_batch_counts_all_its_cells_and_is_refused_whole(
    tmp_path: Path, db_url: str, redis_url: str, redis: Redis
) -> None:
    settings = _settings(tmp_path, db_url, redis_url, max_active_jobs=3, max_queued_trials=9)
    grid = {"search.sampler": ["tpe", "random", "genetic"]}
    with keyed_client(settings, "alice") as alice:
        assert alice.post("/v1/jobs", json=SPEC).status_code == 201
        before = _stored(settings, redis)

        refused = alice.post("/v1/batches", json={"name": "b", "base": SPEC, "grid": grid})
        assert refused.status_code == 429, refused.text  # 1 + 3 jobs > 3
        assert "max_active_jobs" in refused.json()["detail"]
        assert "adds 3" in refused.json()["detail"]
        many_trials = {**SPEC, "search": {"n_trials": 4}}
        refused = alice.post("/v1/batches", json={"name": "b", "jobs": [many_trials] * 2})
        assert refused.status_code == 429, refused.text  # 2 + 8 trials > 9
        assert "max_queued_trials" in refused.json()["detail"]
        assert _stored(settings, redis) == before

        batch = alice.post("/v1/batches", json={"name": "b", "jobs": [SPEC, SPEC]})
        assert batch.status_code == 201, batch.text  # 3 jobs, 6 trials


def test_concurrent_submissions_cannot_pass_the_quota_together(
    tmp_path: Path, db_url: str, redis_url: str, redis: Redis
) -> None:
    """Six submissions at once against a quota of three: the check and the insert are one step."""
    settings = _settings(tmp_path, db_url, redis_url, max_active_jobs=3)
    with keyed_client(settings, "alice"):  # migrates
        pass
    spec = JobSpec.model_validate(SPEC)

    def submit(_: int) -> str:
        with session_factory(settings.database_url)() as s:
            try:
                with admission(s, redis, settings, "alice", jobs=1, trials=2):
                    time.sleep(0.2)  # a slow insert: a check outside the lock would pass six
                    repo.create_job(s, spec, INTERACTIVE, owner="alice")
            except QuotaExceeded:
                return "refused"
        return "stored"

    with ThreadPoolExecutor(6) as pool:
        outcomes = sorted(pool.map(submit, range(6)))
    assert outcomes == ["refused"] * 3 + ["stored"] * 3
    assert _stored(settings, redis)[0] == 3


def test_the_quotas_are_settings_with_defaults_a_full_batch_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.batches import MAX_JOBS, MAX_TRIALS

    defaults = Settings()
    assert defaults.max_active_jobs >= MAX_JOBS and defaults.max_queued_trials >= MAX_TRIALS
    monkeypatch.setenv("PRUNESEARCH_MAX_ACTIVE_JOBS", "7")
    monkeypatch.setenv("PRUNESEARCH_MAX_QUEUED_TRIALS", "0")  # 0: unlimited
    assert (Settings().max_active_jobs, Settings().max_queued_trials) == (7, 0)
