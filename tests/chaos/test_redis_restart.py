"""Redis restarts mid-search with its data gone; the reconciler puts back what was lost.

A redis-server of the test's own (persistence off, so a restart loses
everything, the worst case) serves the API and two workers. Mid-search it is
killed and started again empty; ``prunesearch reconcile`` (one pass of what
the API does every 30 s) requeues the job's unfinished slots and its
finalize from what the database says, and the job ends ``done`` with every
slot counted once. On SQLite and PostgreSQL (our tables and the Optuna storage).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.chaos.test_worker_death import CLI, Stack, _check_books, _slow_spec, _wait_done
from tests.postgres import Databases
from tests.support import free_port, redis_answers


class RedisProcess:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (Debian package redis-server)")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not redis_answers(self.url, timeout=0.2):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


def test_a_redis_restart_loses_no_job(
    tmp_path: Path, own_redis: RedisProcess, dbs: Databases
) -> None:
    stack = Stack(tmp_path, f"{own_redis.url}/0", dbs)
    try:
        stack.wait_ready()
        stack.worker("a")
        stack.worker("b")
        job_id = stack.api.post("/v1/jobs", json=_slow_spec("chaos-redis", 8)).json()["id"]
        deadline = time.monotonic() + 180
        while stack.api.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] < 2:
            assert time.monotonic() < deadline, stack.log_text()
            time.sleep(0.2)

        own_redis.kill()  # everything queued is gone with it
        time.sleep(1)
        own_redis.start()
        restarted = datetime.now(UTC)
        out = subprocess.run(
            [*CLI, "reconcile"], env=stack.env, capture_output=True, text=True, check=True
        ).stdout
        assert f"job {job_id}: requeued trial slots" in out, out

        _wait_done(stack, job_id, timeout=300)
        _check_books(stack, job_id, 8, killed=set())
        items = stack.api.get(f"/v1/jobs/{job_id}/candidates", params={"limit": 500}).json()
        starts = [datetime.fromisoformat(c["started_at"]) for c in items["items"]]
        resumed = min(t for t in starts if t > restarted)
        print(
            "\nRedis SIGKILL, restarted empty: lost 0, duplicated 0, next trial "
            f"{(resumed - restarted).total_seconds():.1f} s after the restart"
        )
        again = subprocess.run(
            [*CLI, "reconcile"], env=stack.env, capture_output=True, text=True, check=True
        ).stdout
        assert "0 jobs had lost tasks" in again  # a finished job is left alone
        # RQ quits on a lost connection; `prunesearch worker` starts it again.
        assert all(stack.procs[w].poll() is None for w in ("a", "b")), stack.log_text()
    finally:
        stack.stop()
