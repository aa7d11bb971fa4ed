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
import time
from types import FrameType
from typing import Any

import torch
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from core.settings import Settings

DEFAULT_QUEUES = ("interactive", "overnight")
# How often a worker looks for tasks abandoned by a dead worker (RQ's default
# is 10 minutes). A task is abandoned once its worker's heartbeat lapses,
# --maintenance-interval + HEARTBEAT_GRACE_S after the worker died (50 s by
# default); it is then retried.
MAINTENANCE_S = 30
# How long a running task's heartbeat outlives the next refresh the worker owes it
# (one --maintenance-interval away). RQ adds 60 s; a live parent refreshes on a
# timer, late by a second or two on a busy machine, so 20 s is ample, and a dead
# worker's task is retried 40 s sooner. A task wrongly thought dead would run
# twice, and its slot would still count once (workers.steps.lifecycle).
HEARTBEAT_GRACE_S = 20
RQ_HEARTBEAT_GRACE_S = 60
RESTART_S = 5
log = logging.getLogger(__name__)


class PrefetchingWorker(Worker):
    """Decodes a task's dataset (and opens the study storage) in the parent, before forking.

    Every task runs in a fresh fork, so anything it loads dies with it. The
    decoded images (CPU memory only: the parent never touches CUDA) are
    cached here instead and reach each horse through the fork for free.
    """

    def __init__(self, *args: Any, threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Forking after a multi-threaded OpenMP region hangs the child, so the
        # parent computes single-threaded; each horse gets the threads back.
        self._threads = threads or torch.get_num_threads()
        torch.set_num_threads(1)

    asked_to_stop = False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT/SIGTERM: remembered, so that :func:`run_worker` does not start it again."""
        self.asked_to_stop = True
        super().request_stop(signum, frame)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """RQ's heartbeat lifetime with :data:`HEARTBEAT_GRACE_S` in place of its 60 s."""
        ttl = int(super().get_heartbeat_ttl(job, working_time)) - RQ_HEARTBEAT_GRACE_S
        return max(ttl, 0) + HEARTBEAT_GRACE_S

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        torch.set_num_threads(self._threads)
        super().main_work_horse(job, queue)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            _prefetch(str(job.args[0]))
        except Exception:  # the task itself will load (and report) it
            log.warning("could not prefetch the dataset of %s", job.id, exc_info=True)
        super().execute_job(job, queue)


def _prefetch(job_id: str) -> None:
    from core.db import repo
    from core.db.session import session_factory, session_scope
    from core.spec import JobSpec
    from search.study import storage as study_storage
    from workers.nets import data
    from workers.steps.context import load_splits

    settings = Settings()
    with session_scope(session_factory(settings.database_url)) as s:
        spec = JobSpec.model_validate(repo.get_job(s, job_id).spec)
    name = spec.dataset.name
    if name == "imagefolder":  # decoded once here when it fits the cache (else it streams)
        load_splits(spec, settings, "cpu")
    else:
        data.raw(name, tuple(settings.dataset_dirs(name)))
    study_storage(settings.optuna_url)  # opened once here; each horse reuses the engine


def run_worker(
    queues: list[str],
    *,
    device: str,
    settings: Settings | None = None,
    burst: bool = False,
    name: str | None = None,
    threads: int | None = None,
    maintenance_interval: int = MAINTENANCE_S,
) -> bool:
    """Serve ``queues`` until stopped (or until empty with ``burst``).

    ``threads`` caps the CPU threads of each task (default: PyTorch's, i.e.
    every core). Several CPU workers on one machine should share the cores
    (cores / workers each): oversubscribed threads made two 2-thread workers
    on 2 cores several times slower per trial than one.
    """
    # Checked without initialising CUDA in this (parent) process.
    if device.startswith("cuda") and not os.path.exists("/dev/nvidiactl"):
        raise SystemExit(f"--device {device}: no NVIDIA driver on this machine")
    # Import torch, torch-pruning, optuna and the tasks once, here: every
    # work-horse is forked from this process and would otherwise pay the
    # imports (seconds) on every trial. Importing torch does not initialise CUDA.
    import workers.tasks  # noqa: F401

    settings = settings or Settings()
    name = name or f"{socket.gethostname()}.{os.getpid()}.{device.replace(':', '')}"
    # The work-horse inherits these: tasks read Settings() and the worker name.
    os.environ["PRUNESEARCH_DEVICE"] = device
    os.environ["PRUNESEARCH_WORKER_NAME"] = name
    redis = Redis.from_url(settings.redis_url)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    while True:
        worker = PrefetchingWorker(
            [Queue(q, connection=redis, serializer=JSONSerializer) for q in queues],
            connection=redis,
            name=name,
            serializer=JSONSerializer,
            threads=threads,
            maintenance_interval=maintenance_interval,
            # An idle worker blocks on the queue for worker_ttl - 15 s between
            # maintenance checks (RQ's default: 405 s), so this bounds how long an
            # abandoned task waits for its retry.
            worker_ttl=max(maintenance_interval, 5) + 15,
            # A running task's heartbeat lasts this + HEARTBEAT_GRACE_S: how long a
            # dead worker's task waits before it counts as abandoned (RQ default 30).
            job_monitoring_interval=min(maintenance_interval, 30),
        )
        try:
            worked = worker.work(burst=burst, logging_level="INFO")
        except (RedisError, OSError, ValueError):  # Redis gone at start or teardown; name taken
            log.warning("worker %s could not run", name, exc_info=True)
            worked = False
        # RQ's loop quits on any error it meets, a lost Redis connection in its
        # maintenance included; a worker nobody asked to stop starts again.
        if burst or worker.asked_to_stop:
            return worked
        log.warning("worker %s stopped unasked; starting again in %d s", name, RESTART_S)
        time.sleep(RESTART_S)
