"""Real infrastructure for tests: find a Redis or start one; find PostgreSQL or start it.

Tests use the real services (no fakes): the local ones on their default ports
when they answer, otherwise a throw-away ``redis-server`` on a free port, or
the PostgreSQL cluster started with ``pg_ctlcluster``. When neither works the
caller fails with a message that says what is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

DEFAULT_REDIS = "redis://127.0.0.1:6379"


def free_port() -> int:
    """A TCP port nothing listens on right now (also handy as "Redis is down")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Yield the base URL (no db number) of a Redis server, starting one if needed.

    Uses 127.0.0.1:6379 when it answers; otherwise starts ``redis-server`` on a
    free port with persistence off, and stops it afterwards.

    Raises:
        RuntimeError: No Redis answers and none could be started.
    """
    if redis_answers(DEFAULT_REDIS):
        yield DEFAULT_REDIS
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            f"no Redis at {DEFAULT_REDIS} and no redis-server binary to start one: "
            "install redis-server or start Redis on 127.0.0.1:6379"
        )
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    args += ["no", "--dir", str(workdir)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while not redis_answers(url, timeout=0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def start_postgres_cluster() -> str | None:
    """Try to start the local PostgreSQL cluster; return what went wrong, or None."""
    binary = shutil.which("pg_ctlcluster")
    versions = Path("/etc/postgresql")
    if binary is None or not versions.is_dir():
        return "pg_ctlcluster or /etc/postgresql is missing (PostgreSQL is not installed)"
    errors = []
    for version in sorted(os.listdir(versions)):
        result = subprocess.run(
            [binary, "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 0:
            return None
        output = (result.stderr + result.stdout).strip() or "no output"
        errors.append(f"pg_ctlcluster {version} main start exited {result.returncode}: {output}")
    return "; ".join(errors) or "no cluster under /etc/postgresql"


def wait_for_api(
    url: str,
    api: subprocess.Popen[bytes],
    logs: Callable[[], str],
    path: str = "/healthz",
    timeout: float = 60,
) -> None:
    """Block until ``url + path`` answers 200; fail with ``logs()`` if the API dies or hangs."""
    import httpx
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or api.poll() is not None:
            pytest.fail(f"API did not start:\n{logs()}")
        time.sleep(0.2)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """SIGTERM every process, then SIGKILL those still running after ``timeout``."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def install_plugin(site: Path, package: str, source: str, models: dict[str, str]) -> None:
    """Install ``package`` into ``site`` as a real distribution with ``prunesearch.models``
    entry points (``name -> "module:callable"``): importlib.metadata finds it on ``sys.path``
    exactly as it finds a pip-installed package."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in models.items())
    (info / "entry_points.txt").write_text(f"[prunesearch.models]\n{lines}")
