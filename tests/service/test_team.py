"""A shared service: keys, owners, cancel, delete, idempotency, priorities, batches, metrics.

Real Redis and both database backends (``db_url``), through the real app.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer

from cli.main import main as cli
from core.db import keys, repo
from core.db.models import CandidateStatus, JobStatus
from core.db.session import session_factory
from core.queue import get_queue, task_ids
from core.settings import Settings
from service.api.app import create_app
from tests.service.conftest import add_key, keyed_client

SPEC: dict[str, Any] = {
    "name": "team-lenet",
    "model": {"arch": "lenet5", "pretrain_epochs": 0},
    "dataset": {"name": "synthetic"},
    "target": {"flops_ratio": 0.5},
    "search": {"n_trials": 3},
}


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, redis_url=redis_url)


@pytest.fixture
def alice(settings: Settings) -> Iterator[TestClient]:
    with keyed_client(settings, "alice") as client:
        yield client


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    r = Redis.from_url(redis_url)
    yield r
    r.close()


def _rq_status(redis: Redis, rq_id: str) -> RQJobStatus | None:
    job = RQJob.fetch_many([rq_id], connection=redis, serializer=JSONSerializer)[0]
    return None if job is None else job.get_status()


def _jobs(settings: Settings) -> int:
    with session_factory(settings.database_url)() as s:
        return repo.count_jobs(s)


# --- keys and owners -----------------------------------------------------------------------


def test_no_key_or_a_bad_key_is_401_everywhere_but_operations(
    alice: TestClient, settings: Settings
) -> None:
    job_id = alice.post("/v1/jobs", json=SPEC).json()["id"]
    with TestClient(create_app(settings)) as anonymous:
        for method, path in [
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/candidates"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
            ("DELETE", f"/v1/jobs/{job_id}"),
            ("GET", "/v1/batches"),
        ]:
            for headers in ({}, {"Authorization": "Bearer ps_wrong"}, {"Authorization": "x"}):
                response = anonymous.request(method, path, headers=headers, json=SPEC)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path
    assert _jobs(settings) == 1


def test_another_owner_sees_nothing_and_gets_404(alice: TestClient, settings: Settings) -> None:
    job_id = alice.post("/v1/jobs", json=SPEC).json()["id"]
    bob = add_key(settings.database_url, "bob")
    assert alice.get("/v1/jobs").json()["total"] == 1
    assert alice.get("/v1/jobs", headers=bob).json() == {
        "items": [],
        "total": 0,
        "limit": 20,
        "offset": 0,
    }
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/candidates"),
        ("GET", f"/v1/jobs/{job_id}/pareto"),
        ("GET", f"/v1/jobs/{job_id}/result"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/result.json"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("DELETE", f"/v1/jobs/{job_id}"),
    ]:
        response = alice.request(method, path, headers=bob)
        assert response.status_code == 404, (method, path)
        assert response.json()["detail"] == f"job {job_id!r} not found"
    assert alice.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # bob changed nothing


def test_keys_are_stored_hashed_and_revocable(alice: TestClient, settings: Settings) -> None:
    with session_factory(settings.database_url)() as s:
        row, new = keys.create_key(s, "carol")
        stored = keys.list_keys(s, "carol")
    assert [k.digest for k in stored] == [row.digest] and new.plain not in row.digest
    assert len(new.plain) > 40 and new.plain.startswith("ps_")
    headers = {"Authorization": f"Bearer {new.plain}"}
    assert alice.get("/v1/jobs", headers=headers).status_code == 200
    with session_factory(settings.database_url)() as s:
        keys.revoke_key(s, row.id)
    assert alice.get("/v1/jobs", headers=headers).status_code == 401


def test_cli_keys_create_prints_the_key_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PRUNESEARCH_DATABASE_URL", settings.database_url)
    assert cli(["keys", "create", "--owner", "dave"]) == 0
    plain = capsys.readouterr().out.strip().splitlines()[-1]
    with session_factory(settings.database_url)() as s:
        assert keys.owner_of(s, plain) == "dave"
    assert cli(["keys", "list", "--owner", "dave"]) == 0
    listing = capsys.readouterr().out
    assert "dave" in listing and plain not in listing and "active" in listing


def test_keyless_mode_has_one_local_owner(tmp_path: Path, db_url: str, redis_url: str) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, redis_url=redis_url, auth="none"
    )
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/jobs", json=SPEC)
        assert response.status_code == 201
        assert response.json()["owner"] == "local"


def test_keyless_serve_refuses_a_public_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNESEARCH_AUTH", "none")
    with pytest.raises(SystemExit, match="without API keys"):
        cli(["serve", "--host", "0.0.0.0", "--port", "1"])


# --- cancel, delete, idempotency, priorities ------------------------------------------------


def test_cancel_drops_queued_tasks_and_keeps_what_was_found(
    alice: TestClient, settings: Settings, redis: Redis
) -> None:
    job_id = alice.post("/v1/jobs", json=SPEC).json()["id"]
    with session_factory(settings.database_url)() as s:  # one trial already scored
        cand = repo.add_candidate(
            s, job_id, trial_number=0, key="k", proposed=[1.0], ratios=[1.0], counts=[4],
            flops=1.0, params=1.0, status=CandidateStatus.running,
        )  # fmt: skip
        repo.finish_candidate(s, cand.id, status=CandidateStatus.complete, score=0.5, accuracy=0.5)

    response = alice.post(f"/v1/jobs/{job_id}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["job"]["status"] == "cancelled"
    assert response.json()["dropped_tasks"] == 3 + 2  # prepare, 3 trials, finalize
    prepare_id, trial_ids, finalize_id = task_ids(job_id, 3)
    for rq_id in (prepare_id, *trial_ids, finalize_id):
        assert _rq_status(redis, rq_id) == RQJobStatus.CANCELED
    assert get_queue(redis).count == 0
    assert alice.get(f"/v1/jobs/{job_id}/candidates").json()["total"] == 1
    again = alice.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["dropped_tasks"] == 0


def test_a_done_job_cannot_be_cancelled(alice: TestClient, settings: Settings) -> None:
    job_id = alice.post("/v1/jobs", json=SPEC).json()["id"]
    with session_factory(settings.database_url)() as s:
        for to, source in [
            (JobStatus.preparing, JobStatus.queued),
            (JobStatus.searching, JobStatus.preparing),
            (JobStatus.finalizing, JobStatus.searching),
            (JobStatus.done, JobStatus.finalizing),
        ]:
            repo.transition(s, job_id, to, allowed_from={source})
    response = alice.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 409 and "done" in response.json()["detail"]


def test_delete_needs_an_ended_job_and_removes_everything(
    alice: TestClient, settings: Settings, redis: Redis
) -> None:
    job_id = alice.post("/v1/jobs", json=SPEC).json()["id"]
    (settings.job_dir(job_id) / "result.json").write_text("{}")
    assert alice.delete(f"/v1/jobs/{job_id}").status_code == 409
    assert alice.get(f"/v1/jobs/{job_id}").status_code == 200

    alice.post(f"/v1/jobs/{job_id}/cancel")
    assert alice.delete(f"/v1/jobs/{job_id}").status_code == 204

    assert alice.get(f"/v1/jobs/{job_id}").status_code == 404
    assert not (settings.artifacts / job_id).exists()
    assert list(redis.scan_iter(f"rq:job:{job_id}*")) == []
    assert _jobs(settings) == 0


def test_idempotency_key_replays_the_first_job_or_conflicts(
    alice: TestClient, settings: Settings, redis: Redis
) -> None:
    key = {"Idempotency-Key": "nightly-2026-12-02"}
    first = alice.post("/v1/jobs", json=SPEC, headers=key)
    again = alice.post("/v1/jobs", json=SPEC, headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert get_queue(redis).count == 1  # one prepare queued, not two

    other = alice.post("/v1/jobs", json={**SPEC, "name": "other"}, headers=key)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    bob = add_key(settings.database_url, "bob")  # keys are per owner
    assert alice.post("/v1/jobs", json=SPEC, headers={**key, **bob}).status_code == 201
    too_long = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422 and "Idempotency-Key" in str(too_long.json()["detail"])
    assert _jobs(settings) == 2


def test_overnight_priority_goes_to_its_own_queue(alice: TestClient, redis: Redis) -> None:
    body = alice.post("/v1/jobs", json=SPEC, params={"queue": "overnight"}).json()
    assert body["queue"] == "overnight"
    assert get_queue(redis, "overnight").count == 1 and get_queue(redis).count == 0
    bad = alice.post("/v1/jobs", json=SPEC, params={"queue": "urgent"})
    assert bad.status_code == 422 and "queue" in str(bad.json()["detail"])


def test_candidates_sort_and_filter(alice: TestClient, settings: Settings) -> None:
    job_id = alice.post("/v1/jobs", json=SPEC).json()["id"]
    with session_factory(settings.database_url)() as s:
        repo.update_job(s, job_id, baseline={"profile_flops": 100.0, "profile_params": 10.0})
        for n, (acc, flops, status) in enumerate(
            [(0.7, 50.0, "complete"), (0.9, 60.0, "complete"), (None, 40.0, "failed")]
        ):
            c = repo.add_candidate(
                s, job_id, trial_number=n, key=str(n), proposed=[1.0], ratios=[1.0], counts=[4],
                flops=flops, params=flops / 10, status=CandidateStatus.running, worker=f"w{n % 2}",
            )  # fmt: skip
            repo.finish_candidate(s, c.id, status=CandidateStatus(status), accuracy=acc, score=acc)

    def trials(**params: Any) -> list[int]:
        page = alice.get(f"/v1/jobs/{job_id}/candidates", params=params).json()
        assert page["total"] == len(page["items"])
        return [c["trial_number"] for c in page["items"]]

    assert trials(order="-accuracy") == [1, 0, 2]  # unscored last
    assert trials(order="accuracy") == [0, 1, 2]
    assert trials(order="flops") == [2, 0, 1]
    assert trials(status="complete") == [0, 1]
    assert trials(min_accuracy=0.8) == [1]
    assert trials(max_flops_ratio=0.5) == [0, 2]
    assert trials(worker="w1") == [1]
    assert alice.get(f"/v1/jobs/{job_id}/candidates", params={"order": "x"}).status_code == 422


# --- batches -------------------------------------------------------------------------------


def test_grid_batch_creates_every_cell_on_the_overnight_queue(
    alice: TestClient, redis: Redis
) -> None:
    body = {
        "name": "grid",
        "base": SPEC,
        "grid": {"target.flops_ratio": [0.5, 0.25], "search.sampler": ["tpe", "random"]},
    }
    response = alice.post("/v1/batches", json=body)
    assert response.status_code == 201, response.text
    batch = response.json()
    cells = [(j["flops_target"], j["sampler"]) for j in batch["jobs"]]
    assert cells == [(0.5, "tpe"), (0.5, "random"), (0.25, "tpe"), (0.25, "random")]
    assert batch["status"] == "running" and batch["states"] == {"queued": 4}
    assert get_queue(redis, "overnight").count == 4 and get_queue(redis).count == 0
    assert {j["queue"] for j in alice.get("/v1/jobs").json()["items"]} == {"overnight"}
    assert alice.get(f"/v1/batches/{batch['id']}").json()["jobs"] == batch["jobs"]

    cancelled = alice.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert cancelled["status"] == "done" and cancelled["states"] == {"cancelled": 4}
    assert alice.delete(f"/v1/batches/{batch['id']}").status_code == 204
    assert alice.get("/v1/jobs").json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "b", "base": SPEC, "grid": {"search.sampler": ["tpe", "nope"]}}, "sampler[1]"),
        ({"name": "b", "base": SPEC, "grid": {"target.flops_ratio": [0.5, 2.0]}}, "flops_ratio"),
        ({"name": "b", "base": SPEC, "grid": {"serch.sampler": ["tpe"]}}, "serch"),
        ({"name": "b", "jobs": [SPEC, {**SPEC, "seed": -1}]}, "seed"),
        ({"name": "b", "jobs": [SPEC], "base": SPEC, "grid": {"seed": [1]}}, "either jobs"),
        (
            {
                "name": "b",
                "base": SPEC,
                "grid": {"seed": list(range(50)), "search.n_trials": [1, 2, 3, 4, 5]},
            },
            "at most 200",
        ),
        (
            {"name": "b", "jobs": [{**SPEC, "search": {"n_trials": 10_000}}] * 3},
            "30000 trials; at most 20000",
        ),
    ],
)
def test_a_bad_batch_names_the_field_and_creates_nothing(
    alice: TestClient, settings: Settings, redis: Redis, body: dict[str, Any], field: str
) -> None:
    response = alice.post("/v1/batches", json=body)
    assert response.status_code == 422
    assert field in str(response.json()["detail"])
    assert _jobs(settings) == 0 and alice.get("/v1/batches").json()["total"] == 0
    assert list(redis.scan_iter("rq:*")) == []


# --- metrics -------------------------------------------------------------------------------


def test_metrics_count_jobs_trials_and_queue_depth(alice: TestClient, settings: Settings) -> None:
    job_id = alice.post("/v1/jobs", json=SPEC).json()["id"]
    alice.post("/v1/jobs", json=SPEC, params={"queue": "overnight"})
    with session_factory(settings.database_url)() as s:
        for n, total_s in enumerate([0.5, 3.0, 20.0]):
            c = repo.add_candidate(
                s, job_id, trial_number=n, key=str(n), proposed=[1.0], ratios=[1.0], counts=[4],
                flops=1.0, params=1.0, status=CandidateStatus.running,
            )  # fmt: skip
            repo.finish_candidate(
                s, c.id, status=CandidateStatus.complete, timings={"total_s": total_s},
                finished_at=c.started_at,
            )  # fmt: skip
    text = alice.get("/metrics").text
    lines = set(text.splitlines())
    assert 'prunesearch_jobs{state="queued"} 2.0' in lines
    assert 'prunesearch_jobs{state="done"} 0.0' in lines
    assert 'prunesearch_queue_depth{queue="interactive"} 1.0' in lines
    assert 'prunesearch_queue_depth{queue="overnight"} 1.0' in lines
    assert 'prunesearch_trial_duration_seconds_bucket{le="0.5"} 1.0' in lines
    assert 'prunesearch_trial_duration_seconds_bucket{le="5.0"} 2.0' in lines
    assert "prunesearch_trial_duration_seconds_count 3.0" in lines
    assert "prunesearch_trial_duration_seconds_sum 23.5" in lines
    assert any(line.startswith("prunesearch_trials_per_second ") for line in lines)


def test_each_key_is_rate_limited_with_retry_after(
    tmp_path: Path, db_url: str, redis_url: str
) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, redis_url=redis_url, rate_limit=3
    )
    with keyed_client(settings, "alice") as alice:
        bob = add_key(settings.database_url, "bob")
        assert [alice.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
        limited = alice.get("/v1/jobs")
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "rate limit" in limited.json()["detail"]
        assert alice.post("/v1/jobs", json=SPEC).status_code == 429  # nothing created
        assert alice.get("/v1/jobs", headers=bob).status_code == 200  # bob has his own budget
        assert alice.get("/healthz").status_code == 200  # operations are not limited
    assert _jobs(settings) == 0
