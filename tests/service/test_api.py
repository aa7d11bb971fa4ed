"""The REST API against a real Redis and both database backends."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer

from core.db import repo
from core.db.models import CandidateStatus, JobStatus
from core.db.session import session_factory
from core.queue import get_queue, task_ids
from core.settings import Settings
from core.spec import JobSpec
from tests.service.conftest import keyed_client
from tests.support import free_port

SPEC: dict[str, Any] = {
    "name": "fmnist-lenet-half",
    "model": {"arch": "lenet5", "pretrain_epochs": 0},
    "dataset": {"name": "synthetic"},
    "target": {"flops_ratio": 0.5},
    "search": {"n_trials": 3},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """SPEC with one (dotted) field replaced; ``...`` removes it."""
    spec = {k: dict(v) if isinstance(v, dict) else v for k, v in SPEC.items()}
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node[key]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return spec


def _settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, redis_url=redis_url)


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return _settings(tmp_path, db_url, redis_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with keyed_client(settings) as c:
        yield c


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    r = Redis.from_url(redis_url)
    yield r
    r.close()


def _job_count(settings: Settings) -> int:
    with session_factory(settings.database_url)() as s:
        return repo.count_jobs(s)


def _rq_keys(redis: Redis) -> list[bytes]:
    return list(redis.scan_iter("rq:*"))


def _make_job(settings: Settings, n_trials: int = 3) -> str:
    """A job stored directly (no queue), for the read endpoints."""
    from core.spec import JobSpec

    spec = JobSpec.model_validate(_with("search.n_trials", n_trials))
    with session_factory(settings.database_url)() as s:
        return repo.create_job(s, spec, "interactive", owner="alice").id


# --- POST /v1/jobs ------------------------------------------------------------------------


def test_post_creates_row_and_queues_prepare_trials_finalize(
    client: TestClient, settings: Settings, redis: Redis
) -> None:
    response = client.post("/v1/jobs", json=SPEC)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["queue"] == "interactive"
    assert body["progress"] == {"done": 0, "total": 3}
    assert body["best"] is None
    job_id = body["id"]
    with session_factory(settings.database_url)() as s:
        assert repo.get_job(s, job_id).spec["name"] == SPEC["name"]

    queue = get_queue(redis, "interactive")
    prepare_id, trial_ids, finalize_id = task_ids(job_id, 3)
    assert queue.get_job_ids() == [prepare_id]
    assert sorted(queue.deferred_job_registry.get_job_ids()) == sorted([*trial_ids, finalize_id])
    assert get_queue(redis, "overnight").count == 0

    prepare = RQJob.fetch(prepare_id, connection=redis, serializer=JSONSerializer)
    assert (prepare.func_name, list(prepare.args)) == ("workers.tasks.prepare", [job_id])
    for trial_id in trial_ids:
        trial = RQJob.fetch(trial_id, connection=redis, serializer=JSONSerializer)
        assert trial.func_name == "workers.tasks.trial"
        assert list(trial.args) == [job_id]
        assert trial.get_status() == RQJobStatus.DEFERRED
        assert trial._dependency_ids == [prepare_id]
    finalize = RQJob.fetch(finalize_id, connection=redis, serializer=JSONSerializer)
    assert finalize.func_name == "workers.tasks.finalize"
    assert finalize.allow_dependency_failures
    assert sorted(finalize._dependency_ids) == sorted(trial_ids)
    # JSON on the wire (RQ zlib-compresses it): readable without unpickling anything.
    data = redis.hget(prepare.key, "data")
    assert isinstance(data, bytes)
    stored = json.loads(zlib.decompress(data))
    assert stored[0] == "workers.tasks.prepare" and stored[2] == [job_id]


def test_post_to_overnight_queue(client: TestClient, redis: Redis) -> None:
    response = client.post("/v1/jobs", params={"queue": "overnight"}, json=SPEC)
    assert response.status_code == 201, response.text
    assert response.json()["queue"] == "overnight"
    assert get_queue(redis, "overnight").count == 1
    assert get_queue(redis, "interactive").count == 0


BAD_BODIES = [
    ("unknown field", {**SPEC, "colour": "red"}, "colour"),
    ("n_trials 0", _with("search.n_trials", 0), "n_trials"),
    ("flops_ratio 1.5", _with("target.flops_ratio", 1.5), "flops_ratio"),
    ("missing target", _with("target", ...), "target"),
    ("bad arch", _with("model.arch", "resnet9000"), "arch"),
    ("bad name", _with("name", "../etc passwd"), "name"),
    ("empty target", _with("target", {}), "target"),
    ("bad criterion", _with("search.criterion", "l3"), "criterion"),
    ("fold without similarity", _with("search.fold", True), "search"),
    ("push without discriminant", _with("search.push_steps", 10), "search"),
    ("bad masking", _with("search.masking", "sometimes"), "masking"),
    (
        "dynamic with reconstruct",
        _with("search", {"masking": "dynamic", "reconstruct": True}),
        "search",
    ),
    (
        "dynamic with lowrank",
        _with("search", {"masking": "dynamic", "operator": "lowrank"}),
        "search",
    ),
    ("bad operator", _with("search.operator", "quantize"), "operator"),
    ("lowrank_slices 0", _with("search.lowrank_slices", 0), "lowrank_slices"),
    ("distill temperature 0", _with("distillation", {"temperature": 0}), "temperature"),
    ("distill weight 2", _with("distillation", {"weight": 2}), "weight"),
    ("triage not a bool", _with("triage", "yes please"), "triage"),
    ("triage unknown key", _with("triage", {"enabled": True, "colour": 1}), "colour"),
]


@pytest.mark.parametrize(
    ("body", "field"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
def test_bad_bodies_are_422_naming_the_field_and_create_nothing(
    client: TestClient, settings: Settings, redis: Redis, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/jobs", json=body)

    assert response.status_code == 422, response.text
    locations = [err["loc"] for err in response.json()["detail"]]
    assert any(field in loc for loc in locations), locations
    assert _job_count(settings) == 0
    assert _rq_keys(redis) == []


def test_bad_queue_is_422(client: TestClient, settings: Settings, redis: Redis) -> None:
    response = client.post("/v1/jobs", params={"queue": "urgent"}, json=SPEC)
    assert response.status_code == 422
    assert any("queue" in err["loc"] for err in response.json()["detail"])
    assert _job_count(settings) == 0
    assert _rq_keys(redis) == []


def test_redis_down_is_503_and_keeps_no_row(tmp_path: Path, db_url: str) -> None:
    settings = _settings(tmp_path, db_url, f"redis://127.0.0.1:{free_port()}/0")
    with keyed_client(settings) as client:
        response = client.post("/v1/jobs", json=SPEC)
        assert response.status_code == 503, response.text
        assert "Redis" in response.json()["detail"]
        assert _job_count(settings) == 0
        assert client.get("/healthz").status_code == 200  # alive, but not ready
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["redis"] == "unreachable"


def test_failed_enqueue_deletes_the_row(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis answers the ping but dies before the tasks are queued: no row may remain."""
    from core.errors import QueueUnavailable
    from service.api.routes import jobs as jobs_routes

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise QueueUnavailable("connection lost")

    monkeypatch.setattr(jobs_routes, "enqueue_job", broken)
    response = client.post("/v1/jobs", json=SPEC)
    assert response.status_code == 503
    assert _job_count(settings) == 0


# --- GET ----------------------------------------------------------------------------------


def test_list_jobs_paginates_and_filters(client: TestClient, settings: Settings) -> None:
    ids = [_make_job(settings) for _ in range(3)]

    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    rest = client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["id"] for j in rest["items"]] == ids[:1]
    assert client.get("/v1/jobs", params={"status": "done"}).json()["items"] == []
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()
    assert queued["total"] == 3

    for params in ({"limit": 0}, {"limit": 1000}, {"offset": -1}, {"status": "bogus"}):
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"][0]["loc"][-1] in params


def test_job_detail_progress_best_and_ratios(client: TestClient, settings: Settings) -> None:
    job_id = _make_job(settings, n_trials=4)
    with session_factory(settings.database_url)() as s:
        repo.update_job(
            s,
            job_id,
            baseline={
                "accuracy": 0.9,
                "flops": 999.0,
                "profile_flops": 1000.0,
                "profile_params": 200.0,
            },
            timings={"prepare_s": 1.5},
        )
        for trial, score in enumerate([0.5, 0.8]):
            cand = repo.add_candidate(
                s,
                job_id,
                trial_number=trial,
                key=f"k{trial}",
                ratios=[0.5],
                proposed=[0.5],
                counts=[4],
                flops=500.0,
                params=50.0,
                worker="w",
                device="cpu",
            )
            repo.finish_candidate(s, cand.id, score=score, accuracy=score + 0.05)
        best_id = cand.id
        repo.add_candidate(
            s,
            job_id,
            trial_number=2,
            key="k2",
            ratios=[1.0],
            proposed=[1.0],
            counts=[8],
            flops=1000.0,
            params=200.0,
        )

    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["progress"] == {"done": 2, "total": 4}
    assert body["best"]["candidate_id"] == best_id
    assert body["best"]["score"] == 0.8
    assert body["best"]["flops_ratio"] == pytest.approx(0.5)
    assert body["best"]["params_ratio"] == pytest.approx(0.25)
    assert body["best"]["ratios"] == [0.5]
    assert body["baseline"]["accuracy"] == 0.9
    assert body["timings"] == {"prepare_s": 1.5}
    assert body["has_result"] is False
    assert body["created_at"].endswith(("Z", "+00:00"))

    assert client.get("/v1/jobs/nope").status_code == 404
    assert "detail" in client.get("/v1/jobs/nope").json()

    page = client.get(f"/v1/jobs/{job_id}/candidates", params={"order": "score"}).json()
    assert page["total"] == 3
    first = page["items"][0]
    assert first["id"] == best_id and first["flops_ratio"] == pytest.approx(0.5)
    assert {
        "trial_number",
        "status",
        "ratios",
        "counts",
        "flops",
        "params",
        "score",
        "accuracy",
        "worker",
        "device",
        "timings",
        "error",
        "started_at",
        "finished_at",
    } <= set(first)
    assert page["items"][-1]["status"] == CandidateStatus.running
    assert page["items"][-1]["score"] is None
    by_trial = client.get(f"/v1/jobs/{job_id}/candidates", params={"limit": 1, "offset": 1})
    assert [c["trial_number"] for c in by_trial.json()["items"]] == [1]


def test_candidates_pagination_bounds(client: TestClient, settings: Settings) -> None:
    job_id = _make_job(settings)
    url = f"/v1/jobs/{job_id}/candidates"
    assert client.get(url, params={"limit": 500}).status_code == 200
    for params in ({"limit": 0}, {"limit": 1000}, {"offset": -1}, {"order": "random"}):
        response = client.get(url, params=params)
        assert response.status_code == 422, params
    assert client.get("/v1/jobs/nope/candidates").status_code == 404


def test_result_is_404_until_done(client: TestClient, settings: Settings) -> None:
    job_id = _make_job(settings)
    url = f"/v1/jobs/{job_id}/result"
    assert client.get(url).status_code == 404
    assert "detail" in client.get(url).json()

    result = {"best": {"accuracy": 0.8}, "baseline": {"accuracy": 0.9}, "pareto": []}
    with session_factory(settings.database_url)() as s:
        for to, frm in [
            (JobStatus.preparing, JobStatus.queued),
            (JobStatus.searching, JobStatus.preparing),
            (JobStatus.finalizing, JobStatus.searching),
        ]:
            repo.transition(s, job_id, to, allowed_from={frm})
        repo.update_job(s, job_id, result=result)
        assert client.get(url).status_code == 404  # finalizing: not done yet
        repo.transition(s, job_id, JobStatus.done, allowed_from={JobStatus.finalizing})

    response = client.get(url)
    assert response.status_code == 200
    assert response.json() == result
    assert client.get(f"/v1/jobs/{job_id}").json()["has_result"] is True
    assert client.get("/v1/jobs/nope/result").status_code == 404


def test_sensitivity_is_404_until_triage_is_written(client: TestClient, settings: Settings) -> None:
    plain = _make_job(settings)
    response = client.get(f"/v1/jobs/{plain}/sensitivity")
    assert response.status_code == 404
    assert "no triage: true" in response.json()["detail"]

    spec = JobSpec.model_validate({**_with("search.n_trials", 3), "triage": True})
    with session_factory(settings.database_url)() as s:
        job_id = repo.create_job(s, spec, "interactive", owner="alice").id
    assert "it is queued" in client.get(f"/v1/jobs/{job_id}/sensitivity").json()["detail"]
    report = {"curves": {"conv1": [[0.1, 0.2], [0.9, 0.8]]}, "blocks": []}
    with session_factory(settings.database_url)() as s:
        repo.update_job(s, job_id, triage=report)
    response = client.get(f"/v1/jobs/{job_id}/sensitivity")
    assert response.status_code == 200
    assert response.json() == report
    assert client.get("/v1/jobs/nope/sensitivity").status_code == 404


def test_artifacts_allow_list(client: TestClient, settings: Settings) -> None:
    job_id = _make_job(settings)
    job_dir = settings.job_dir(job_id)
    (job_dir / "recipe.json").write_text('{"arch": "lenet5"}')
    (job_dir / "model.safetensors").write_bytes(b"\x00\x01weights")
    (job_dir / "secret.txt").write_text("no")
    (job_dir.parent / "x").write_text("outside")

    response = client.get(f"/v1/jobs/{job_id}/artifacts/recipe.json")
    assert response.status_code == 200
    assert response.json() == {"arch": "lenet5"}
    assert response.headers["content-type"].startswith("application/json")
    weights = client.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors")
    assert weights.status_code == 200 and weights.content == b"\x00\x01weights"

    for name in (
        "secret.txt",
        "..%2Fx",
        "../x",
        "%2E%2E%2Fx",
        "..%2F..%2Fetc%2Fpasswd",
        "model.onnx",
    ):
        response = client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        assert response.status_code == 404, name
    assert client.get("/v1/jobs/nope/artifacts/recipe.json").status_code == 404


def test_healthz_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "redis": "ok"}
    schema = client.get("/openapi.json").json()
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/candidates",
        "/v1/jobs/{job_id}/result",
        "/v1/jobs/{job_id}/sensitivity",
        "/v1/jobs/{job_id}/artifacts/{name}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(schema["paths"])
