"""A worker's parent loads a job's data before forking its task (``workers.worker._prefetch``).

The forked work-horses then share what the parent decoded instead of each
decoding it again; for an image folder that is the whole decode.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from core.db import repo
from core.db.session import migrate, session_factory, session_scope
from core.spec import JobSpec
from tests.imagefolders import write_digits
from workers.nets import imagefolder
from workers.worker import HEARTBEAT_GRACE_S, PrefetchingWorker, _prefetch


def test_an_image_folder_job_is_decoded_once_in_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_digits(tmp_path / "data" / "digits", per_class=3)
    monkeypatch.setenv("PRUNESEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PRUNESEARCH_DATA_DIR", str(tmp_path / "data"))
    url = f"sqlite:///{tmp_path / 'home' / 'prunesearch.db'}"  # Settings' default there
    (tmp_path / "home").mkdir()
    migrate(url)
    spec = JobSpec.model_validate(
        {
            "name": "prefetch",
            "model": {"arch": "lenet5"},
            "dataset": {"name": "imagefolder", "path": "digits", "loader_workers": 0},
            "target": {"flops_ratio": 0.5},
        }
    )
    with session_scope(session_factory(url)) as s:
        job_id = repo.create_job(s, spec, "interactive").id
    imagefolder.decoded.cache_clear()

    _prefetch(job_id)

    info = imagefolder.decoded.cache_info()
    assert (info.misses, info.currsize) == (1, 1)  # the folder is decoded and kept


def test_a_running_task_heartbeat_outlives_its_refresh_by_the_grace_not_rqs_minute() -> None:
    """What bounds whole-worker recovery: interval + 20 s (RQ: + 60 s), never below the grace."""
    worker = object.__new__(PrefetchingWorker)  # the rule reads only the interval
    worker.job_monitoring_interval = 30
    task = SimpleNamespace(timeout=6 * 3600)
    assert worker.get_heartbeat_ttl(task) == 30 + HEARTBEAT_GRACE_S == 50
    assert worker.get_heartbeat_ttl(task, working_time=6 * 3600 - 10) == 10 + HEARTBEAT_GRACE_S
    assert worker.get_heartbeat_ttl(task, working_time=7 * 3600) == HEARTBEAT_GRACE_S
