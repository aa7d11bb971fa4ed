"""``GET /v1/jobs/{id}/pareto``, the candidates' objectives and rungs, and the new spec fields.

Candidates are stored through the repository (as the workers store them)
on both database backends; the API is a TestClient on a real Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from core.db import repo
from core.db.models import CandidateStatus
from core.db.session import session_factory
from core.settings import Settings
from core.spec import JobSpec
from tests.service.conftest import keyed_client

SPEC: dict[str, Any] = {
    "name": "pareto",
    "model": {"arch": "lenet5", "pretrain_epochs": 0},
    "dataset": {"name": "synthetic"},
    "target": {"flops_ratio": 0.5},
    "search": {"n_trials": 8},
}

# name: (status, val accuracy, flops_ratio, params_ratio)
CANDIDATES: dict[str, tuple[CandidateStatus, float | None, float, float]] = {
    "a": (CandidateStatus.complete, 0.60, 0.50, 0.20),
    "b": (CandidateStatus.complete, 0.70, 0.40, 0.40),
    "c": (CandidateStatus.complete, 0.50, 0.30, 0.30),
    "d": (CandidateStatus.complete, 0.80, 0.50, 0.50),
    "e": (CandidateStatus.complete, 0.65, 0.45, 0.45),
    "h": (CandidateStatus.complete, 0.55, 0.50, 0.20),  # a's cost, less accurate
    "dup": (CandidateStatus.duplicate, 0.99, 0.10, 0.10),  # not a network of its own
    "fail": (CandidateStatus.failed, None, 0.10, 0.10),
    "run": (CandidateStatus.running, None, 0.10, 0.10),
}
# Non-dominated, cheapest first, on each axis.
FRONT = {"params_ratio": ["a", "b", "d"], "flops_ratio": ["c", "b", "d"]}


def _spec(**search: Any) -> dict[str, Any]:
    return {**SPEC, "search": {**SPEC["search"], **search}}


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, redis_url=redis_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with keyed_client(settings) as c:
        yield c


def _job_with_candidates(settings: Settings, objective: str) -> tuple[str, dict[str, int]]:
    """A job of ``objective`` holding :data:`CANDIDATES`; their ids by name."""
    spec = JobSpec.model_validate(_spec(objective=objective))
    ids: dict[str, int] = {}
    with session_factory(settings.database_url)() as s:
        job_id = repo.create_job(s, spec, "interactive", owner="alice").id
        for trial, (name, (status, accuracy, flops, params)) in enumerate(CANDIDATES.items()):
            cand = repo.add_candidate(
                s,
                job_id,
                trial_number=trial,
                key=f"k-{name}",
                proposed=[flops, params],
                ratios=[flops, params],
                counts=[1, 2],
                flops=flops * 1000,
                params=params * 100,
                objectives={"flops_ratio": flops, "params_ratio": params},
                status=CandidateStatus.running,
            )
            if status != CandidateStatus.running:
                score = None if accuracy is None else accuracy - 0.01
                repo.finish_candidate(s, cand.id, status=status, accuracy=accuracy, score=score)
            ids[name] = cand.id
    return job_id, ids


@pytest.mark.parametrize("objective", ["params_ratio", "flops_ratio"])
def test_pareto_is_the_front_on_the_jobs_objective(
    client: TestClient, settings: Settings, objective: str
) -> None:
    job_id, ids = _job_with_candidates(settings, objective)

    response = client.get(f"/v1/jobs/{job_id}/pareto")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["objective"] == objective
    assert body["candidates"] == 6  # the complete ones
    assert body["chosen"] is None  # no result yet
    front = body["front"]
    assert [p["candidate_id"] for p in front] == [ids[n] for n in FRONT[objective]]
    for point in front:
        name = next(n for n, i in ids.items() if i == point["candidate_id"])
        _, accuracy, flops, params = CANDIDATES[name]
        assert point["val_accuracy"] == pytest.approx(accuracy)
        assert point["cost"] == pytest.approx(flops if objective == "flops_ratio" else params)
        assert point["flops_ratio"] == pytest.approx(flops)
        assert point["params_ratio"] == pytest.approx(params)
        assert point["ratios"] == pytest.approx([flops, params])
    costs = [p["cost"] for p in front]
    accuracies = [p["val_accuracy"] for p in front]
    assert costs == sorted(costs) and accuracies == sorted(accuracies)

    with session_factory(settings.database_url)() as s:
        repo.update_job(s, job_id, result={"best": {"candidate_id": ids["b"]}})
    assert client.get(f"/v1/jobs/{job_id}/pareto").json()["chosen"] == ids["b"]


def test_pareto_of_a_job_without_candidates_and_of_no_job(
    client: TestClient, settings: Settings
) -> None:
    with session_factory(settings.database_url)() as s:
        job_id = repo.create_job(s, JobSpec.model_validate(SPEC), "interactive", owner="alice").id
    body = client.get(f"/v1/jobs/{job_id}/pareto").json()
    assert body == {"objective": "flops_ratio", "candidates": 0, "front": [], "chosen": None}
    response = client.get("/v1/jobs/nope/pareto")
    assert response.status_code == 404
    assert "detail" in response.json()


def test_candidates_show_objectives_and_rungs(client: TestClient, settings: Settings) -> None:
    job_id, ids = _job_with_candidates(settings, "flops_ratio")
    rungs = {"short_finetune": {"val_accuracy": 0.75, "steps": 50, "search_rank": 1}}
    latency = {"flops_ratio": 0.4, "params_ratio": 0.4, "latency_ms": 1.5, "latency_ratio": 0.6}
    with session_factory(settings.database_url)() as s:
        repo.finish_candidate(s, ids["b"], rungs=rungs, objectives=latency, accuracy=0.7)

    items = {c["id"]: c for c in client.get(f"/v1/jobs/{job_id}/candidates").json()["items"]}
    assert items[ids["b"]]["rungs"] == rungs
    assert items[ids["b"]]["objectives"] == latency
    assert items[ids["a"]]["rungs"] is None
    assert items[ids["a"]]["objectives"] == {"flops_ratio": 0.5, "params_ratio": 0.2}


def _with(search: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    body = _spec(**(search or {}))
    for key, values in top.items():
        body[key] = values
    return body


BAD_BODIES = [
    ("sampler cmaes", _with({"sampler": "cmaes"}), "sampler"),
    ("granularity layer", _with({"granularity": "layer"}), "granularity"),
    ("objective energy", _with({"objective": "energy"}), "objective"),
    ("population 1", _with({"population": 1}), "population"),
    ("latency_batch 0", _with({"latency_batch": 0}), "latency_batch"),
    ("promote_top_k -1", _with(scoring={"promote_top_k": -1}), "promote_top_k"),
    ("promote_steps 0", _with(scoring={"promote_steps": 0}), "promote_steps"),
    ("tp_global lowrank", _with({"sampler": "tp_global", "operator": "lowrank"}), "search"),
    ("sensitivity mixed", _with({"sampler": "sensitivity", "operator": "mixed"}), "search"),
]


@pytest.mark.parametrize(
    ("body", "field"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
def test_bad_new_spec_fields_are_422_naming_the_field_and_create_nothing(
    client: TestClient, settings: Settings, redis_url: str, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/jobs", json=body)

    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(field in err["loc"] for err in errors), errors
    if field == "search":  # a rule across fields: the message says which
        assert any("needs operator prune" in err["msg"] for err in errors), errors
    with session_factory(settings.database_url)() as s:
        assert repo.count_jobs(s) == 0
    redis = Redis.from_url(redis_url)
    try:
        assert list(redis.scan_iter("rq:*")) == []
    finally:
        redis.close()


def test_the_new_spec_fields_are_accepted(client: TestClient, settings: Settings) -> None:
    body = _with(
        {
            "sampler": "nsga2",
            "granularity": "stage",
            "population": 4,
            "objective": "latency_ratio",
            "latency_batch": 16,
        },
        scoring={"promote_top_k": 0, "promote_steps": 10},
    )
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    search = response.json()["spec"]["search"]
    assert (search["sampler"], search["granularity"], search["population"]) == ("nsga2", "stage", 4)
    assert (search["objective"], search["latency_batch"]) == ("latency_ratio", 16)
    assert response.json()["spec"]["scoring"]["promote_top_k"] == 0
    assert client.get(f"/v1/jobs/{response.json()['id']}/pareto").json()["objective"] == (
        "latency_ratio"
    )
