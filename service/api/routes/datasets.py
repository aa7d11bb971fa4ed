"""``/v1/datasets``: upload an image dataset as an archive; list, read and delete datasets.

The upload is a multipart form: ``file`` (a .zip, .tar, .tar.gz or .tgz of
a class-per-folder image tree) and an optional ``name``. The body is
streamed straight into a hidden partial file, hashing as it goes and
stopping at ``Settings.max_dataset_mb`` (413), instead of letting the
framework spool an unbounded file first. Every problem with the form itself
is reported at once, each at its field. Then :mod:`service.datasets` checks
and unpacks the archive; a refusal (422 on ``file``) leaves no row, no
folder and no partial file. Every route is scoped to the caller: another
owner's dataset is a 404, exactly like a missing one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from core.db import datasets as repo
from core.db.models import Dataset
from core.errors import Conflict, DatasetTooLarge
from service import datasets
from service.api.deps import OwnerDep, SessionDep, SettingsDep
from service.api.multipart import FILE, StreamedForm, field_error, receive
from service.api.responses import raises
from service.api.schemas import Page, as_utc

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

NAME = "name"
MAX_NAME = 100


class DatasetPublic(BaseModel):
    id: str
    name: str
    filename: str
    classes: list[str]
    images: dict[str, int]
    channels: list[int]
    bytes: int
    archive_bytes: int
    sha256: str
    created_at: datetime

    @classmethod
    def of(cls, row: Dataset) -> DatasetPublic:
        return cls(
            id=row.id,
            name=row.name,
            filename=row.filename,
            classes=list(row.classes),
            images=dict(row.images),
            channels=list(row.channels),
            bytes=row.bytes,
            archive_bytes=row.archive_bytes,
            sha256=row.sha256,
            created_at=as_utc(row.created_at) or row.created_at,
        )


_FORM_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE],
                    "properties": {
                        FILE: {
                            "type": "string",
                            "format": "binary",
                            "description": "A .zip, .tar, .tar.gz or .tgz of <class>/<image> or "
                            "train/<class>/<image> + test/ (or val/), optionally in one top "
                            "folder; PNG or JPEG images only.",
                        },
                        NAME: {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
                    },
                    "additionalProperties": False,
                }
            }
        },
    }
}


class _Form(StreamedForm):
    """The dataset form: the file and an optional name; every problem is listed, then raised."""

    def __init__(self, sink: BinaryIO, limit: int) -> None:
        super().__init__(sink, limit, DatasetTooLarge, max_text=4 * MAX_NAME)
        self.errors: list[dict[str, Any]] = []

    def accept(self, name: str) -> bool:
        if (name == FILE and self.filename is None) or (name == NAME and NAME not in self.fields):
            return True
        if name in (FILE, NAME):
            self.errors.append(field_error(name, "given twice: send one"))
        else:
            self.errors.append(
                field_error(name or "(unnamed)", f"unexpected form field; expected {FILE}")
            )
        return False

    def check(self) -> str | None:
        """The name given, after every error of the form is raised at once."""
        name = None
        if NAME in self.fields:
            name = self.fields[NAME].decode("utf-8", "replace")
            if not 1 <= len(name) <= MAX_NAME:
                self.errors.append(field_error(NAME, f"give 1 to {MAX_NAME} characters"))
            elif any(ord(c) < 32 or ord(c) == 127 for c in name):
                self.errors.append(field_error(NAME, "control characters are not allowed"))
        if self.filename is None:
            self.errors.append(field_error(FILE, "field required: a file part named file"))
        if self.errors:
            raise RequestValidationError(self.errors)
        return name


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra=_FORM_SCHEMA,
    responses={
        **raises(DatasetTooLarge),
        422: {
            "description": "A form field is wrong, or the archive is refused: the message names "
            "the member and the problem (unsafe, not images, not a class-per-folder tree).",
        },
    },
)
async def upload_dataset(
    request: Request, session: SessionDep, settings: SettingsDep, owner: OwnerDep
) -> DatasetPublic:
    """Store an image dataset after checking the whole archive; a refusal keeps nothing."""
    dataset_id, partial = datasets.new_partial(settings)
    try:
        with partial.open("xb") as sink:
            form = _Form(sink, settings.max_dataset_mb << 20)
            await receive(request, form)
        name = form.check()
        row = await run_in_threadpool(
            datasets.save_dataset,
            session,
            settings,
            owner=owner,
            dataset_id=dataset_id,
            partial=partial,
            filename=form.filename or "",
            name=name,
            sha256=form.digest.hexdigest(),
        )
    finally:
        partial.unlink(missing_ok=True)
    return DatasetPublic.of(row)


@router.get("", response_model=Page[DatasetPublic])
def list_datasets(
    session: SessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Page[DatasetPublic]:
    """The caller's datasets, newest first."""
    rows = repo.list_datasets(session, owner, limit=limit, offset=offset)
    return Page[DatasetPublic](
        items=[DatasetPublic.of(r) for r in rows],
        total=repo.count_datasets(session, owner),
        limit=limit,
        offset=offset,
    )


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, owner: OwnerDep) -> DatasetPublic:
    """One dataset: its classes, images per split and the channel counts seen."""
    return DatasetPublic.of(repo.get_dataset(session, dataset_id, owner))


@router.delete("/{dataset_id}", status_code=204, responses=raises(Conflict))
def delete_dataset(
    dataset_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep
) -> Response:
    """Remove a dataset and its images; 409 while a job that has not ended reads it."""
    datasets.delete_dataset(session, settings, repo.get_dataset(session, dataset_id, owner))
    return Response(status_code=204)
