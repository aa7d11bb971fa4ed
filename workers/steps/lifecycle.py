"""A task stops when its job is cancelled or deleted, and then writes nothing more.

A cancel only drops a job's queued tasks; the one already running would
otherwise go on for minutes (a baseline training, a fine-tune) and write
its files, its study and its rows for a job nobody wants. Worse, a task
that met a deleted row used to raise, RQ retried it, and what ``DELETE``
had removed came back.

So every task runs under :func:`stoppable`: a thread reads the job's state
every :data:`POLL_S` and, once the job is cancelled or its row has
vanished, interrupts the task's main thread with :class:`JobStopped` (a
signal, like ``limits.trial_s``: training returns to Python after every
batch). The task then ends quietly: no failure recorded, nothing for RQ to
retry. When the job row is gone, whatever the task may have written (its
artifact folder, its Optuna study) is removed again.
"""

from __future__ import annotations

import functools
import logging
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import ParamSpec

from core.db import repo
from core.db.models import CandidateStatus, JobStatus
from core.db.session import session_factory, session_scope
from core.errors import CandidateNotFound, JobNotFound
from core.settings import Settings
from search import delete_study, tell

log = logging.getLogger(__name__)

POLL_S = 1.0
SIGNAL = signal.SIGUSR1  # free in an RQ work-horse (RQ uses SIGALRM and SIGRTMIN)
P = ParamSpec("P")


class JobStopped(BaseException):
    """The task's job was cancelled or deleted: the task unwinds.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that the tasks'
    ``except Exception`` handlers, which record failures, let it through.
    """

    def __init__(self, job_id: str, why: str) -> None:
        super().__init__(f"job {job_id} {why}")
        self.why = why


def why_stop(settings: Settings, job_id: str) -> str | None:
    """Why a task of ``job_id`` should stop now (``"was deleted"``, ``"is cancelled"``), or None.

    Only a cancel or a delete stops a task: ``done`` and ``failed`` are set by
    the job's own last task, which must be left to finish its block.

    Raises:
        JobNotFound: This database never had the job (no tombstone): the task
            came from a queue that belongs to another database, a
            misconfiguration that must fail loudly rather than swallow
            another stack's work.
    """
    with session_scope(session_factory(settings.database_url)) as s:
        try:
            status = repo.get_job(s, job_id).status
        except JobNotFound:
            if repo.was_deleted(s, job_id):
                return "was deleted"
            raise
    return "is cancelled" if status == JobStatus.cancelled else None


class _Watcher(threading.Thread):
    """Polls the job's state; signals the main thread once, when the job is stopped."""

    def __init__(self, settings: Settings, job_id: str, poll_s: float) -> None:
        super().__init__(name=f"watch-{job_id}", daemon=True)
        self.settings, self.job_id, self.poll_s = settings, job_id, poll_s
        self.halted = threading.Event()
        self.why: str | None = None
        self.main = threading.main_thread().ident

    def run(self) -> None:
        while not self.halted.wait(self.poll_s):
            try:
                self.why = why_stop(self.settings, self.job_id)
            except Exception:  # a missed look (database busy): the next one decides
                continue
            if self.why is not None and self.main is not None:
                signal.pthread_kill(self.main, SIGNAL)
                return

    def interrupt(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: unwind the task, unless its block has already ended."""
        if self.why is not None and not self.halted.is_set():
            raise JobStopped(self.job_id, self.why)


@contextmanager
def watch(settings: Settings, job_id: str, poll_s: float = POLL_S) -> Iterator[None]:
    """Raise :class:`JobStopped` in the block as soon as the job is cancelled or vanishes.

    Off the main thread signals cannot be used: the block then runs
    unwatched (the worker and the local mode run tasks on the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watcher = _Watcher(settings, job_id, poll_s)
    previous = signal.signal(SIGNAL, watcher.interrupt)
    watcher.start()
    try:
        yield
    finally:
        watcher.halted.set()
        watcher.join()
        signal.signal(SIGNAL, previous)


def stoppable(task: Callable[P, None]) -> Callable[P, None]:
    """Run a task (``task(job_id, settings, ...)``) watched, and end it quietly when stopped.

    A stop, or any error raised while the job's row is gone (it was deleted
    between two reads), returns normally, so RQ counts
    the task done and retries nothing. A trial slot's candidate left
    ``running`` by the stop is recorded ``failed`` (the job is cancelled, not
    its trial lost).
    """

    @functools.wraps(task)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        job_id = str(args[0])
        settings = args[1] if len(args) > 1 else kwargs.get("settings")
        settings = settings if isinstance(settings, Settings) else Settings()
        try:
            with watch(settings, job_id):
                task(*args, **kwargs)
            return
        except JobStopped as exc:
            why = exc.why
        except Exception:
            # Whatever a vanished row or study raised (JobNotFound, CandidateNotFound,
            # Optuna's KeyError) is the delete, not a fault: RQ must not retry it.
            # A job this database never had raises from why_stop itself.
            if why_stop(settings, job_id) != "was deleted":
                raise
            why = "was deleted"
        log.info("%s of job %s stopped: the job %s", task.__name__, job_id, why)
        slot = kwargs.get("task")
        if why == "was deleted":
            erase(settings, job_id)
        elif isinstance(slot, int):
            _settle_slot(settings, job_id, slot, f"stopped: the job {why}")

    return run


def erase(settings: Settings, job_id: str) -> None:
    """Remove what a task of a deleted job may have written: its folder and its study."""
    shutil.rmtree(settings.artifacts / job_id, ignore_errors=True)
    try:
        delete_study(job_id, settings.optuna_url)
    except Exception:  # best effort: the study may never have existed
        log.warning("could not delete the study of deleted job %s", job_id, exc_info=True)


def _settle_slot(settings: Settings, job_id: str, slot: int, reason: str) -> None:
    """Record the slot's running candidate ``failed`` and fail its Optuna trial."""
    try:
        with session_scope(session_factory(settings.database_url)) as s:
            running = [
                c for c in repo.task_candidates(s, job_id, slot)
                if c.status == CandidateStatus.running
            ]  # fmt: skip
            for cand in running:
                repo.finish_candidate(s, cand.id, status=CandidateStatus.failed, error=reason)
        for cand in running:
            tell(job_id, settings.optuna_url, cand.trial_number, None)
    except (JobNotFound, CandidateNotFound, KeyError):  # deleted meanwhile: nothing to settle
        return
