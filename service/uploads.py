"""Users' own weights: check an uploaded safetensors file, store it, let jobs start from it.

An upload is checked completely before anything is kept: the file must be a
well-formed safetensors file (:mod:`service.safetensors_header`), and its
tensors must be exactly the state_dict of the named architecture at the
given shape arguments: same names, same shapes, floating where the network
has floats. The API process never imports torch, so that expected
state_dict comes from ``python -m workers.nets.signature`` in a subprocess,
cached per architecture and arguments for the life of the process.

Files live under ``<artifacts>/uploads/<id>.safetensors``: written to a
hidden partial file in that folder, checked, then renamed, so a worker never
sees a file that was not accepted and a rejected upload leaves nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from sqlalchemy.orm import Session

from core.db import uploads as repo
from core.db.models import Upload
from core.errors import InvalidInput, UploadNotFound
from core.settings import Settings
from core.spec import ARCHS, JobSpec, check_architecture
from service.safetensors_header import FLOATING, INTEGER, HeaderError, TensorInfo, read_header

SIGNATURE_TIMEOUT_S = 120.0
MAX_LISTED = 5  # differences quoted in a refusal; the rest are counted
ZOO_MIN_INPUT_SIZE = 28  # workers.nets.zoo.MIN_INPUT_SIZE (a test keeps the two equal)
_ROOT = Path(__file__).resolve().parents[1]  # holds the service and workers packages


class UploadArgs(BaseModel):
    """The architecture an upload is for, with the shape arguments of ``zoo.build``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = Field(min_length=1, max_length=200)
    in_channels: int = Field(ge=1, le=1024)
    num_classes: int = Field(ge=2, le=100_000)
    input_size: int = Field(ge=1, le=4096, description="Side of the square input images.")

    @field_validator("arch")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_architecture(value)

    @field_validator("input_size")
    @classmethod
    def _zoo_minimum(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("arch") in ARCHS and value < ZOO_MIN_INPUT_SIZE:
            raise ValueError(f"the zoo's networks need input_size >= {ZOO_MIN_INPUT_SIZE}")
        return value

    @property
    def kwargs(self) -> dict[str, int]:
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
        }


def new_partial(settings: Settings) -> tuple[str, Path]:
    """A fresh upload id and the hidden file its bytes go to until they are checked."""
    upload_id = uuid.uuid4().hex
    return upload_id, settings.uploads_dir() / f".{upload_id}.partial"


def clean_filename(name: str | None, default: str = "weights.safetensors") -> str:
    """The client's file name, kept for display only: no folders, no NUL, at most 255 characters."""
    base = PurePosixPath((name or "").replace("\\", "/").replace("\x00", "")).name.strip()
    return base[:255] or default


def copy_hashed(source: Path, partial: Path) -> str:
    """Copy a local file to an upload's partial file; its SHA-256 (nothing is left on failure)."""
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, partial.open("xb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def expected_tensors(
    arch: str, in_channels: int, num_classes: int, input_size: int
) -> Mapping[str, TensorInfo]:
    """The state_dict of ``arch`` at these arguments, from ``python -m workers.nets.signature``.

    Successes are cached (a failure is not, so a timeout can be retried).

    Raises:
        InvalidInput: On ``arch`` when the subprocess does not know it, cannot
            build it at these arguments, fails or times out.
    """
    cmd = [sys.executable, "-m", "workers.nets.signature", arch]
    cmd += ["--in-channels", str(in_channels), "--num-classes", str(num_classes)]
    cmd += ["--input-size", str(input_size)]
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), path) if p)}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=SIGNATURE_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidInput(
            "arch", f"building {arch} to read its state_dict took over {SIGNATURE_TIMEOUT_S:.0f} s"
        ) from exc
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        out = None
    if not isinstance(out, dict) or (done.returncode != 0 and "error" not in out):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InvalidInput("arch", f"cannot build {arch} to read its state_dict: {tail}")
    if "error" in out:  # unknown name, or shape arguments the builder refuses
        raise InvalidInput("arch", str(out["message"]))
    tensors = {
        str(name): TensorInfo(str(t["dtype"]), tuple(int(d) for d in t["shape"]))
        for name, t in out["tensors"].items()
    }
    return MappingProxyType(tensors)


def differences(found: Mapping[str, TensorInfo], expected: Mapping[str, TensorInfo]) -> list[str]:
    """Why ``found`` cannot be loaded strictly into a network with ``expected``, in order."""
    diffs = [f"missing {name}" for name in expected if name not in found]
    diffs += [f"unexpected {name}" for name in found if name not in expected]
    for name, want in expected.items():
        got = found.get(name)
        if got is None:
            continue
        if got.shape != want.shape:
            diffs.append(f"{name} has shape {list(got.shape)}, expected {list(want.shape)}")
        elif want.dtype in FLOATING and got.dtype not in FLOATING:
            diffs.append(f"{name} is {got.dtype}, expected a floating dtype")
        elif want.dtype in INTEGER and got.dtype not in INTEGER:
            diffs.append(f"{name} is {got.dtype}, expected an integer dtype")
    return diffs


def check_file(path: Path, args: UploadArgs) -> int:
    """Check an uploaded file against ``args``; return its number of tensors.

    Raises:
        InvalidInput: On ``file`` for a malformed file or one that does not fit
            the architecture (listing the first differences); on ``arch`` as
            :func:`expected_tensors`.
    """
    try:
        found = read_header(path)
    except HeaderError as exc:
        raise InvalidInput("file", f"not a valid safetensors file: {exc}") from exc
    expected = expected_tensors(args.arch, args.in_channels, args.num_classes, args.input_size)
    diffs = differences(found, expected)
    if diffs:
        shown = "; ".join(diffs[:MAX_LISTED])
        more = f"; and {len(diffs) - MAX_LISTED} more" if len(diffs) > MAX_LISTED else ""
        call = ", ".join(f"{k}={v}" for k, v in args.kwargs.items())
        raise InvalidInput(
            "file",
            f"does not fit {args.arch}({call}): {len(diffs)} difference(s): {shown}{more}",
        )
    return len(found)


def save_upload(
    session: Session,
    settings: Settings,
    *,
    owner: str,
    upload_id: str,
    partial: Path,
    args: UploadArgs,
    filename: str,
    sha256: str,
) -> Upload:
    """Check the bytes in ``partial``, move them to their final name and record the upload.

    Whatever goes wrong, ``partial`` is gone afterwards and no row or file is
    left: checking happens before the rename, and a failed insert removes the
    renamed file again.
    """
    final = settings.weights_path(upload_id)
    try:
        size = partial.stat().st_size
        tensors = check_file(partial, args)
        partial.replace(final)
        try:
            return repo.create_upload(
                session,
                upload_id=upload_id,
                owner=owner,
                arch=args.arch,
                arch_kwargs=args.kwargs,
                filename=clean_filename(filename),
                size=size,
                sha256=sha256,
                tensors=tensors,
            )
        except BaseException:
            session.rollback()
            final.unlink(missing_ok=True)
            raise
    finally:
        partial.unlink(missing_ok=True)


def add_upload(
    session: Session,
    settings: Settings,
    *,
    owner: str,
    source: Path,
    arch: str,
    in_channels: int,
    num_classes: int,
    input_size: int,
) -> Upload:
    """Upload a local file (the CLI's and the local mode's way in): same checks as the API.

    Raises:
        InvalidInput: On the field that is wrong, as the API would reply.
    """
    try:
        args = UploadArgs(
            arch=arch, in_channels=in_channels, num_classes=num_classes, input_size=input_size
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(str(first["loc"][0]), first["msg"]) from exc
    upload_id, partial = new_partial(settings)
    sha256 = copy_hashed(source, partial)
    return save_upload(
        session,
        settings,
        owner=owner,
        upload_id=upload_id,
        partial=partial,
        args=args,
        filename=source.name,
        sha256=sha256,
    )


def delete_upload(session: Session, settings: Settings, upload: Upload) -> None:
    """Remove the row, then the file (an orphaned file is harmless; a row without one is not)."""
    repo.delete_upload(session, upload.id)
    settings.weights_path(upload.id).unlink(missing_ok=True)


def check_job_weights(session: Session, owner: str, spec: JobSpec) -> None:
    """Refuse a spec whose ``model.weights`` is not the caller's upload of the spec's arch.

    The shape arguments depend on the dataset, which only the worker loads;
    it checks them when it loads the weights (strictly), and fails the job
    with a readable reason when they do not fit.

    Raises:
        InvalidInput: On ``model.weights``.
    """
    upload_id = spec.model.weights
    if upload_id is None:
        return
    try:
        upload = repo.get_upload(session, upload_id, owner)
    except UploadNotFound as exc:
        raise InvalidInput(
            "model.weights", f"no upload {upload_id!r} (POST /v1/weights first)"
        ) from exc
    if upload.arch != spec.model.arch:
        raise InvalidInput(
            "model.weights",
            f"upload {upload_id!r} holds {upload.arch} weights, not {spec.model.arch}",
        )
