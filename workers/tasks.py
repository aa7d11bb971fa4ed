"""The three task functions of a job: ``prepare``, ``trial``, ``finalize``.

RQ calls them with a job id only (DESIGN.md, "The flow of one job"), by
the dotted names ``core.queue`` enqueues (``workers.tasks.prepare``, ...),
so they keep living at this address; the local mode calls the very same
functions in-process with its own settings. Each stage is its own module
under ``workers.steps`` (``prepare``, ``trial``, ``finalize``), with what
they share in ``workers.steps.stage``.

Each task reads what it needs from the database, does its work between
short transactions, and records the outcome: a task never leaves a job in a
state the database does not describe. A failure inside a task is recorded
(job ``failed`` with the reason, or a ``failed`` candidate told to the study
as failed) and not re-raised, so the queue drains instead of leaving
dependent tasks waiting forever. A task of a job that is cancelled or
deleted while it runs stops and ends quietly
(:func:`workers.steps.lifecycle.stoppable`): nothing to record, nothing to retry.
"""

from __future__ import annotations

from workers.steps.finalize import finalize
from workers.steps.prepare import prepare
from workers.steps.trial import trial

__all__ = ["finalize", "prepare", "trial"]
