"""SQLAlchemy 2.0 models: jobs and their candidates.

Optuna keeps its own tables in its own database (``OPTUNA_URL``); these
tables are ours and are what the API serves. JSON columns hold values whose
shape the search side owns (profile, ratios, result), so they evolve
without a migration for every new key.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


class JobStatus(enum.StrEnum):
    queued = "queued"
    preparing = "preparing"
    searching = "searching"
    finalizing = "finalizing"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.done, JobStatus.failed, JobStatus.cancelled})


class CandidateStatus(enum.StrEnum):
    running = "running"
    complete = "complete"
    duplicate = "duplicate"  # same kept channels as an earlier candidate: score reused
    failed = "failed"
    lost = "lost"  # its worker died mid-trial; the task ran again (not counted as a trial)


LOCAL_OWNER = "local"  # the one owner when the service runs without keys (auth = none)


class ApiKey(Base):
    """An API key: only its SHA-256 digest is kept, the key is shown once.

    Keys are 256-bit random tokens, so a fast hash is enough (nothing to
    brute-force); ``prefix`` lets an owner tell their keys apart.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Upload(Base):
    """Weights a user uploaded (safetensors), checked against a zoo architecture."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    arch: Mapped[str] = mapped_column(String(200))
    arch_kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, doc="in_channels, num_classes, ...")
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    tensors: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    """An image dataset a user uploaded as an archive, checked and unpacked for the workers."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(100))
    filename: Mapped[str] = mapped_column(String(255))
    classes: Mapped[list[Any]] = mapped_column(JSON, doc="class folder names, sorted")
    images: Mapped[dict[str, Any]] = mapped_column(JSON, doc="images per split: train, test, ...")
    channels: Mapped[list[Any]] = mapped_column(JSON, doc="channel counts seen (1 grey, 3 RGB)")
    bytes: Mapped[int] = mapped_column(BigInteger, doc="size of the unpacked images")
    archive_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), doc="of the archive")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Batch(Base):
    """A set of jobs submitted together (a list of specs or a grid) for the overnight queue."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(100))
    request: Mapped[dict[str, Any]] = mapped_column(JSON, doc="the submitted list or grid")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    jobs: Mapped[list[Job]] = relationship(passive_deletes=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_owner_idempotency", "owner", "idempotency_key", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[JobStatus] = mapped_column(
        SAEnum(JobStatus, name="job_status", native_enum=False, length=16),
        default=JobStatus.queued,
        index=True,
    )
    queue: Mapped[str] = mapped_column(String(32), default="interactive")
    owner: Mapped[str] = mapped_column(String(100), default=LOCAL_OWNER, index=True)
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), default=None, index=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(
        String(200), default=None, doc="the client's Idempotency-Key header, scoped to the owner"
    )
    request_hash: Mapped[str | None] = mapped_column(
        String(64), default=None, doc="hash of the submitted spec, to tell a replay from a reuse"
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_trials: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    baseline: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    triage: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, default=None, doc="sensitivity curves and block criticality (triage: true)"
    )
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    version: Mapped[int] = mapped_column(
        Integer,
        default=0,
        server_default="0",
        doc="raised by every write of the job or of its candidates (core.db.repo): what the "
        "API's ETags are made of, so a poll that finds nothing new costs one small read",
    )

    candidates: Mapped[list[Candidate]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (
        Index("ix_candidates_job_trial", "job_id", "trial_number", unique=True),
        Index("ix_candidates_job_key", "job_id", "key"),
        Index("ix_candidates_job_task", "job_id", "task"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)
    task: Mapped[int | None] = mapped_column(
        Integer, default=None, doc="the queue task (trial slot) that ran it; a retry reuses it"
    )
    status: Mapped[CandidateStatus] = mapped_column(
        SAEnum(CandidateStatus, name="candidate_status", native_enum=False, length=16),
        default=CandidateStatus.running,
    )
    key: Mapped[str] = mapped_column(String(64), doc="hash of the kept channel counts")
    ratios: Mapped[list[Any]] = mapped_column(JSON, doc="repaired per-group keep ratios")
    proposed: Mapped[list[Any]] = mapped_column(JSON, doc="ratios as the sampler proposed them")
    counts: Mapped[list[Any]] = mapped_column(JSON, doc="kept channels per group")
    flops: Mapped[float] = mapped_column(Float)
    params: Mapped[float] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float, default=None)
    accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    device: Mapped[str | None] = mapped_column(String(32), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    objectives: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, default=None, doc="flops_ratio, params_ratio and (when measured) latency_ratio"
    )
    rungs: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, default=None, doc="promotion ladder: short fine-tune result and why it was promoted"
    )
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    job: Mapped[Job] = relationship(back_populates="candidates")


class Latency(Base):
    """A measured forward latency, cached per device, architecture and batch size.

    ``arch`` names the network exactly (zoo name, input shape and the hash of
    its kept counts), so a candidate seen before, in this job or another,
    on the same kind of device is not timed twice.
    """

    __tablename__ = "latencies"
    __table_args__ = (Index("ix_latencies_key", "device", "arch", "batch", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(200))
    arch: Mapped[str] = mapped_column(String(200))
    batch: Mapped[int] = mapped_column(Integer)
    ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeletedJob(Base):
    """A tombstone: this database had the job, and it was deleted.

    A task whose job row is missing must know why. Deleted: it ends quietly
    and erases what it wrote (``workers.steps.lifecycle``). Never here: the
    task came from a queue this database does not own (two stacks sharing
    one Redis database), and it must fail loudly instead of swallowing
    another stack's work.
    """

    __tablename__ = "deleted_jobs"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
