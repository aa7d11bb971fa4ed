"""A real ``prunesearch serve`` (+ optional workers) on loopback, for the benchmarks.

:func:`stack` gives a :class:`Stack` with a fresh ``PRUNESEARCH_HOME`` in a
temporary folder, a Redis database of its own (flushed before and after),
an API key made by ``prunesearch keys create`` and the API on a free
loopback port. Everything runs as separate processes, exactly as a user
starts them; the logs go to files in the temporary home and their tails are
printed when something fails. On exit the processes are stopped, the Redis
database is flushed and the home is deleted, so no job survives the run
(with ``--database-url``, a throw-away PostgreSQL database is created for
the run and dropped afterwards).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from redis import Redis
from sqlalchemy import make_url

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cli.main"]


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine only (localhost, 127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_loopback(url: str, what: str) -> None:
    """Refuse (SystemExit) a URL whose host is not loopback: benchmarks never leave the machine."""
    if not is_loopback(urlsplit(url).hostname):
        raise SystemExit(f"{what} {url!r} is not on loopback: refusing to benchmark it")


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_database(server_url: str | None) -> Iterator[str | None]:
    """A fresh PostgreSQL database on ``server_url``'s server, dropped afterwards.

    ``server_url`` is any database URL of that server (e.g. ``.../postgres``);
    None yields None (the service's default: SQLite under its home).
    """
    if server_url is None:
        yield None
        return
    import psycopg

    require_loopback(server_url, "database")
    name = f"prunesearch_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Stack:
    """The API and workers as separate process groups, with their logs in the home."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.url = ""
        self.key = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def create_key(self, owner: str) -> str:
        """An API key made the way an operator makes one (the CLI prints it last)."""
        made = subprocess.run(
            [*CLI, "keys", "create", "--owner", owner],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        self.key = made.stdout.strip().splitlines()[-1]
        return self.key

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*CLI, *args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # stop() signals the whole group
            )
        self.procs[name] = proc
        return proc

    def serve(self, timeout: float = 90.0, workers: int = 1) -> str:
        """Start ``prunesearch serve --workers N`` on a free loopback port; its URL once ready."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        proc = self._start(
            "api", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the API did not become ready:\n{self.log_tail()}")
            time.sleep(0.2)

    def worker(self, name: str, threads: int = 1) -> subprocess.Popen[bytes]:
        """Start ``prunesearch worker --threads N`` (CPU)."""
        return self._start(
            name, "worker", "--name", f"bench-{os.getpid()}-{name}", "--device", "cpu",
            "--threads", str(threads),
        )  # fmt: skip

    def client(self) -> httpx.Client:
        """An HTTP client of the API that sends the key on every request."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-chars:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@contextlib.contextmanager
def stack(
    redis_url: str, database_url: str | None = None, extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """A :class:`Stack` on a temporary home and the Redis database ``redis_url``.

    ``database_url`` is a PostgreSQL server to make a throw-away database on
    (None: SQLite in the home). The Redis database is flushed before and after.
    """
    require_loopback(redis_url, "Redis")
    redis = Redis.from_url(redis_url, socket_connect_timeout=3)
    redis.flushdb()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="prunesearch-bench-") as tmp,
            scratch_database(database_url) as db_url,
        ):
            home = Path(tmp) / "home"
            env = {
                **os.environ,
                "PRUNESEARCH_HOME": str(home),
                "PRUNESEARCH_REDIS_URL": redis_url,
                **(extra_env or {}),
            }
            if db_url is not None:
                env["PRUNESEARCH_DATABASE_URL"] = db_url
            s = Stack(home, env)
            try:
                yield s
            finally:
                s.stop()
    finally:
        redis.flushdb()
        redis.close()


def children(pid: int) -> list[int]:
    """Pids of ``pid``'s direct children (an RQ worker's forked work-horse), from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found += [int(c) for c in text.split()]
    return found


def memory_kb(pid: int) -> dict[str, int] | None:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak resident) of a process, in KiB.

    Read from /proc/PID/status (psutil is not a dependency); None once it has exited.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out if "VmRSS" in out else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (``serve --workers N``).

    Read from /proc/PID/stat; 0 for a process that has exited.
    """
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return _own_cpu_seconds(pid) + sum(_own_cpu_seconds(int(c)) for c in children)


def _own_cpu_seconds(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hard_stop(seconds: int) -> None:
    """A last-resort deadline: SystemExit after ``seconds`` (SIGALRM), so cleanup still runs.

    The benchmarks stop their own phases at their deadline; this backstop only
    fires when something hangs past it (a process that never answers).
    """

    def expired(_signum: int, _frame: object) -> None:
        raise SystemExit(f"hard deadline of {seconds} s passed: stopping (cleanup runs)")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
