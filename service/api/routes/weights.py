"""``/v1/weights``: upload a network's trained weights (safetensors only) for jobs to start from.

The upload is a multipart form: ``file`` (the safetensors file) and
``arch``, ``in_channels``, ``num_classes``, ``input_size`` (the zoo
architecture and its shape arguments). The body is streamed straight into
the uploads folder, hashing as it goes and stopping at
``Settings.max_upload_mb``, instead of letting the framework spool an
unbounded file to the temp folder first. Then :mod:`service.uploads` checks
it; a refused upload leaves no row and no file. Every route is scoped to the
caller: another owner's upload is a 404, exactly like a missing one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from service import uploads
from service.api.deps import OwnerDep, SessionDep, SettingsDep
from service.api.schemas import Page, as_utc
from service.db import uploads as repo
from service.db.models import Upload
from service.errors import Conflict, UploadTooLarge

router = APIRouter(prefix="/v1/weights", tags=["weights"])

FILE_FIELD = "file"
TEXT_FIELDS = ("arch", "in_channels", "num_classes", "input_size")
MAX_TEXT_BYTES = 1024
FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and the small fields around the file

_FORM_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD, *TEXT_FIELDS],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "A safetensors file of the network's state_dict.",
                        },
                        "arch": {"type": "string", "examples": ["resnet20"]},
                        "in_channels": {"type": "integer", "minimum": 1, "maximum": 1024},
                        "num_classes": {"type": "integer", "minimum": 2, "maximum": 100000},
                        "input_size": {"type": "integer", "minimum": 1, "maximum": 4096},
                    },
                }
            }
        },
    }
}


class UploadPublic(BaseModel):
    id: str
    arch: str
    arch_kwargs: dict[str, int]
    filename: str
    size: int
    sha256: str
    tensors: int
    created_at: datetime

    @classmethod
    def of(cls, row: Upload) -> UploadPublic:
        return cls(
            id=row.id,
            arch=row.arch,
            arch_kwargs=dict(row.arch_kwargs),
            filename=row.filename,
            size=row.size,
            sha256=row.sha256,
            tensors=row.tensors,
            created_at=as_utc(row.created_at) or row.created_at,
        )


def _invalid(loc: str, msg: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the form field."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ["body", loc], "msg": msg, "input": None}]
    )


@dataclass
class _Form:
    """Receives the multipart callbacks: small text fields in memory, the file to disk."""

    sink: BinaryIO
    limit: int
    fields: dict[str, bytearray] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0
    pending: list[bytes] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)
    _headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    _name: bytes = b""
    _value: bytes = b""
    _part: str | None = None  # FILE_FIELD, a text field's name, or None before headers

    def on_part_begin(self) -> None:
        self._headers, self._part = [], None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((self._name.lower(), self._value))
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        disposition = dict(self._headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.filename is not None:
                raise _invalid(FILE_FIELD, "send exactly one file")
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        elif name in TEXT_FIELDS:
            if name in self.fields:
                raise _invalid(name, "given twice")
            self.fields[name] = bytearray()
        else:
            raise _invalid(
                name or "(unnamed)",
                f"unexpected form field; expected {FILE_FIELD}, " + ", ".join(TEXT_FIELDS),
            )
        self._part = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == FILE_FIELD:
            self.size += end - start
            if self.size > self.limit:
                raise UploadTooLarge(FILE_FIELD, self.limit)
            self.pending.append(data[start:end])
        elif self._part is not None:
            buf = self.fields[self._part]
            buf += data[start:end]
            if len(buf) > MAX_TEXT_BYTES:
                raise _invalid(self._part, f"longer than {MAX_TEXT_BYTES} bytes")

    def flush(self) -> None:
        """Write what the last chunk carried of the file (called in a worker thread)."""
        data, self.pending = b"".join(self.pending), []
        if data:
            self.digest.update(data)
            self.sink.write(data)


async def _receive(request: Request, partial: Path, limit: int) -> _Form:
    """Stream the form into ``partial``; the text fields come back in the result."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise _invalid(FILE_FIELD, "send a multipart/form-data body with a file part named file")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise UploadTooLarge(FILE_FIELD, limit)
    with partial.open("wb") as sink:
        form = _Form(sink, limit)
        parser = MultipartParser(
            params[b"boundary"],
            {
                "on_part_begin": form.on_part_begin,
                "on_part_data": form.on_part_data,
                "on_header_field": form.on_header_field,
                "on_header_value": form.on_header_value,
                "on_header_end": form.on_header_end,
                "on_headers_finished": form.on_headers_finished,
            },
        )
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                await run_in_threadpool(form.flush)
            parser.finalize()
        except FormParserError as exc:
            raise _invalid(FILE_FIELD, f"malformed multipart body: {exc}") from exc
    if form.filename is None:
        raise _invalid(FILE_FIELD, "field required: a file part named file")
    return form


@router.post(
    "",
    status_code=201,
    response_model=UploadPublic,
    openapi_extra=_FORM_SCHEMA,
    responses={413: {"description": "The file is over max_upload_mb."}},
)
async def upload_weights(
    request: Request, session: SessionDep, settings: SettingsDep, owner: OwnerDep
) -> UploadPublic:
    """Store a safetensors state_dict after checking it against the architecture."""
    limit = settings.max_upload_mb * 1024 * 1024
    upload_id, partial = uploads.new_partial(settings)
    try:
        form = await _receive(request, partial, limit)
        try:
            args = uploads.UploadArgs.model_validate(
                {k: v.decode("utf-8", "replace") for k, v in form.fields.items()}
            )
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from exc
        row = await run_in_threadpool(
            uploads.save_upload,
            session,
            settings,
            owner=owner,
            upload_id=upload_id,
            partial=partial,
            args=args,
            filename=form.filename or "",
            sha256=form.digest.hexdigest(),
        )
    finally:
        partial.unlink(missing_ok=True)
    return UploadPublic.of(row)


@router.get("", response_model=Page[UploadPublic])
def list_weights(
    session: SessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Page[UploadPublic]:
    """The caller's uploads, newest first."""
    rows = repo.list_uploads(session, owner, limit=limit, offset=offset)
    return Page[UploadPublic](
        items=[UploadPublic.of(r) for r in rows],
        total=repo.count_uploads(session, owner),
        limit=limit,
        offset=offset,
    )


@router.get("/{upload_id}", response_model=UploadPublic)
def get_weights(upload_id: str, session: SessionDep, owner: OwnerDep) -> UploadPublic:
    return UploadPublic.of(repo.get_upload(session, upload_id, owner))


@router.delete("/{upload_id}", status_code=204)
def delete_weights(
    upload_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep
) -> Response:
    """Remove an upload and its file; 409 while a job that has not ended starts from it."""
    row = repo.get_upload(session, upload_id, owner)
    using = repo.jobs_using(session, owner, upload_id)
    if using:
        raise Conflict(f"upload {upload_id!r} is used by unfinished jobs: {', '.join(using)}")
    uploads.delete_upload(session, settings, row)
    return Response(status_code=204)
