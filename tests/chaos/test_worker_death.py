"""SIGKILL a work-horse, then the whole worker pool, mid-trial: no trial lost, none counted twice.

Real processes: ``prunesearch serve``, ``prunesearch worker`` (each in its
own process group, so a whole worker and its horse can be killed at once),
a real Redis, and SQLite or PostgreSQL (our tables and the Optuna storage; on
PostgreSQL only the work-horse part runs: the pool part waits for RQ's
heartbeat, which the database does not enter). RQ owns retries: a killed horse's task is retried
at once by its worker; a dead worker's task once another worker's
maintenance finds it abandoned (its heartbeat lapses after the workers'
``--maintenance-interval`` + ``workers.worker.HEARTBEAT_GRACE_S`` (20 s): 25 s here,
50 s with ``PRUNESEARCH_CHAOS_MAINTENANCE_S=30``, the workers' default), so
a job whose every worker died resumes once workers return.
The trial task makes the second run harmless (``workers.steps.trial._resume_slot``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import redis

from core.settings import Settings
from search.study import storage, study_name
from tests.integration.conftest import tiny_spec
from tests.postgres import Databases
from tests.support import free_port, wait_for_api

CLI = [sys.executable, "-m", "cli.main"]
REDIS_DB = 7
# The workers' --maintenance-interval: 5 s keeps the suite short; 30 (the default of
# `prunesearch worker`) measures the recovery a deployment gets (docs/reliability.md).
MAINTENANCE_S = os.environ.get("PRUNESEARCH_CHAOS_MAINTENANCE_S", "5")


class Stack:
    """API + workers as separate process groups, with their logs."""

    def __init__(self, tmp_path: Path, redis_url: str, dbs: Databases) -> None:
        self.home = tmp_path / "home"
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.dbs = dbs
        self.env = {
            **os.environ,
            "PRUNESEARCH_HOME": str(self.home),
            "PRUNESEARCH_REDIS_URL": redis_url,
            **dbs.env(),
        }
        made = subprocess.run(
            [*CLI, "keys", "create", "--owner", "chaos"],
            env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        key = made.stdout.strip().splitlines()[-1]
        self.url = f"http://127.0.0.1:{free_port()}"
        self.api = httpx.Client(
            base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {key}"}
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._start("api", "serve", "--port", self.url.rsplit(":", 1)[1])

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*CLI, *args],
            env=self.env,
            stdout=(self.logs / f"{name}.log").open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop() signals the group
        )
        self.procs[name] = proc
        return proc

    def worker(self, name: str) -> None:
        self._start(
            name, "worker", "--name", f"chaos-{os.getpid()}-{name}", "--device", "cpu",
            "--threads", "1", "--maintenance-interval", MAINTENANCE_S,
        )  # fmt: skip

    def settings(self) -> Settings:
        """The stack's settings, as its processes read them."""
        return Settings(
            home=self.home,
            database_url=self.dbs.database_url,
            optuna_url=self.dbs.optuna_url,
            redis_url=self.env["PRUNESEARCH_REDIS_URL"],
        )

    def wait_ready(self) -> None:
        wait_for_api(self.url, self.procs["api"], self.log_text, path="/readyz")

    def horse_of(self, name: str) -> int | None:
        """The pid of the worker's work-horse (its forked child), if one runs."""
        pid = self.procs[name].pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def log_text(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-4000:]}" for p in self.logs.glob("*.log"))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def stack(tmp_path: Path, redis_base: str, dbs: Databases) -> Iterator[Stack]:
    # A test's two backends share the database number: they run one after the other,
    # and it is flushed before and after each.
    redis_url = f"{redis_base}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    s = Stack(tmp_path, redis_url, dbs)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
        redis.Redis.from_url(redis_url).flushdb()


def _slow_spec(name: str, n_trials: int) -> dict[str, Any]:
    """Trials of a second or more on one thread, so a kill lands mid-trial."""
    spec = tiny_spec(name, n_trials=n_trials).model_dump(mode="json")
    spec["model"] = {"arch": "resnet20", "pretrain_epochs": 1}
    spec["scoring"]["calib_batches"] = 8
    spec["scoring"]["promote_top_k"] = 0  # finalize is not under test: keep it short
    spec["final"]["finetune_epochs"] = 0.1
    return spec


def _running(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    items = stack.api.get(f"/v1/jobs/{job_id}/candidates", params={"limit": 500}).json()["items"]
    return [c for c in items if c["status"] == "running"]


def _kill_mid_trial(stack: Stack, job_id: str, whole_worker: bool) -> dict[str, Any]:
    """SIGKILL the horse (or the whole worker) of a running candidate; returns the candidate."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for cand in _running(stack, job_id):
            name = cand["worker"].rsplit("-", 1)[-1]
            horse = stack.horse_of(name)
            if horse is None:
                continue
            os.kill(horse, signal.SIGKILL)
            if whole_worker:  # RQ puts the horse in a session of its own: kill both
                os.kill(stack.procs[name].pid, signal.SIGKILL)
            time.sleep(0.5)
            rows = stack.api.get(f"/v1/jobs/{job_id}/candidates", params={"limit": 500}).json()
            still = {c["id"]: c for c in rows["items"]}[cand["id"]]
            if still["status"] in ("running", "lost"):  # the kill landed mid-trial
                return cand
        time.sleep(0.1)
    pytest.fail(f"no running trial to kill within 180 s\n{stack.log_text()}")


def _wait_done(stack: Stack, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job := stack.api.get(f"/v1/jobs/{job_id}").json())["status"] not in (
        "done", "failed", "cancelled",
    ):  # fmt: skip
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert job["status"] == "done", f"{job['status']}: {job.get('error')}\n{stack.log_text()}"
    return job


def _check_books(stack: Stack, job_id: str, n_trials: int, killed: set[int]) -> dict[int, float]:
    """Every slot finished exactly once; each killed candidate is ``lost`` and failed in Optuna.

    Returns each killed candidate's recovery time: from its start to the
    start of the next run of its slot (the kill came within a second or two
    of its start).
    """
    items = stack.api.get(f"/v1/jobs/{job_id}/candidates", params={"limit": 500}).json()["items"]
    finished = [c for c in items if c["status"] in ("complete", "duplicate", "failed")]
    lost = [c for c in items if c["status"] == "lost"]
    books = [(c["trial_number"], c["task"], c["status"], c["worker"], c["error"]) for c in items]
    assert len(finished) == n_trials, f"{books}\n{stack.log_text()[-6000:]}"
    assert len({c["task"] for c in finished}) == n_trials  # each slot counted once
    assert {c["id"] for c in lost} == killed
    assert all("worker died" in (c["error"] or "") for c in lost)
    assert len({c["trial_number"] for c in items}) == len(items)  # no Optuna trial reused
    job = stack.api.get(f"/v1/jobs/{job_id}").json()
    assert job["progress"] == {"done": n_trials, "total": n_trials}
    study = optuna.load_study(study_name=study_name(job_id), storage=storage(stack.dbs.optuna_url))
    states = {t.number: t.state for t in study.trials}
    assert all(states[c["trial_number"]] == optuna.trial.TrialState.FAIL for c in lost)
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) >= n_trials - len(
        [c for c in finished if c["status"] == "failed"]
    )

    def started(c: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(c["started_at"])

    def next_run(c: dict[str, Any]) -> dict[str, Any]:
        later = [o for o in items if o["task"] == c["task"] and started(o) > started(c)]
        return min(later, key=started)

    return {c["id"]: (started(next_run(c)) - started(c)).total_seconds() for c in lost}


def _retried(stack: Stack, job_id: str, victim: dict[str, Any]) -> bool:
    """Whether the victim's slot runs again: the same task, a new candidate."""
    items = stack.api.get(f"/v1/jobs/{job_id}/candidates", params={"limit": 500}).json()["items"]
    return any(c["task"] == victim["task"] and c["id"] != victim["id"] for c in items)


def _kill_pool(stack: Stack, names: tuple[str, ...]) -> None:
    """SIGKILL whole workers and their work-horses."""
    for name in names:
        horse = stack.horse_of(name)  # read before its parent dies and it is reparented
        for pid in (horse, stack.procs[name].pid):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_killed_work_horses_and_a_vanished_worker_pool_lose_no_trial(
    stack: Stack, backend: str
) -> None:
    """A horse SIGKILLed mid-trial is retried at once by its worker; then every worker is
    SIGKILLed (one mid-trial): the job waits, and two new workers finish it. On PostgreSQL
    the job ends after the horse's kill (the pool's recovery is RQ's, the same on both)."""
    stack.worker("a")
    stack.worker("b")
    job_id = stack.api.post("/v1/jobs", json=_slow_spec("chaos-workers", 12)).json()["id"]
    horse_victim = _kill_mid_trial(stack, job_id, whole_worker=False)
    deadline = time.monotonic() + 120
    while not _retried(stack, job_id, horse_victim):
        assert time.monotonic() < deadline, "the killed horse's task was not retried"
        time.sleep(0.2)
    if backend != "sqlite":
        _wait_done(stack, job_id, timeout=300)
        recovery = _check_books(stack, job_id, 12, {horse_victim["id"]})
        print(
            f"\n{backend}: work-horse SIGKILL: lost 0, duplicated 0, "
            f"recovery {recovery[horse_victim['id']]:.1f} s"
        )
        return
    pool_victim = _kill_mid_trial(stack, job_id, whole_worker=True)
    _kill_pool(stack, ("a", "b"))  # the rest of the pool goes too: no worker is left
    killed = {horse_victim["id"]} | {c["id"] for c in _running(stack, job_id)}
    assert pool_victim["id"] in killed
    before = stack.api.get(f"/v1/jobs/{job_id}").json()
    time.sleep(5)
    during = stack.api.get(f"/v1/jobs/{job_id}").json()
    assert during["status"] == before["status"] == "searching"
    assert during["progress"] == before["progress"]  # nothing moves while no worker lives
    stack.worker("c")
    stack.worker("d")
    _wait_done(stack, job_id, timeout=400)
    recovery = _check_books(stack, job_id, 12, killed)
    print(
        f"\nwork-horse SIGKILL: lost 0, duplicated 0, recovery {recovery[horse_victim['id']]:.1f} s"
        f"\nall workers SIGKILL ({len(killed) - 1} trials running): lost 0, duplicated 0, "
        f"recovery {max(v for k, v in recovery.items() if k != horse_victim['id']):.1f} s"
    )
