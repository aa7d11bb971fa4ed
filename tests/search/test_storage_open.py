"""Opening one fresh Optuna database from several processes at once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from search import study


def _open(url: str, start: mp.synchronize.Event, errors: mp.Queue[str]) -> None:
    start.wait()
    try:
        study.storage(url)
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(repr(exc))


def test_processes_racing_to_create_the_schema_all_open_it(tmp_path: Path) -> None:
    """The API and workers open a new database together; none may fail.

    Each process stamps Optuna's schema version into a fresh file; all but
    one lose that race with a unique-constraint error unless opening retries.
    """
    ctx = mp.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'optuna{round_}.db'}"
        start, errors = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(url, start, errors)) for _ in range(6)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(timeout=60)
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        assert failures == [] and all(p.exitcode == 0 for p in procs), failures
