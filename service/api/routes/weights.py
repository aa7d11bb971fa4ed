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

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from core.db import uploads as repo
from core.db.models import Upload
from core.errors import Conflict, UploadTooLarge
from service import uploads
from service.api.deps import OwnerDep, SessionDep, SettingsDep
from service.api.multipart import FILE, StreamedForm, invalid, receive
from service.api.responses import raises
from service.api.schemas import Page, as_utc

router = APIRouter(prefix="/v1/weights", tags=["weights"])

TEXT_FIELDS = ("arch", "in_channels", "num_classes", "input_size")
MAX_TEXT_BYTES = 1024

_FORM_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE, *TEXT_FIELDS],
                    "properties": {
                        FILE: {
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


class _Form(StreamedForm):
    """The weights form: one file and each shape field once; anything else is refused at once."""

    def accept(self, name: str) -> bool:
        if name == FILE:
            if self.filename is not None:
                raise invalid(FILE, "send exactly one file")
        elif name in TEXT_FIELDS:
            if name in self.fields:
                raise invalid(name, "given twice")
        else:
            raise invalid(
                name or "(unnamed)",
                f"unexpected form field; expected {FILE}, " + ", ".join(TEXT_FIELDS),
            )
        return True

    def text_overflow(self, name: str) -> None:
        raise invalid(name, f"longer than {MAX_TEXT_BYTES} bytes")


@router.post(
    "",
    status_code=201,
    response_model=UploadPublic,
    openapi_extra=_FORM_SCHEMA,
    responses=raises(UploadTooLarge),
)
async def upload_weights(
    request: Request, session: SessionDep, settings: SettingsDep, owner: OwnerDep
) -> UploadPublic:
    """Store a safetensors state_dict after checking it against the architecture."""
    limit = settings.max_upload_mb * 1024 * 1024
    upload_id, partial = uploads.new_partial(settings)
    try:
        with partial.open("wb") as sink:
            form = _Form(sink, limit, UploadTooLarge, MAX_TEXT_BYTES)
            await receive(request, form)
        if form.filename is None:
            raise invalid(FILE, "field required: a file part named file")
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


@router.delete("/{upload_id}", status_code=204, responses=raises(Conflict))
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
