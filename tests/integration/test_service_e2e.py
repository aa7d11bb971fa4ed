"""The service on real parts: the API, two worker processes, a real Redis.

Nothing is faked: ``prunesearch serve``, ``prunesearch worker`` (twice) and
``prunesearch submit --wait`` run as separate processes, exactly as a user
starts them, and the job must end ``done`` with both workers having scored
candidates.

Each test runs on SQLite and on PostgreSQL (our tables and the Optuna storage in two
fresh databases), except those marked ``SQLITE_ONLY``: their samplers and methods meet
the database through the same code the others already take to PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from core.db import repo
from core.db.session import session_factory, session_scope
from tests.integration.conftest import SQLITE_ONLY, tiny_spec
from tests.postgres import Databases
from tests.support import free_port, stop_processes, wait_for_api
from workers import export

CLI = [sys.executable, "-m", "cli.main"]
Stack = tuple[str, dict[str, str], list[str], list[subprocess.Popen[bytes]], Path]
REDIS_DB = 13
# Every request of these tests carries the API key the stack fixture creates.
api = httpx.Client(timeout=120)  # a cold model check (service.modelcheck) is slow on a busy VM


def create_key(env: dict[str, str], owner: str) -> str:
    """An API key made the way an operator makes one: ``prunesearch keys create``."""
    made = subprocess.run(
        [*CLI, "keys", "create", "--owner", owner],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


@pytest.fixture
def stack(tmp_path: Path, redis_base: str, dbs: Databases) -> Iterator[Stack]:
    # Both backends' runs of a test share the database number: they run one after the
    # other, and it is flushed before and after each.
    redis_url = f"{redis_base}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "PRUNESEARCH_HOME": str(tmp_path / "home"),
        "PRUNESEARCH_REDIS_URL": redis_url,
        **dbs.env(),
    }
    key = create_key(env, "e2e")
    env["PRUNESEARCH_API_KEY"] = key  # the CLI client commands read it
    api.headers["Authorization"] = f"Bearer {key}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    names = [f"itest-{os.getpid()}-w{i}" for i in range(2)]
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        subprocess.Popen(
            [*CLI, "serve", "--port", str(port)],
            env=env,
            stdout=(logs / "api.log").open("w"),
            stderr=subprocess.STDOUT,
        )
    ]
    procs += [
        subprocess.Popen(
            [*CLI, "worker", "--name", name, "--device", "cpu"],
            env=env,
            stdout=(logs / f"{name}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for name in names
    ]
    try:
        wait_for_api(url, procs[0], (logs / "api.log").read_text)
        yield url, env, names, procs[1:], logs
    finally:
        stop_processes(procs)
        redis.Redis.from_url(redis_url).flushdb()


def test_submit_wait_with_two_workers(tmp_path: Path, stack: Stack) -> None:
    url, env, names, workers, log_dir = stack
    spec = tiny_spec("e2e", n_trials=10)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))

    submit = subprocess.Popen(
        [*CLI, "submit", str(spec_file), "--url", url, "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while submit.poll() is None:
        dead = [w for w in workers if w.poll() is not None]
        if dead or time.monotonic() > deadline:
            submit.kill()
            logs = "\n".join(p.read_text() for p in log_dir.glob("*.log"))
            pytest.fail(f"{'a worker died' if dead else 'no end within 300 s'}:\n{logs}")
        time.sleep(0.5)
    output = submit.stdout.read() if submit.stdout else ""
    assert submit.returncode == 0, output
    assert "test accuracy" in output

    jobs = api.get(f"{url}/v1/jobs").json()
    items = jobs["items"] if isinstance(jobs, dict) else jobs
    assert len(items) == 1
    job_id = items[0]["id"]
    job = api.get(f"{url}/v1/jobs/{job_id}").json()
    assert job["status"] == "done"
    assert job["progress"] == {"done": 10, "total": 10}

    # The candidates, read straight from the database the workers wrote.
    with session_scope(session_factory(env["PRUNESEARCH_DATABASE_URL"])) as s:
        cands = repo.list_candidates(s, job_id, limit=100, offset=0)
        scored_by = {c.worker for c in cands}
        assert len(cands) == 10
        assert sorted(c.trial_number for c in cands) == list(range(10))
    assert scored_by == set(names), scored_by

    result = api.get(f"{url}/v1/jobs/{job_id}/result").json()
    assert result["best"]["flops"] <= 0.5 * result["baseline"]["flops"] * 1.01
    weights = api.get(f"{url}/v1/jobs/{job_id}/artifacts/model.safetensors")
    assert weights.status_code == 200 and len(weights.content) > 1000
    job_dir = Path(env["PRUNESEARCH_HOME"]) / "artifacts" / job_id
    assert export.load(job_dir) is not None


def _finished(stack: Stack, job_id: str, timeout: float = 300) -> dict[str, Any]:
    """Poll the job until it ends; fail with the worker logs if it did not end well."""
    url, _, _, workers, log_dir = stack
    deadline = time.monotonic() + timeout
    while (job := api.get(f"{url}/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            break
        time.sleep(0.5)
    if job["status"] != "done":
        logs = "\n".join(p.read_text() for p in log_dir.glob("*.log"))
        pytest.fail(f"job {job_id} {job['status']} ({job.get('error')}); worker logs:\n{logs}")
    return job


@SQLITE_ONLY
def test_methods_job_through_the_service(stack: Stack) -> None:
    """Criterion, reconstruction, low-rank, distillation and triage through real workers."""
    url, env, *_ = stack
    spec = tiny_spec("e2e-methods", n_trials=4).model_dump(mode="json")
    spec["search"].update(
        {
            "criterion": "similarity",
            "fold": True,
            "criterion_batches": 2,
            "operator": "mixed",
            "reconstruct": True,
        }
    )
    spec["scoring"].update({"mode": "finetune", "finetune_steps": 3, "distill": True})
    spec["final"]["distill"] = True
    spec["triage"] = {"enabled": True, "ratios": [0.2, 0.5, 0.8], "seed_trials": 1}
    response = api.post(f"{url}/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    _finished(stack, job_id)

    report = api.get(f"{url}/v1/jobs/{job_id}/sensitivity").json()
    assert report["curves"] and all(len(c) == 3 for c in report["curves"].values())
    best = api.get(f"{url}/v1/jobs/{job_id}/result").json()["best"]
    assert (best["criterion"], best["operator"], best["distill"]) == ("similarity", "mixed", True)
    assert best["notes"]["reconstruct"]
    sensitivity = api.get(f"{url}/v1/jobs/{job_id}/artifacts/sensitivity.json")
    assert sensitivity.status_code == 200 and sensitivity.json() == report
    assert export.load(Path(env["PRUNESEARCH_HOME"]) / "artifacts" / job_id) is not None


@SQLITE_ONLY
def test_nsga2_job_through_the_service(stack: Stack) -> None:
    """nsga2 through real workers: the Pareto front is served and names the chosen network."""
    url, env, *_ = stack
    spec = tiny_spec("e2e-nsga2", n_trials=8, sampler="nsga2").model_dump(mode="json")
    spec["scoring"].update({"promote_top_k": 2, "promote_steps": 5})
    spec["final"]["finetune_epochs"] = 0.25
    response = api.post(f"{url}/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    _finished(stack, job_id)

    result = api.get(f"{url}/v1/jobs/{job_id}/result").json()
    pareto = api.get(f"{url}/v1/jobs/{job_id}/pareto")
    assert pareto.status_code == 200, pareto.text
    body = pareto.json()
    front = body["front"]
    assert body["objective"] == result["objective"] == "flops_ratio"
    assert front and body["chosen"] == result["best"]["candidate_id"]
    # nsga2 only promotes the front, so the exported network is on it.
    assert body["chosen"] in {p["candidate_id"] for p in front}
    assert "Pareto front" in result["ladder"]["rung1"]["pool"]
    costs = [p["cost"] for p in front]
    accuracies = [p["val_accuracy"] for p in front]
    assert costs == sorted(costs) and accuracies == sorted(accuracies)
    assert all(c <= 0.5 * 1.001 for c in costs)
    # The live front and the one finalize wrote are the same candidates.
    assert [p["candidate_id"] for p in front] == [p["candidate_id"] for p in result["pareto"]]
    cands = api.get(f"{url}/v1/jobs/{job_id}/candidates").json()["items"]
    assert body["candidates"] == sum(c["status"] == "complete" for c in cands)
    promoted = 2 if result["ladder"]["rung1"]["candidates"] >= 2 else 0  # k <= 1: no rung 2
    assert sum(c["rungs"] is not None for c in cands) == promoted

    written = api.get(f"{url}/v1/jobs/{job_id}/artifacts/pareto.json")
    assert written.status_code == 200
    assert written.headers["content-type"].startswith("application/json")
    assert written.json() == {"objective": "flops_ratio", "front": result["pareto"]}
    assert export.load(Path(env["PRUNESEARCH_HOME"]) / "artifacts" / job_id) is not None


@SQLITE_ONLY
def test_other_samplers_through_the_service(stack: Stack) -> None:
    """genetic, tp_global and sensitivity jobs, submitted together, share two real workers."""
    url = stack[0]
    ids: dict[str, str] = {}
    for sampler, extra in (
        ("genetic", {"granularity": "stage"}),
        ("tp_global", {}),
        ("sensitivity", {}),
    ):
        spec = tiny_spec(f"e2e-{sampler}", n_trials=6, sampler=sampler).model_dump(mode="json")
        spec["search"].update(extra)
        spec["scoring"].update({"promote_top_k": 2, "promote_steps": 5})
        spec["final"]["finetune_epochs"] = 0.25
        response = api.post(f"{url}/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        ids[sampler] = response.json()["id"]

    for sampler, job_id in ids.items():
        job = _finished(stack, job_id)
        cands = api.get(f"{url}/v1/jobs/{job_id}/candidates").json()["items"]
        assert len(cands) == 6 and all(c["status"] != "failed" for c in cands)
        complete = [c for c in cands if c["status"] == "complete"]
        if sampler in ("tp_global", "sensitivity"):
            # One allocation, scored once; every other trial is the same network.
            assert len(complete) == 1 and len({c["key"] for c in cands}) == 1
            assert job["baseline"]["plan"]["allocation"]
        if sampler in ("genetic", "sensitivity"):
            curves = api.get(f"{url}/v1/jobs/{job_id}/sensitivity")
            assert curves.status_code == 200 and curves.json()["curves"]
    # Whichever worker ran them, each job's trial numbers are distinct and complete.
    for job_id in ids.values():
        cands = api.get(f"{url}/v1/jobs/{job_id}/candidates").json()["items"]
        assert sorted(c["trial_number"] for c in cands) == list(range(6))


def _cli(env: dict[str, str], url: str, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [*CLI, *args, "--url", url], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_cancel_and_an_overnight_batch_with_the_cli(tmp_path: Path, stack: Stack) -> None:
    """A long interactive job is cancelled mid-search while a grid batch runs overnight."""
    url, env, _, _, log_dir = stack
    long = tiny_spec("e2e-long", n_trials=200).model_dump(mode="json")
    job_id = api.post(f"{url}/v1/jobs", json=long).json()["id"]
    deadline = time.monotonic() + 120
    while api.get(f"{url}/v1/jobs/{job_id}").json()["progress"]["done"] < 2:
        assert time.monotonic() < deadline, "no trial finished within 120 s"
        time.sleep(0.3)

    out = _cli(env, url, "cancel", job_id)
    assert f"job {job_id} cancelled" in out
    dropped = int(out.split("; ")[1].split()[0])
    assert dropped > 150  # the queued trials and finalize, not run
    time.sleep(3)  # a trial that was running when it was cancelled finishes and is kept
    kept = api.get(f"{url}/v1/jobs/{job_id}/candidates").json()["total"]
    time.sleep(3)
    assert api.get(f"{url}/v1/jobs/{job_id}/candidates").json()["total"] == kept >= 2
    job = api.get(f"{url}/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["best"] is not None

    base = tiny_spec("e2e-grid", n_trials=3).model_dump(mode="json")
    base["final"]["finetune_epochs"] = 0.25
    batch_file = tmp_path / "batch.yaml"
    batch_file.write_text(
        yaml.safe_dump(
            {"name": "nightly", "base": base, "grid": {"search.sampler": ["tpe", "random"]}}
        )
    )
    out = _cli(env, url, "batch", str(batch_file), "--wait", timeout=400)
    assert "with 2 jobs (overnight queue)" in out
    batch_id = out.split()[2]
    batch = api.get(f"{url}/v1/batches/{batch_id}").json()
    assert batch["status"] == "done", (log_dir / "api.log").read_text()
    assert batch["states"] == {"done": 2}
    assert {j["sampler"] for j in batch["jobs"]} == {"tpe", "random"}
    accuracies = {j["id"]: j["test_accuracy"] for j in batch["jobs"]}
    assert all(a is not None for a in accuracies.values())
    assert [accuracies[i] for i in batch["ranking"]] == sorted(accuracies.values(), reverse=True)
    assert {j["queue"] for j in api.get(f"{url}/v1/jobs", params={"limit": 10}).json()["items"]
            if j["batch_id"] == batch_id} == {"overnight"}  # fmt: skip

    listing = _cli(env, url, "jobs")
    assert "3 of 3 jobs" in listing and "cancelled" in listing
    shown = _cli(env, url, "show", batch["ranking"][0])
    assert "top candidates (of 3)" in shown and "test accuracy" in shown
