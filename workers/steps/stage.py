"""What the three stages of a job share: one read of its row, short sessions, failures.

``prepare``, ``trial`` and ``finalize`` (the modules beside this one) each
read their job once, as a :class:`JobRow` snapshot taken in one session,
and pass the snapshot to whatever needs a field of it. Helpers that opened
a session each to look up one field made a trial read the same row several
times, and read it at moments that only looked different.

How a failure is recorded, and how a network's accuracy and costs are
measured, is the same in every stage, so it is written once, here.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from sqlalchemy.orm import Session

from core.db import repo
from core.db.models import Job, JobStatus
from core.db.session import session_factory, session_scope
from core.errors import InvalidTransition, JobNotFound
from core.settings import Settings
from core.spec import JobSpec
from workers.errors import StructureError
from workers.nets import measure, train
from workers.steps.context import JobContext, job_context

log = logging.getLogger(__name__)

ACTIVE = frozenset(
    {JobStatus.queued, JobStatus.preparing, JobStatus.searching, JobStatus.finalizing}
)


@contextmanager
def session(settings: Settings) -> Iterator[Session]:
    """One short transaction on the job database."""
    with session_scope(session_factory(settings.database_url)) as s:
        yield s


@dataclass(frozen=True)
class JobRow:
    """What a stage needs of its Job row, as it was when the stage read it.

    ``baseline`` and ``timings`` are copies: a stage that adds to them (as
    ``finalize`` does) copies them again and writes them back itself.
    """

    job_id: str
    status: JobStatus
    spec: JobSpec
    profile: Mapping[str, Any] | None
    triage: Mapping[str, Any] | None
    baseline: Mapping[str, Any]
    timings: Mapping[str, Any]

    @classmethod
    def of(cls, job: Job) -> JobRow:
        """The snapshot of a row read in an open session."""
        return cls(
            job_id=job.id,
            status=job.status,
            spec=JobSpec.model_validate(job.spec),
            profile=dict(job.profile) if job.profile is not None else None,
            triage=dict(job.triage) if job.triage is not None else None,
            baseline=dict(job.baseline or {}),
            timings=dict(job.timings or {}),
        )

    def context(self, settings: Settings) -> JobContext:
        """The job's (cached) context: its spec, data and baseline on this process's device."""
        profile = dict(self.profile) if self.profile is not None else None
        triage = dict(self.triage) if self.triage is not None else None
        return job_context(self.job_id, self.spec, settings, profile, triage)


def read_job(settings: Settings, job_id: str) -> JobRow:
    """The job's row, read once (raises :class:`JobNotFound`)."""
    with session(settings) as s:
        return JobRow.of(repo.get_job(s, job_id))


def fail(job_id: str, settings: Settings, stage: str, exc: BaseException) -> None:
    """Record the job ``failed`` by ``exc`` in ``stage`` (a cancelled job stays cancelled)."""
    if isinstance(exc, JobNotFound):  # deleted under the task: not a failure (see lifecycle)
        raise exc
    if isinstance(exc, StructureError):  # the user's network, not a fault: no traceback
        log.info("job %s refused in %s: %s", job_id, stage, exc)
    else:
        log.error("job %s failed in %s:\n%s", job_id, stage, traceback.format_exc())
    with session(settings) as s:
        try:
            repo.transition(
                s, job_id, JobStatus.failed, allowed_from=ACTIVE, error=f"{stage}: {exc}"
            )
        except InvalidTransition:  # cancelled while this stage ran: cancelled it stays
            log.warning("job %s ended meanwhile; %s's failure not recorded", job_id, stage)


def now() -> str:
    """The current time, as the job's timings store it."""
    return datetime.now(UTC).isoformat()


def search_elapsed(timings: Mapping[str, Any], until: str | None = None) -> float:
    """Seconds from ``prepare`` opening the search (its ``search_started``) to ``until`` or now."""
    end = datetime.fromisoformat(until).timestamp() if until else time.time()
    return end - datetime.fromisoformat(timings["search_started"]).timestamp()


def accuracy(ctx: JobContext, model: torch.nn.Module, split: str) -> float:
    """Top-1 accuracy of ``model`` on the job's ``split`` (``"val"`` or ``"test"``)."""
    return train.evaluate(model, getattr(ctx.data, split), batch_size=512, device=ctx.device)


def costs(ctx: JobContext, model: torch.nn.Module) -> dict[str, float]:
    """FLOPs and parameters of ``model`` at the job's input shape."""
    flops, params = measure.count(model, ctx.input_shape, device=ctx.device)
    return {"flops": flops, "params": params}
