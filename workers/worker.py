"""The worker process: an RQ worker that owns one device.

The parent process only talks to Redis; every task runs in a forked
work-horse, which is where CUDA gets initialised (never in the parent, so
forking stays safe) and whose exit returns the task's GPU memory. Queues
are served in the order given: ``interactive`` before ``overnight``.
"""

from __future__ import annotations

import logging
import os
import socket

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from service.settings import Settings

DEFAULT_QUEUES = ("interactive", "overnight")


def run_worker(
    queues: list[str],
    *,
    device: str,
    settings: Settings | None = None,
    burst: bool = False,
    name: str | None = None,
) -> bool:
    """Serve ``queues`` until stopped (or until empty with ``burst``)."""
    # Checked without initialising CUDA in this (parent) process.
    if device.startswith("cuda") and not os.path.exists("/dev/nvidiactl"):
        raise SystemExit(f"--device {device}: no NVIDIA driver on this machine")
    settings = settings or Settings()
    name = name or f"{socket.gethostname()}.{os.getpid()}.{device.replace(':', '')}"
    # The work-horse inherits these: tasks read Settings() and the worker name.
    os.environ["PRUNESEARCH_DEVICE"] = device
    os.environ["PRUNESEARCH_WORKER_NAME"] = name
    redis = Redis.from_url(settings.redis_url)
    worker = Worker(
        [Queue(q, connection=redis, serializer=JSONSerializer) for q in queues],
        connection=redis,
        name=name,
        serializer=JSONSerializer,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return worker.work(burst=burst, logging_level="INFO")
