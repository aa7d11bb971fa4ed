"""A worker dies while scoring a network another worker is waiting for: the wait ends fast.

``tp_global`` proposes one network to every trial, so the second worker's
trial finds the first one scoring it and waits for that score
(``workers.steps.trial._twin``). The first worker is SIGKILLed mid-trial (horse
and parent). The waiting trial must notice that its twin went silent (its
heartbeat stops) and score the network itself, in seconds rather than the
ten minutes it once waited; the job then ends ``done`` with every slot
counted once. Real processes on a redis-server of the test's own, on SQLite and
PostgreSQL (our tables and the Optuna storage, where the heartbeats are); on
PostgreSQL the test ends once the waiter has scored the network (the dead slot's
retry is RQ's, the same on both, and costs a minute).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.test_job_lifecycle import stack_on
from tests.chaos.test_redis_restart import RedisProcess, own_redis
from tests.chaos.test_worker_death import Stack, _check_books, _running, _slow_spec, _wait_done
from tests.postgres import Databases

__all__ = ["own_redis"]

WAITER_BOUND_S = 60.0  # the waiting trial is scoring by itself well within this
JOB_BOUND_S = 300.0  # the whole job, after the kill (the dead slot waits for RQ: ~65 s)


@pytest.fixture
def pair(tmp_path: Path, own_redis: RedisProcess, dbs: Databases) -> Iterator[Stack]:
    with stack_on(tmp_path, own_redis, dbs, ("a", "b")) as stack:
        yield stack


def _one_network_spec() -> dict[str, Any]:
    spec = _slow_spec("chaos-twin", 4)
    spec["search"]["sampler"] = "tp_global"  # every trial proposes the same network
    spec["scoring"].update({"mode": "finetune", "finetune_steps": 40})  # seconds per trial
    return spec


def _scorer_and_waiter(stack: Stack, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    deadline = time.monotonic() + 240
    while len(running := _running(stack, job_id)) < 2:
        assert time.monotonic() < deadline, stack.log_text()
        time.sleep(0.2)
    first, second = sorted(running, key=lambda c: c["id"])[:2]
    assert first["worker"] != second["worker"], running
    return first, second


def test_a_trial_waiting_on_a_dead_twin_scores_the_network_itself(
    pair: Stack, backend: str
) -> None:
    job_id = pair.api.post("/v1/jobs", json=_one_network_spec()).json()["id"]
    scorer, waiter = _scorer_and_waiter(pair, job_id)
    time.sleep(3)  # the waiter is waiting, the scorer training
    name = scorer["worker"].rsplit("-", 1)[-1]
    horse = pair.horse_of(name)
    assert horse is not None, pair.log_text()
    os.kill(horse, signal.SIGKILL)
    os.kill(pair.procs[name].pid, signal.SIGKILL)
    killed_at = time.monotonic()

    while waiter["id"] in {c["id"] for c in _running(pair, job_id)}:
        waited = time.monotonic() - killed_at
        assert waited < WAITER_BOUND_S, f"still waiting on a dead twin\n{pair.log_text()}"
        time.sleep(0.5)
    resumed_s = time.monotonic() - killed_at
    if backend != "sqlite":
        items = pair.api.get(f"/v1/jobs/{job_id}/candidates", params={"limit": 500}).json()
        waited = {c["id"]: c for c in items["items"]}[waiter["id"]]
        assert waited["status"] == "complete", waited
        print(f"\n{backend}: twin's worker SIGKILL: the waiter was done {resumed_s:.1f} s later")
        return

    _wait_done(pair, job_id, timeout=JOB_BOUND_S)
    done_s = time.monotonic() - killed_at
    _check_books(pair, job_id, 4, killed={scorer["id"]})
    items = pair.api.get(f"/v1/jobs/{job_id}/candidates", params={"limit": 500}).json()["items"]
    after = {c["id"]: c for c in items}[waiter["id"]]
    assert after["status"] == "complete", after  # it scored the network, not a dead score
    print(
        f"\ntwin's worker SIGKILL: the waiting trial was done {resumed_s:.1f} s later, "
        f"the job {done_s:.1f} s later; lost 0, duplicated 0"
    )
