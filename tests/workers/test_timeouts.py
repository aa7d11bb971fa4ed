"""``time_limit``: stops a block at its limit and leaves an outer alarm (RQ's) intact."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

import pytest

from workers.steps.timeouts import TimeLimit, time_limit


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_block_past_its_limit_is_stopped_there() -> None:
    before, _ = signal.getitimer(signal.ITIMER_REAL)  # pytest-timeout's alarm, if any
    start = time.monotonic()
    expected = r"timed out after 0.2 s \(limits.trial_s\)"
    with pytest.raises(TimeLimit, match=expected), time_limit(0.2, "limits.trial_s"):
        _spin(5)
    elapsed = time.monotonic() - start
    assert 0.15 < elapsed < 1.0
    left, _ = signal.getitimer(signal.ITIMER_REAL)  # ours is gone; an outer one is back
    assert left == 0 if before == 0 else abs(left - (before - elapsed)) < 0.1


def test_a_block_within_its_limit_is_untouched() -> None:
    with time_limit(1.0, "x"):
        _spin(0.05)
    _spin(1.1)  # the alarm was disarmed on exit: nothing fires later


class _Outer(Exception):
    pass


def _outer(_signum: int, _frame: FrameType | None) -> None:
    raise _Outer


def test_an_outer_alarm_keeps_its_handler_and_its_remaining_time() -> None:
    previous = signal.signal(signal.SIGALRM, _outer)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with time_limit(5.0, "x"):
            _spin(0.2)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0.6 < left < 0.85
        with pytest.raises(_Outer):
            _spin(2)
        # An outer alarm due before the inner limit fires as itself, inside the block.
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(_Outer), time_limit(5.0, "x"):
            _spin(2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_off_the_main_thread_the_block_runs_unlimited() -> None:
    done: list[bool] = []

    def run() -> None:
        with time_limit(0.05, "x"):
            _spin(0.2)
        done.append(True)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert done == [True]
