"""RQ enqueueing: one search job becomes prepare -> n trials -> finalize.

The API must never import the worker code (it imports torch), so tasks are
named by dotted path and RQ resolves them in the worker. Payloads carry the
job id only and use RQ's JSON serializer: everything else is read from the
database, and no pickle crosses the queue.

All RQ jobs of one search are written in a single MULTI/EXEC: the trials and
the finalize are stored deferred first and ``prepare`` is pushed last, so no
worker can see a half-enqueued search and a 1000-trial job costs one round
trip instead of thousands. Their ids are derived from the job id
(:func:`task_ids`), so they can be found again to inspect or cancel.
"""

from __future__ import annotations

from typing import Final

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Dependency
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer

from core.errors import QueueUnavailable

INTERACTIVE: Final = "interactive"
OVERNIGHT: Final = "overnight"
QUEUE_NAMES: Final = (INTERACTIVE, OVERNIGHT)  # a worker serves them in this order

PREPARE: Final = "workers.tasks.prepare"
TRIAL: Final = "workers.tasks.trial"
FINALIZE: Final = "workers.tasks.finalize"

HOUR: Final = 3600
PREPARE_TIMEOUT: Final = 6 * HOUR
# A backstop only: a trial stops itself at its JobSpec's limits.trial_s (at
# most 24 h) and records why; RQ's kill would instead look like a crash and
# be retried.
TRIAL_TIMEOUT: Final = 25 * HOUR
FINALIZE_TIMEOUT: Final = 6 * HOUR
# Results live in the database; RQ only needs them briefly. A dependency whose
# RQ record has expired counts as met, so a short TTL never blocks finalize.
RESULT_TTL: Final = 600
FAILURE_TTL: Final = 7 * 24 * HOUR
RETRIES: Final = 2
RETRY_INTERVAL_S: Final = 0


def redis_from_url(url: str) -> Redis:
    """A Redis client for RQ (bytes responses) that gives up quickly when Redis is down.

    The connect timeout is short so that the API answers 503 in seconds; the
    socket timeout is left unset because workers block on BLPOP.
    """
    return Redis.from_url(url, socket_connect_timeout=3, health_check_interval=30)


def ensure_available(redis: Redis) -> None:
    """Raise :class:`QueueUnavailable` unless Redis answers a PING."""
    try:
        redis.ping()
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot reach Redis: {exc}") from exc


def get_queue(redis: Redis, name: str = INTERACTIVE) -> Queue:
    """The RQ queue ``name`` with the JSON serializer every part of the project uses."""
    if name not in QUEUE_NAMES:
        raise ValueError(f"queue must be one of {QUEUE_NAMES}, not {name!r}")
    return Queue(name, connection=redis, serializer=JSONSerializer)


def task_ids(job_id: str, n_trials: int) -> tuple[str, list[str], str]:
    """RQ job ids of a search job: ``(prepare, [trials...], finalize)``."""
    trials = [f"{job_id}-trial-{i:05d}" for i in range(n_trials)]
    return f"{job_id}-prepare", trials, f"{job_id}-finalize"


def _create(
    queue: Queue,
    func: str,
    job_id: str,
    rq_id: str,
    timeout: int,
    what: str,
    depends_on: str | Dependency | None = None,
    kwargs: dict[str, int] | None = None,
) -> RQJob:
    """An unsaved RQ job for one task; deferred when it has a dependency.

    Every task may be retried (:data:`RETRIES`): when its work-horse or its
    whole worker dies, RQ re-queues it (a dead worker's task once another
    worker's maintenance finds it abandoned). That is the one retry
    mechanism; the tasks make a second run harmless.
    """
    return queue.create_job(
        func,
        args=[job_id],
        kwargs=kwargs or {},
        retry=Retry(max=RETRIES, interval=RETRY_INTERVAL_S),
        job_id=rq_id,
        timeout=timeout,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description=f"{what} of {job_id}",
        depends_on=depends_on,
        status=RQJobStatus.QUEUED if depends_on is None else RQJobStatus.DEFERRED,
    )


def enqueue_job(redis: Redis, job_id: str, n_trials: int, queue_name: str = INTERACTIVE) -> None:
    """Queue the tasks of one search job atomically.

    ``prepare`` runs first; every ``trial`` depends on it; ``finalize``
    depends on all trials with ``allow_failure`` so a failed trial does not
    block the end of the job.

    Raises:
        QueueUnavailable: Redis could not be reached; nothing was queued.
        ValueError: Unknown queue name or ``n_trials < 1``.
    """
    if n_trials < 1:
        raise ValueError("n_trials must be at least 1")
    queue = get_queue(redis, queue_name)
    prepare_id, trial_ids, finalize_id = task_ids(job_id, n_trials)
    try:
        prepare = _create(queue, PREPARE, job_id, prepare_id, PREPARE_TIMEOUT, "prepare")
        deferred = [
            _create(
                queue,
                TRIAL,
                job_id,
                trial_id,
                TRIAL_TIMEOUT,
                f"trial {i}",
                prepare_id,
                kwargs={"task": i},
            )
            for i, trial_id in enumerate(trial_ids)
        ]
        after_trials = Dependency(jobs=list(trial_ids), allow_failure=True)
        finalize = _create(
            queue, FINALIZE, job_id, finalize_id, FINALIZE_TIMEOUT, "finalize", after_trials
        )
        deferred.append(finalize)
        with redis.pipeline(transaction=True) as pipe:
            pipe.multi()
            for job in deferred:
                job.save(pipeline=pipe)
                job.register_dependency(pipeline=pipe)
            # Last, so that the dependents exist before anything can run.
            queue.enqueue_job(prepare, pipeline=pipe)
            pipe.execute()
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot queue job {job_id}: {exc}") from exc


def _fetch(redis: Redis, job_id: str, n_trials: int) -> list[RQJob]:
    prepare_id, trial_ids, finalize_id = task_ids(job_id, n_trials)
    found = RQJob.fetch_many(
        [prepare_id, *trial_ids, finalize_id], connection=redis, serializer=JSONSerializer
    )
    return [job for job in found if job is not None]


def cancel_tasks(redis: Redis, job_id: str, n_trials: int) -> int:
    """Drop the search's tasks that have not started; returns how many were dropped.

    Queued and deferred tasks are cancelled without enqueueing their
    dependents, so neither more trials nor ``finalize`` run. A task already
    running is not touched here: it sees the cancel itself within seconds and
    stops (``workers.steps.lifecycle``).

    Raises:
        QueueUnavailable: Redis could not be reached.
    """
    waiting = {RQJobStatus.QUEUED, RQJobStatus.DEFERRED, RQJobStatus.SCHEDULED}
    try:
        dropped = 0
        for job in _fetch(redis, job_id, n_trials):
            if job.get_status(refresh=False) in waiting:
                job.cancel()
                dropped += 1
        return dropped
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot cancel the tasks of job {job_id}: {exc}") from exc


def running_tasks(redis: Redis, job_id: str, n_trials: int) -> list[str]:
    """What of the search runs now in a worker (``prepare``, ``trial 3``, ``finalize``).

    RQ's own ``started`` state: set when a worker takes the task, cleared when
    it ends, or, for a worker that died, once its heartbeat lapses.

    Raises:
        QueueUnavailable: Redis could not be reached.
    """
    prepare_id, trial_ids, finalize_id = task_ids(job_id, n_trials)
    names = {prepare_id: "prepare", finalize_id: "finalize"}
    names.update({rq_id: f"trial {i}" for i, rq_id in enumerate(trial_ids)})
    try:
        return [
            names[job.id]
            for job in _fetch(redis, job_id, n_trials)
            if job.get_status(refresh=False) == RQJobStatus.STARTED
        ]
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot read the tasks of job {job_id}: {exc}") from exc


def delete_tasks(redis: Redis, job_id: str, n_trials: int) -> None:
    """Remove every RQ record of a finished search (its tasks no longer run)."""
    try:
        for job in _fetch(redis, job_id, n_trials):
            job.delete(remove_from_queue=True)
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot delete the tasks of job {job_id}: {exc}") from exc


def queue_depths(redis: Redis) -> dict[str, int]:
    """Tasks waiting in each queue (the ``/metrics`` queue-depth gauge)."""
    try:
        return {name: get_queue(redis, name).count for name in QUEUE_NAMES}
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot read the queues: {exc}") from exc


def missing_tasks(redis: Redis, job_id: str, n_trials: int) -> set[str]:
    """RQ ids of the search's tasks that Redis has no record of.

    A finished task's record expires after :data:`RESULT_TTL`, so a missing
    record means "lost" only together with what the database says.
    """
    prepare_id, trial_ids, finalize_id = task_ids(job_id, n_trials)
    ids = [prepare_id, *trial_ids, finalize_id]
    try:
        with redis.pipeline(transaction=False) as pipe:
            for rq_id in ids:
                pipe.exists(f"rq:job:{rq_id}")
            found = pipe.execute()
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot read the tasks of job {job_id}: {exc}") from exc
    return {rq_id for rq_id, hit in zip(ids, found, strict=True) if not hit}


def requeue(redis: Redis, job_id: str, n_trials: int, queue_name: str, trials: list[int]) -> None:
    """Queue ``trials`` again (their records were lost) and a ``finalize`` after them."""
    queue = get_queue(redis, queue_name)
    _, trial_ids, finalize_id = task_ids(job_id, n_trials)
    try:
        jobs = [
            _create(queue, TRIAL, job_id, trial_ids[i], TRIAL_TIMEOUT, f"trial {i}",
                    kwargs={"task": i})
            for i in trials
        ]  # fmt: skip
        after = Dependency(jobs=[trial_ids[i] for i in trials], allow_failure=True)
        finalize = _create(
            queue, FINALIZE, job_id, finalize_id, FINALIZE_TIMEOUT, "finalize",
            after if trials else None,
        )  # fmt: skip
        with redis.pipeline(transaction=True) as pipe:
            pipe.multi()
            finalize.save(pipeline=pipe)
            if trials:
                finalize.register_dependency(pipeline=pipe)
            else:
                queue.enqueue_job(finalize, pipeline=pipe)
            for job in jobs:
                queue.enqueue_job(job, pipeline=pipe)
            pipe.execute()
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"cannot requeue job {job_id}: {exc}") from exc
