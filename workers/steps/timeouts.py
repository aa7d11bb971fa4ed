"""A wall-clock limit on a block of Python, for ``limits.trial_s``.

A trial is stopped from inside its own process with ``SIGALRM``: the alarm
raises :class:`TimeLimit` at the next Python bytecode (training returns to
Python after every batch), so the trial can still record itself as failed
and tell the study. Killing the process instead would make the queue retry
it, and a trial that is simply too slow would run three times.

RQ uses the same signal for its own job timeout (kept far above
``trial_s`` as a backstop); the previous handler and the time left on its
alarm are put back on exit, so both limits hold.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)


class TimeLimit(Exception):
    """The block ran past its limit."""

    def __init__(self, seconds: float, what: str) -> None:
        super().__init__(f"timed out after {seconds:g} s ({what})")
        self.seconds = seconds


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`TimeLimit` in the block once it has run ``seconds``.

    Off the main thread signals cannot be used; the block then runs
    unlimited, with a warning (the worker and the local mode run trials on
    the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        log.warning("%s not enforced: not on the main thread", what)
        yield
        return

    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_first = 0 < outer_left <= seconds

    def expire(signum: int, frame: FrameType | None) -> None:
        if outer_first and callable(previous):  # the outer alarm was due first: its turn
            previous(signum, frame)
        raise TimeLimit(seconds, what)

    start = time.monotonic()
    limit = outer_left if outer_first else seconds
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:  # re-arm the outer alarm, less the time spent here
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3))
