"""Repository functions: the only code that queries or changes our tables.

The API and the worker tasks share these, so a rule about jobs (which state
may follow which, what "finished" means for progress) lives in one place.
Every function that writes commits before it returns: each call is one
transaction, which keeps SQLite's single write lock held for milliseconds
even when a worker keeps its session open across a long trial. Rows come
back usable after the commit (the session factories do not expire them).

One module per table: :mod:`~core.db.repo.jobs`, :mod:`~core.db.repo.candidates`
and :mod:`~core.db.repo.latency` (with :mod:`~core.db.repo.fields` for the check
they share). Callers keep using the package, ``from core.db import repo`` and
``repo.get_job(...)``; this module only re-exports. Patch a function where it is
defined (``repo.jobs.get_job``) for the other modules to see the patch.
"""

from __future__ import annotations

from core.db.repo.candidates import (
    CANDIDATE_SORTS,
    FINISHED_CANDIDATES,
    CandidateFilter,
    add_candidate,
    best_candidate,
    best_candidates,
    changed_candidates,
    count_candidates,
    find_running_by_key,
    find_scored_by_key,
    finish_candidate,
    finished_counts,
    last_candidate_id,
    list_candidates,
    mark_lost,
    progress,
    recent_trial_times,
    set_rungs,
    still_running,
    task_candidates,
)
from core.db.repo.jobs import (
    VERSION_OF,
    JobVersion,
    count_jobs,
    create_job,
    delete_job,
    find_idempotent,
    get_job,
    job_version,
    job_versions,
    list_jobs,
    transition,
    update_job,
    was_deleted,
)
from core.db.repo.latency import cached_latency, store_latency

__all__ = [
    "CANDIDATE_SORTS",
    "FINISHED_CANDIDATES",
    "VERSION_OF",
    "CandidateFilter",
    "JobVersion",
    "add_candidate",
    "best_candidate",
    "best_candidates",
    "cached_latency",
    "changed_candidates",
    "count_candidates",
    "count_jobs",
    "create_job",
    "delete_job",
    "find_idempotent",
    "find_running_by_key",
    "find_scored_by_key",
    "finish_candidate",
    "finished_counts",
    "get_job",
    "job_version",
    "job_versions",
    "last_candidate_id",
    "list_candidates",
    "list_jobs",
    "mark_lost",
    "progress",
    "recent_trial_times",
    "set_rungs",
    "still_running",
    "store_latency",
    "task_candidates",
    "transition",
    "update_job",
    "was_deleted",
]
