"""A task under ``workers.steps.lifecycle.stoppable`` stops when its job is cancelled or deleted.

In-process, on a SQLite file: the task is a stand-in that sleeps where a
real one trains, so the test shows the stop itself (the chaos tests show it
with real workers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from core.db import repo
from core.db.models import CandidateStatus, JobStatus
from core.db.session import migrate, session_factory, session_scope
from core.errors import JobNotFound
from core.settings import Settings
from core.spec import JobSpec
from search import create_study
from search.study import storage, study_name
from workers.steps.lifecycle import stoppable, why_stop

SPEC = JobSpec.model_validate(
    {"name": "w", "dataset": {"name": "synthetic"}, "target": {"flops_ratio": 0.5}}
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path)
    migrate(s.database_url)
    return s


def _job(settings: Settings, status: JobStatus) -> str:
    with session_scope(session_factory(settings.database_url)) as s:
        job_id = repo.create_job(s, SPEC, "interactive").id
        repo.transition(s, job_id, status, allowed_from={JobStatus.queued})
    return job_id


def _later(seconds: float, action: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_cancel_stops_a_running_trial_and_settles_its_candidate(settings: Settings) -> None:
    job_id = _job(settings, JobStatus.searching)
    create_study(job_id, settings.optuna_url)
    finished: list[str] = []

    @stoppable
    def trial(job_id: str, settings: Settings, task: int) -> None:
        with session_scope(session_factory(settings.database_url)) as s:
            repo.add_candidate(
                s, job_id, trial_number=0, key="k", proposed=[1.0], ratios=[1.0], counts=[4],
                flops=1.0, params=1.0, task=task, status=CandidateStatus.running,
            )  # fmt: skip
        optuna.load_study(study_name=study_name(job_id), storage=storage(settings.optuna_url)).ask()
        time.sleep(30)  # "training"
        finished.append("the trial ran to its end")

    def cancel() -> None:
        with session_scope(session_factory(settings.database_url)) as s:
            repo.transition(s, job_id, JobStatus.cancelled, allowed_from={JobStatus.searching})

    helper = _later(1.0, cancel)
    start = time.monotonic()
    trial(job_id, settings, task=3)  # returns, does not raise
    helper.join()
    assert time.monotonic() - start < 5 and not finished
    with session_scope(session_factory(settings.database_url)) as s:
        (cand,) = repo.task_candidates(s, job_id, 3)
    assert cand.status == CandidateStatus.failed
    assert cand.error == "stopped: the job is cancelled"


def test_a_task_whose_job_is_deleted_stops_and_erases_what_it_wrote(settings: Settings) -> None:
    job_id = _job(settings, JobStatus.preparing)

    @stoppable
    def prepare(job_id: str, settings: Settings) -> None:
        (settings.job_dir(job_id) / "baseline.safetensors").write_bytes(b"weights")
        create_study(job_id, settings.optuna_url)
        time.sleep(30)

    def delete() -> None:
        with session_scope(session_factory(settings.database_url)) as s:
            repo.delete_job(s, job_id)

    helper = _later(1.0, delete)
    start = time.monotonic()
    prepare(job_id, settings)
    helper.join()
    assert time.monotonic() - start < 5
    assert not (settings.artifacts / job_id).exists()
    with pytest.raises(KeyError):
        storage(settings.optuna_url).get_study_id_from_name(study_name(job_id))


def test_an_error_of_a_job_that_still_exists_is_raised(settings: Settings) -> None:
    job_id = _job(settings, JobStatus.searching)

    @stoppable
    def trial(job_id: str, settings: Settings) -> None:
        raise JobNotFound("another-job")

    with pytest.raises(JobNotFound):  # not this job's delete: RQ's retry is right
        trial(job_id, settings)
    assert why_stop(settings, job_id) is None


def test_a_task_of_a_job_this_database_never_had_fails_loudly(settings: Settings) -> None:
    """Two stacks on one Redis database: a task of the other stack's job is not a delete."""
    ran: list[str] = []

    @stoppable
    def prepare(job_id: str, settings: Settings) -> None:
        ran.append(job_id)
        with session_scope(session_factory(settings.database_url)) as s:
            repo.get_job(s, job_id)

    with pytest.raises(JobNotFound):
        prepare("f" * 32, settings)
    assert ran == ["f" * 32]
    with pytest.raises(JobNotFound):
        why_stop(settings, "f" * 32)
    deleted = _job(settings, JobStatus.searching)
    with session_scope(session_factory(settings.database_url)) as s:
        repo.delete_job(s, deleted)
        assert repo.was_deleted(s, deleted) and not repo.was_deleted(s, "f" * 32)
    assert why_stop(settings, deleted) == "was deleted"
