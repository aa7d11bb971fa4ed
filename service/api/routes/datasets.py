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

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from service import datasets
from service.api.deps import OwnerDep, SessionDep, SettingsDep
from service.api.schemas import Page, as_utc
from service.db import datasets as repo
from service.db.models import Dataset
from service.errors import DatasetTooLarge

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

FILE, NAME = "file", "name"
MAX_NAME = 100
FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and the name around the file


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


class ErrorPublic(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class InvalidPublic(BaseModel):
    detail: list[FieldError]


def _reply(code: int, description: str) -> dict[int | str, dict[str, Any]]:
    model = InvalidPublic if code == 422 else ErrorPublic
    return {code: {"model": model, "description": description}}


UNAUTHORIZED = _reply(401, "No API key, or one that is unknown or revoked.")
NOT_FOUND = _reply(404, "No dataset of the caller's has this id.")
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


def _error(loc: str, msg: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": ["body", loc], "msg": msg, "input": None}


@dataclass
class _Form:
    """Receives the multipart callbacks: the file to disk, the name in memory, errors listed."""

    sink: BinaryIO
    limit: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    filename: str | None = None
    name: bytearray | None = None
    size: int = 0
    total: int = 0
    pending: list[bytes] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)
    _headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    _field: bytes = b""
    _value: bytes = b""
    _part: str | None = None  # FILE, NAME, or None for a part that is refused and skipped

    def on_part_begin(self) -> None:
        self._headers, self._part = [], None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((self._field.lower(), self._value))
        self._field, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(dict(self._headers).get(b"content-disposition", b""))
        part = options.get(b"name", b"").decode("utf-8", "replace")
        if part == FILE and self.filename is None:
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self._part = FILE
        elif part == NAME and self.name is None:
            self.name, self._part = bytearray(), NAME
        elif part in (FILE, NAME):
            self.errors.append(_error(part, "given twice: send one"))
        else:
            self.errors.append(
                _error(part or "(unnamed)", f"unexpected form field; expected {FILE}")
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.total += end - start
        if self.total > self.limit + FORM_OVERHEAD:
            raise DatasetTooLarge(FILE, self.limit)
        if self._part == FILE:
            self.size += end - start
            if self.size > self.limit:
                raise DatasetTooLarge(FILE, self.limit)
            self.pending.append(data[start:end])
        elif self._part == NAME and self.name is not None and len(self.name) <= 4 * MAX_NAME:
            self.name += data[start:end]

    def flush(self) -> None:
        """Write what the last chunk carried of the file (called in a worker thread)."""
        data, self.pending = b"".join(self.pending), []
        if data:
            self.digest.update(data)
            self.sink.write(data)

    def check(self) -> str | None:
        """The name given, after every error of the form is raised at once."""
        name = None
        if self.name is not None:
            name = self.name.decode("utf-8", "replace")
            if not 1 <= len(name) <= MAX_NAME:
                self.errors.append(_error(NAME, f"give 1 to {MAX_NAME} characters"))
            elif any(ord(c) < 32 or ord(c) == 127 for c in name):
                self.errors.append(_error(NAME, "control characters are not allowed"))
        if self.filename is None:
            self.errors.append(_error(FILE, "field required: a file part named file"))
        if self.errors:
            raise RequestValidationError(self.errors)
        return name


async def _receive(request: Request, form: _Form) -> None:
    """Stream the multipart body into ``form`` (the file into its sink)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        msg = "send a multipart/form-data body with a file part named file"
        raise RequestValidationError([_error(FILE, msg)])
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > form.limit + FORM_OVERHEAD:
        raise DatasetTooLarge(FILE, form.limit)
    callbacks = {name: getattr(form, name) for name in dir(form) if name.startswith("on_")}
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await run_in_threadpool(form.flush)
        parser.finalize()
    except FormParserError as exc:
        raise RequestValidationError([_error(FILE, f"malformed multipart body: {exc}")]) from exc


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra=_FORM_SCHEMA,
    responses={
        **UNAUTHORIZED,
        **_reply(413, "The archive is over max_dataset_mb."),
        **_reply(
            422,
            "A form field is wrong, or the archive is refused: the message names "
            "the member and the problem (unsafe, not images, not a class-per-folder tree).",
        ),
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
            await _receive(request, form)
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


@router.get(
    "", response_model=Page[DatasetPublic], responses={**UNAUTHORIZED, **_reply(422, "Bad query.")}
)
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


@router.get("/{dataset_id}", response_model=DatasetPublic, responses={**UNAUTHORIZED, **NOT_FOUND})
def get_dataset(dataset_id: str, session: SessionDep, owner: OwnerDep) -> DatasetPublic:
    """One dataset: its classes, images per split and the channel counts seen."""
    return DatasetPublic.of(repo.get_dataset(session, dataset_id, owner))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses={
        **UNAUTHORIZED,
        **NOT_FOUND,
        **_reply(409, "A job that has not ended reads the dataset (cancel it first)."),
    },
)
def delete_dataset(
    dataset_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep
) -> Response:
    """Remove a dataset and its images; 409 while a job that has not ended reads it."""
    datasets.delete_dataset(session, settings, repo.get_dataset(session, dataset_id, owner))
    return Response(status_code=204)
