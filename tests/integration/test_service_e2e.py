"""The service on real parts: the API, two worker processes, a real Redis.

Nothing is faked: ``prunesearch serve``, ``prunesearch worker`` (twice) and
``prunesearch submit --wait`` run as separate processes, exactly as a user
starts them, and the job must end ``done`` with both workers having scored
candidates.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from service.db import repo
from service.db.session import session_factory, session_scope
from tests.integration.conftest import tiny_spec
from tests.support import free_port
from workers import export

CLI = [sys.executable, "-m", "service.cli"]
Stack = tuple[str, dict[str, str], list[str], list[subprocess.Popen[bytes]], Path]
REDIS_DB = 13


@pytest.fixture
def stack(tmp_path: Path, redis_base: str) -> Iterator[Stack]:
    redis_url = f"{redis_base}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "PRUNESEARCH_HOME": str(tmp_path / "home"),
        "PRUNESEARCH_REDIS_URL": redis_url,
    }
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
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail(f"API did not start:\n{(logs / 'api.log').read_text()}")
            time.sleep(0.2)
        yield url, env, names, procs[1:], logs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
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

    jobs = httpx.get(f"{url}/v1/jobs").json()
    items = jobs["items"] if isinstance(jobs, dict) else jobs
    assert len(items) == 1
    job_id = items[0]["id"]
    job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
    assert job["status"] == "done"
    assert job["progress"] == {"done": 10, "total": 10}

    # The candidates, read straight from the database the workers wrote.
    db_url = f"sqlite:///{Path(env['PRUNESEARCH_HOME']).resolve() / 'prunesearch.db'}"
    with session_scope(session_factory(db_url)) as s:
        cands = repo.list_candidates(s, job_id, limit=100, offset=0)
        workers = {c.worker for c in cands}
        assert len(cands) == 10
        assert sorted(c.trial_number for c in cands) == list(range(10))
    assert workers == set(names), workers

    result = httpx.get(f"{url}/v1/jobs/{job_id}/result").json()
    assert result["best"]["flops"] <= 0.5 * result["baseline"]["flops"] * 1.01
    weights = httpx.get(f"{url}/v1/jobs/{job_id}/artifacts/model.safetensors")
    assert weights.status_code == 200 and len(weights.content) > 1000
    job_dir = Path(env["PRUNESEARCH_HOME"]) / "artifacts" / job_id
    assert export.load(job_dir) is not None


def test_methods_job_through_the_service(stack: Stack) -> None:
    """Criterion, reconstruction, low-rank, distillation and triage through real workers."""
    url, env, _, workers, log_dir = stack
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
    response = httpx.post(f"{url}/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    deadline = time.monotonic() + 300
    while (job := httpx.get(f"{url}/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            logs = "\n".join(p.read_text() for p in log_dir.glob("*.log"))
            pytest.fail(f"job {job['status']} after 300 s or a worker died:\n{logs}")
        time.sleep(0.5)
    assert job["status"] == "done", job["error"]

    report = httpx.get(f"{url}/v1/jobs/{job_id}/sensitivity").json()
    assert report["curves"] and all(len(c) == 3 for c in report["curves"].values())
    best = httpx.get(f"{url}/v1/jobs/{job_id}/result").json()["best"]
    assert (best["criterion"], best["operator"], best["distill"]) == ("similarity", "mixed", True)
    assert best["notes"]["reconstruct"]
    sensitivity = httpx.get(f"{url}/v1/jobs/{job_id}/artifacts/sensitivity.json")
    assert sensitivity.status_code == 200 and sensitivity.json() == report
    assert export.load(Path(env["PRUNESEARCH_HOME"]) / "artifacts" / job_id) is not None
