"""Errors of the service package; every one derives from :class:`ServiceError`.

The repositories and the queue adapter raise these instead of SQLAlchemy or
redis exceptions, so callers (the API, the worker tasks, the CLI) handle one
vocabulary. HTTP status codes are chosen in ``service.api`` only.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of everything the service side raises on purpose."""


class NotFound(ServiceError):
    """Something that was asked for by id or name does not exist (yet)."""


class JobNotFound(NotFound):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class CandidateNotFound(NotFound):
    """No candidate has this id."""

    def __init__(self, candidate_id: int) -> None:
        super().__init__(f"candidate {candidate_id!r} not found")
        self.candidate_id = candidate_id


class ResultNotReady(NotFound):
    """The job has no result: it is not ``done`` (yet, or ever)."""


class TriageNotReady(NotFound):
    """The job has no triage report: it did not ask for one, or it is not written yet."""


class ArtifactNotFound(NotFound):
    """The artifact is not one a job can have, or it was not written."""


class InvalidTransition(ServiceError):
    """A job state change that its current state does not allow.

    Raised instead of overwriting, so that e.g. a late ``finalize`` never
    resurrects a job a user has cancelled.
    """

    def __init__(self, job_id: str, current: str, to: str) -> None:
        super().__init__(f"job {job_id!r} cannot go from {current!r} to {to!r}")
        self.job_id = job_id
        self.current = current
        self.to = to


class DuplicateCandidate(ServiceError):
    """A candidate with this trial number already exists for the job."""


class QueueUnavailable(ServiceError):
    """Redis cannot be reached, so no work can be queued."""


class Conflict(ServiceError):
    """The request cannot be done in the object's current state (HTTP 409)."""


class IdempotencyConflict(Conflict):
    """An ``Idempotency-Key`` reused with a different request body."""


class TasksStillRunning(Conflict):
    """A job cannot be deleted while a task of it runs: the task would write again.

    A cancelled job's running task stops within seconds (``workers.steps.lifecycle``);
    a task whose worker died counts as running until RQ notices (about 90 s).
    """

    def __init__(self, job_id: str, tasks: list[str]) -> None:
        super().__init__(
            f"job {job_id!r} cannot be deleted yet: {', '.join(tasks)} still running; "
            "a cancelled job's tasks stop within seconds, try again then"
        )
        self.job_id = job_id
        self.tasks = tasks


class InvalidInput(ServiceError):
    """A request value refused by a check the schema cannot express (HTTP 422).

    ``field`` names the value (``file``, ``arch``, ``model.weights``), so the
    reply can say which one to fix; ``message`` says what is wrong with it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UploadTooLarge(ServiceError):
    """An upload over ``Settings.max_upload_mb`` (HTTP 413); reading stopped at the limit."""

    def __init__(self, field: str, limit_bytes: int) -> None:
        mib = limit_bytes / 2**20
        super().__init__(f"{field}: over the upload limit of {mib:g} MiB (max_upload_mb)")
        self.field = field
        self.limit_bytes = limit_bytes


class UploadNotFound(NotFound):
    """No upload of the caller's has this id."""

    def __init__(self, upload_id: str) -> None:
        super().__init__(f"upload {upload_id!r} not found")
        self.upload_id = upload_id


class DatasetTooLarge(UploadTooLarge):
    """A dataset archive over ``Settings.max_dataset_mb`` (HTTP 413); reading stopped there."""

    def __init__(self, field: str, limit_bytes: int) -> None:
        super().__init__(field, limit_bytes)
        mib = limit_bytes / 2**20
        self.args = (f"{field}: over the dataset limit of {mib:g} MiB (max_dataset_mb)",)


class ArchiveRefused(InvalidInput):
    """A dataset archive that is unsafe or holds no usable dataset (HTTP 422 on ``file``)."""

    def __init__(self, message: str) -> None:
        super().__init__("file", message)


class DatasetNotFound(NotFound):
    """No dataset of the caller's has this id."""

    def __init__(self, dataset_id: str) -> None:
        super().__init__(f"dataset {dataset_id!r} not found")
        self.dataset_id = dataset_id


class QuotaExceeded(ServiceError):
    """A submission that would take the owner over one of their quotas (HTTP 429).

    Raised before anything is stored, so a refused submission leaves nothing.
    """

    def __init__(self, quota: str, limit: int, current: int, adds: int, what: str) -> None:
        super().__init__(
            f"quota {quota} (PRUNESEARCH_{quota.upper()}) reached: at most {limit} {what} "
            f"per owner; you have {current} and this request adds {adds} (cancel some, or "
            "wait for them to end)"
        )
        self.quota = quota
        self.limit = limit
        self.current = current
        self.adds = adds
