"""The repositories on SQLite and PostgreSQL: jobs, transitions, candidates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session

from core.db import repo
from core.db.models import CandidateStatus, Job, JobStatus
from core.db.session import session_factory
from core.errors import (
    CandidateNotFound,
    DuplicateCandidate,
    InvalidTransition,
    JobNotFound,
)
from core.spec import JobSpec


def _spec(name: str = "tiny", n_trials: int = 4) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": name,
            "model": {"arch": "lenet5", "pretrain_epochs": 0},
            "dataset": {"name": "synthetic"},
            "target": {"flops_ratio": 0.5},
            "search": {"n_trials": n_trials},
        }
    )


def _candidate(trial: int, key: str = "k", **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "trial_number": trial,
        "key": key,
        "ratios": [0.5, 0.75],
        "proposed": [0.4, 0.8],
        "counts": [3, 12],
        "flops": 1000.0 + trial,
        "params": 100.0 + trial,
    }
    fields.update(extra)
    return fields


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes (in UTC), PostgreSQL aware ones."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _fresh(db_url: str, job_id: str) -> Job:
    """The job as a new session sees it: what is committed, not what is cached."""
    with session_factory(db_url)() as other:
        return repo.get_job(other, job_id)


def test_create_and_get(session: Session, db_url: str) -> None:
    job = repo.create_job(session, _spec(n_trials=7), "overnight")

    stored = _fresh(db_url, job.id)
    assert stored.status == JobStatus.queued
    assert stored.queue == "overnight"
    assert stored.n_trials == 7
    assert stored.name == "tiny"
    assert stored.spec["target"]["flops_ratio"] == 0.5
    assert stored.timings == {}
    assert stored.created_at is not None and stored.updated_at is not None
    assert JobSpec.model_validate(stored.spec) == _spec(n_trials=7)


def test_get_missing_raises(session: Session) -> None:
    with pytest.raises(JobNotFound):
        repo.get_job(session, "nope")


def test_list_jobs_newest_first_paginated_and_filtered(session: Session) -> None:
    ids = [repo.create_job(session, _spec(f"job{i}"), "interactive").id for i in range(5)]
    repo.transition(session, ids[1], JobStatus.preparing, allowed_from={JobStatus.queued})

    listed = [j.id for j in repo.list_jobs(session, limit=10, offset=0)]
    assert listed == ids[::-1]
    assert [j.id for j in repo.list_jobs(session, limit=2, offset=1)] == ids[::-1][1:3]
    assert repo.list_jobs(session, limit=10, offset=5) == []
    preparing = repo.list_jobs(session, limit=10, offset=0, status=JobStatus.preparing)
    assert [j.id for j in preparing] == [ids[1]]
    assert repo.count_jobs(session) == 5
    assert repo.count_jobs(session, JobStatus.queued) == 4


def test_transition_moves_and_records_error(session: Session, db_url: str) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    before = job.updated_at

    moved = repo.transition(session, job.id, JobStatus.preparing, allowed_from={JobStatus.queued})
    assert moved.status == JobStatus.preparing
    assert _fresh(db_url, job.id).status == JobStatus.preparing
    assert _utc(_fresh(db_url, job.id).updated_at) >= _utc(before)

    failed = repo.transition(
        session,
        job.id,
        JobStatus.failed,
        allowed_from={JobStatus.preparing, JobStatus.searching},
        error="prepare: out of memory",
    )
    assert failed.status == JobStatus.failed
    stored = _fresh(db_url, job.id)
    assert (stored.status, stored.error) == (JobStatus.failed, "prepare: out of memory")


def test_invalid_transition_raises_and_changes_nothing(session: Session, db_url: str) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    repo.update_job(session, job.id, error=None, timings={"a": 1})
    before = _fresh(db_url, job.id)

    with pytest.raises(InvalidTransition):
        repo.transition(
            session, job.id, JobStatus.done, allowed_from={JobStatus.finalizing}, error="x"
        )

    after = _fresh(db_url, job.id)
    assert after.status == JobStatus.queued
    assert after.error is None
    assert after.updated_at == before.updated_at
    # The session is still usable after the refused transition.
    assert repo.get_job(session, job.id).status == JobStatus.queued


def test_transition_of_missing_job(session: Session) -> None:
    with pytest.raises(JobNotFound):
        repo.transition(session, "nope", JobStatus.cancelled, allowed_from={JobStatus.queued})


def test_update_job_sets_fields_but_not_status(session: Session, db_url: str) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    repo.update_job(
        session, job.id, baseline={"accuracy": 0.9}, profile={"version": 1}, timings={"p": 2.0}
    )
    stored = _fresh(db_url, job.id)
    assert stored.baseline == {"accuracy": 0.9}
    assert stored.profile == {"version": 1}
    assert stored.timings == {"p": 2.0}

    with pytest.raises(TypeError):
        repo.update_job(session, job.id, status=JobStatus.done)
    with pytest.raises(TypeError):
        repo.update_job(session, job.id, no_such_field=1)
    with pytest.raises(JobNotFound):
        repo.update_job(session, "nope", error="x")


def test_delete_job_removes_candidates(session: Session) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    repo.add_candidate(session, job.id, **_candidate(0))
    repo.delete_job(session, job.id)
    with pytest.raises(JobNotFound):
        repo.get_job(session, job.id)
    assert repo.count_candidates(session, job.id) == 0


def test_candidates_lifecycle(session: Session) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    cand = repo.add_candidate(session, job.id, **_candidate(0, worker="w1", device="cpu"))
    assert cand.id is not None
    assert cand.status == CandidateStatus.running
    assert cand.finished_at is None
    assert cand.timings == {}

    done = repo.finish_candidate(session, cand.id, score=0.8, accuracy=0.85, timings={"t": 1})
    assert done.status == CandidateStatus.complete
    assert done.finished_at is not None
    assert (done.score, done.accuracy, done.timings) == (0.8, 0.85, {"t": 1})

    failed = repo.add_candidate(session, job.id, **_candidate(1))
    repo.finish_candidate(session, failed.id, status=CandidateStatus.failed, error="boom")
    assert repo.count_candidates(session, job.id) == 2
    assert repo.count_candidates(session, job.id, [CandidateStatus.failed]) == 1

    # A run thought dead that finishes late does not revive its lost candidate.
    late = repo.add_candidate(session, job.id, **_candidate(2))
    repo.mark_lost(session, late.id, "its worker died")
    kept = repo.finish_candidate(session, late.id, score=0.9, accuracy=0.9)
    assert (kept.status, kept.score) == (CandidateStatus.lost, None)
    assert repo.count_candidates(session, job.id, [CandidateStatus.complete]) == 1

    with pytest.raises(CandidateNotFound):
        repo.finish_candidate(session, 10_000, score=1.0)
    with pytest.raises(TypeError):
        repo.finish_candidate(session, cand.id, bogus=1)


def test_add_candidate_checks_job_and_trial_number(session: Session) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    repo.add_candidate(session, job.id, **_candidate(0))
    with pytest.raises(DuplicateCandidate):
        repo.add_candidate(session, job.id, **_candidate(0))
    with pytest.raises(JobNotFound):
        repo.add_candidate(session, "nope", **_candidate(0))
    # The duplicate was rolled back; the session goes on.
    assert repo.count_candidates(session, job.id) == 1


def test_list_candidates_orders_and_pages(session: Session) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    scores = [0.2, None, 0.9, 0.5]
    for trial, score in enumerate(scores):
        cand = repo.add_candidate(session, job.id, **_candidate(trial))
        if score is not None:
            repo.finish_candidate(session, cand.id, score=score)

    by_trial = repo.list_candidates(session, job.id, limit=10, offset=0)
    assert [c.trial_number for c in by_trial] == [0, 1, 2, 3]
    by_score = repo.list_candidates(session, job.id, limit=10, offset=0, order_by="score")
    assert [c.trial_number for c in by_score] == [2, 3, 0, 1]  # unscored last
    page = repo.list_candidates(session, job.id, limit=2, offset=1, order_by="score")
    assert [c.trial_number for c in page] == [3, 0]
    assert repo.list_candidates(session, "other", limit=10, offset=0) == []


def test_best_candidate_is_highest_complete_score(session: Session) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    assert repo.best_candidate(session, job.id) is None

    a = repo.add_candidate(session, job.id, **_candidate(0))
    repo.finish_candidate(session, a.id, score=0.5)
    b = repo.add_candidate(session, job.id, **_candidate(1))
    repo.finish_candidate(session, b.id, score=0.7)
    # A duplicate reuses a score but is not a candidate of its own; running has no score.
    c = repo.add_candidate(session, job.id, **_candidate(2))
    repo.finish_candidate(session, c.id, status=CandidateStatus.duplicate, score=0.99)
    repo.add_candidate(session, job.id, **_candidate(3))

    best = repo.best_candidate(session, job.id)
    assert best is not None and best.id == b.id


def test_progress_counts_finished_trials(session: Session) -> None:
    job = repo.create_job(session, _spec(n_trials=6), "interactive")
    assert repo.progress(session, job.id) == (0, 6)
    statuses = [CandidateStatus.complete, CandidateStatus.duplicate, CandidateStatus.failed]
    for trial, status in enumerate(statuses):
        cand = repo.add_candidate(session, job.id, **_candidate(trial))
        repo.finish_candidate(session, cand.id, status=status)
    repo.add_candidate(session, job.id, **_candidate(3))  # still running
    assert repo.progress(session, job.id) == (3, 6)
    with pytest.raises(JobNotFound):
        repo.progress(session, "nope")


def test_find_scored_by_key(session: Session) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    other = repo.create_job(session, _spec("other"), "interactive")
    assert repo.find_scored_by_key(session, job.id, "k1") is None

    running = repo.add_candidate(session, job.id, **_candidate(0, key="k1"))
    assert repo.find_scored_by_key(session, job.id, "k1") is None  # not scored yet
    repo.finish_candidate(session, running.id, score=0.6, accuracy=0.7)
    failed = repo.add_candidate(session, job.id, **_candidate(1, key="k2"))
    repo.finish_candidate(session, failed.id, status=CandidateStatus.failed)
    repo.add_candidate(session, other.id, **_candidate(0, key="k3"))

    found = repo.find_scored_by_key(session, job.id, "k1")
    assert found is not None and found.id == running.id and found.score == 0.6
    assert repo.find_scored_by_key(session, job.id, "k2") is None  # failed is not scored
    assert repo.find_scored_by_key(session, job.id, "k3") is None  # another job's


def test_find_running_by_key_sees_only_earlier_rows(session: Session) -> None:
    """Of two trials of one network, the later one finds the earlier one, never the reverse."""
    job = repo.create_job(session, _spec(), "interactive")
    first = repo.add_candidate(session, job.id, **_candidate(0, key="k1"))
    second = repo.add_candidate(session, job.id, **_candidate(1, key="k1"))
    assert repo.find_running_by_key(session, job.id, "k1", before=first.id) is None
    found = repo.find_running_by_key(session, job.id, "k1", before=second.id)
    assert found is not None and found.id == first.id
    repo.finish_candidate(session, first.id, score=0.5, accuracy=0.5)
    assert repo.find_running_by_key(session, job.id, "k1", before=second.id) is None
    assert repo.find_running_by_key(session, job.id, "k2", before=second.id + 1) is None


def test_find_running_by_key_skips_twins_known_dead(session: Session) -> None:
    job = repo.create_job(session, _spec(), "interactive")
    dead, alive, me = (repo.add_candidate(session, job.id, **_candidate(i)) for i in range(3))
    found = repo.find_running_by_key(session, job.id, "k", before=me.id, skip={dead.id})
    assert found is not None and found.id == alive.id
    assert (
        repo.find_running_by_key(session, job.id, "k", before=me.id, skip={dead.id, alive.id})
        is None
    )


def test_concurrent_sessions_only_one_transition_wins(db_url: str) -> None:
    """Two workers finishing the search at once: exactly one moves the job on."""
    from core.db.session import migrate

    migrate(db_url)
    factory = session_factory(db_url)
    with factory() as s:
        job_id = repo.create_job(s, _spec(), "interactive").id
        repo.transition(s, job_id, JobStatus.preparing, allowed_from={JobStatus.queued})
    first, second = factory(), factory()
    try:
        # Both read the job as "preparing" before either writes.
        assert repo.get_job(first, job_id).status == JobStatus.preparing
        assert repo.get_job(second, job_id).status == JobStatus.preparing
        repo.transition(first, job_id, JobStatus.searching, allowed_from={JobStatus.preparing})
        with pytest.raises(InvalidTransition):
            repo.transition(second, job_id, JobStatus.searching, allowed_from={JobStatus.preparing})
    finally:
        first.close()
        second.close()
    assert _fresh(db_url, job_id).status == JobStatus.searching


def _worker_writes(args: tuple[str, str, int]) -> int:
    """One worker process: record and finish candidates, then try to move the job on."""
    db_url, job_id, first = args
    moved = 0
    with session_factory(db_url)() as s:
        for trial in range(first, first + 15):
            cand = repo.add_candidate(s, job_id, **_candidate(trial, key=f"k{trial}"))
            repo.finish_candidate(s, cand.id, score=trial / 100)
        try:
            repo.transition(s, job_id, JobStatus.finalizing, allowed_from={JobStatus.searching})
            moved = 1
        except InvalidTransition:
            pass
    return moved


def test_parallel_worker_processes_write_safely(db_url: str) -> None:
    """Several processes writing one database (SQLite file included) lose nothing."""
    import multiprocessing

    from core.db.session import migrate

    migrate(db_url)
    with session_factory(db_url)() as s:
        job_id = repo.create_job(s, _spec(n_trials=60), "interactive").id
        repo.transition(s, job_id, JobStatus.preparing, allowed_from={JobStatus.queued})
        repo.transition(s, job_id, JobStatus.searching, allowed_from={JobStatus.preparing})

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        moved = pool.map(_worker_writes, [(db_url, job_id, i * 15) for i in range(4)])

    assert sum(moved) == 1  # exactly one process won the transition
    with session_factory(db_url)() as s:
        assert repo.progress(s, job_id) == (60, 60)
        assert repo.get_job(s, job_id).status == JobStatus.finalizing


def test_page_summaries_match_the_per_job_queries(session: Session) -> None:
    """A list page's two batched queries give what progress/best_candidate give per job."""
    jobs = [repo.create_job(session, _spec(f"j{i}"), "interactive") for i in range(4)]
    outcomes = [
        [],  # nothing scored yet
        [(0.7, "complete"), (0.9, "complete"), (None, "failed"), (0.95, "running")],
        [(0.8, "complete"), (0.8, "complete"), (0.8, "duplicate")],  # a tie: earliest trial
        [(None, "failed")],
    ]
    for job, cands in zip(jobs, outcomes, strict=True):
        for trial, (score, status) in enumerate(cands):
            c = repo.add_candidate(session, job.id, **_candidate(trial, key=f"k{trial}"))
            if status != "running":
                repo.finish_candidate(session, c.id, score=score, status=CandidateStatus(status))
    ids = [j.id for j in jobs]
    done, best = repo.finished_counts(session, ids), repo.best_candidates(session, ids)
    assert [done[i] for i in ids] == [0, 3, 3, 1]
    assert done == {i: repo.progress(session, i)[0] for i in ids}
    expected = {i: repo.best_candidate(session, i) for i in ids}
    assert {i: c.id for i, c in best.items()} == {i: c.id for i, c in expected.items() if c}
    assert [best[i].trial_number for i in ids[1:3]] == [1, 0]
