"""The API is SIGKILLed mid-search and started again: nothing changes for anyone.

The workers do not need the API, so the search goes on while it is down;
after the restart the same key works, an ``Idempotency-Key`` replay finds
the first job, what was scored before is served unchanged, the reconciler
of the new process (its first pass comes seconds after the start, while the
job still searches) checks the healthy job and requeues nothing, and it
ends ``done`` with every slot counted once. On SQLite and PostgreSQL (our
tables and the Optuna storage); on PostgreSQL the test ends once the new
process's reconciler has checked the job (the rest of the search is the
workers', untouched by the restart, and costs a minute).
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

import redis

from service.reconcile import last_pass
from tests.chaos.test_worker_death import Stack, _check_books, _slow_spec, _wait_done, stack

__all__ = ["stack"]


def _finished(stack: Stack, job_id: str) -> dict[int, tuple[str, float | None]]:
    items = stack.api.get(f"/v1/jobs/{job_id}/candidates", params={"limit": 500}).json()["items"]
    return {c["id"]: (c["status"], c["score"]) for c in items if c["status"] != "running"}


def test_an_api_restart_mid_search_changes_nothing(stack: Stack, backend: str) -> None:
    stack.worker("a")
    spec = _slow_spec("chaos-api", 12)
    # Seconds a trial, so that it still searches when the new API's first pass comes.
    spec["scoring"].update({"mode": "finetune", "finetune_steps": 20})
    key = {"Idempotency-Key": "nightly-1"}
    first = stack.api.post("/v1/jobs", json=spec, headers=key)
    assert first.status_code == 201
    job_id = first.json()["id"]
    deadline = time.monotonic() + 120
    while len(before := _finished(stack, job_id)) < 2:
        assert time.monotonic() < deadline, stack.log_text()
        time.sleep(0.2)
    jobs_before = stack.api.get("/v1/jobs").json()

    api = stack.procs["api"]
    os.killpg(api.pid, signal.SIGKILL)
    api.wait(timeout=10)
    time.sleep(2)  # the worker keeps searching meanwhile
    restarted = datetime.now(UTC)
    stack._start("api", "serve", "--port", stack.url.rsplit(":", 1)[1])
    stack.wait_ready()

    replay = stack.api.post("/v1/jobs", json=spec, headers=key)
    assert replay.status_code == 200 and replay.json()["id"] == job_id
    assert replay.headers["Idempotent-Replayed"] == "true"
    after = _finished(stack, job_id)
    assert {k: after[k] for k in before} == before  # what was scored is served unchanged
    jobs_after = stack.api.get("/v1/jobs").json()
    assert [j["id"] for j in jobs_after["items"]] == [j["id"] for j in jobs_before["items"]]

    queue = redis.Redis.from_url(stack.env["PRUNESEARCH_REDIS_URL"])
    deadline = time.monotonic() + 30  # 5 s after the start; the dead process's lock is no wait
    while (done := last_pass(queue)) is None or datetime.fromisoformat(done["at"]) < restarted:
        assert time.monotonic() < deadline, f"no reconciler pass after the restart\n{done}"
        time.sleep(0.5)
    assert done["checked"] == 1 and done["requeued"] == {}, done  # it saw the job, left it
    assert stack.api.get(f"/v1/jobs/{job_id}").json()["status"] == "searching"
    pass_s = (datetime.fromisoformat(done["at"]) - restarted).total_seconds()
    if backend != "sqlite":
        print(f"\n{backend}: API SIGKILL and restart: the first pass came {pass_s:.1f} s after it")
        return

    _wait_done(stack, job_id, timeout=300)
    _check_books(stack, job_id, 12, set())
    assert "requeued" not in (stack.logs / "api.log").read_text()
    print(
        "\nAPI SIGKILL and restart: lost 0, duplicated 0, the job never stopped; the new "
        f"process's first reconciler pass came {pass_s:.1f} s after the restart, requeued nothing"
    )
