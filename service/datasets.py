"""Users' own image datasets: an uploaded archive checked, unpacked and named by jobs.

An archive (:mod:`service.archives` reads it safely) holds a class-per-folder
tree of PNG/JPEG images, ``<class>/<image>`` or ``train/<class>/<image>``
with ``test/`` (or ``val/``) beside it, optionally wrapped in one top folder.
Everything is checked before anything is kept: the layout, as the workers'
reader (:mod:`workers.nets.imagefolder`) needs it (two classes or more, none
empty, train/ with test/ or val/ and the same classes in each; a flat tree
with a class of two images to hold one out), then each image while it is
unpacked (magic bytes, and its dimensions from the header, which PIL reads
without decoding a pixel). The tree is unpacked into a hidden folder and
renamed to ``Settings.dataset_upload_dir(id)`` (the wrapping folder dropped),
so a worker never sees a dataset that was not accepted, and a refusal leaves
no row, no folder and no partial file.

A job names a dataset by ``dataset.upload`` (the caller's upload) or by
``dataset.path`` (a folder under ``PRUNESEARCH_DATA_DIR``);
:func:`dataset_classes` checks either at submission and counts its classes.
"""

from __future__ import annotations

import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image
from sqlalchemy.orm import Session

from core.db import datasets as repo
from core.db.models import Dataset
from core.errors import Conflict, DatasetNotFound, InvalidInput
from core.settings import Settings
from core.spec import JobSpec
from service.archives import ArchiveLimits, Member, archive_kind, is_junk, open_archive, refuse
from service.uploads import clean_filename, copy_hashed

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
ARCHIVE_SUFFIXES = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst"})
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
SPLITS = ("train", "val", "test")
FLAT = "all"  # the images key of a dataset without splits
MAX_PIXELS = 1 << 25  # per image (about 5800 x 5800): more is a decompression bomb here
MAX_CLASSES = 10_000
UNPACKED_FACTOR = 4  # an archive may unpack to this many times max_dataset_mb
MODE_CHANNELS = {"P": 3, "PA": 4}  # palette images are colour; the rest have a band per channel
DATA_DIR_HINT = "PRUNESEARCH_DATA_DIR sets the data directory"


@dataclass(frozen=True)
class Layout:
    """Where each image goes (relative to the dataset folder), the classes, images per split."""

    plan: list[tuple[Member, tuple[str, ...]]]
    classes: list[str]
    images: dict[str, int]


def limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_unpacked_bytes=UNPACKED_FACTOR * (settings.max_dataset_mb << 20),
        max_members=settings.max_dataset_files,
    )


def new_partial(settings: Settings) -> tuple[str, Path]:
    """A fresh dataset id and the hidden file its archive's bytes go to until they are checked."""
    dataset_id = uuid.uuid4().hex
    folder = settings.dataset_upload_dir(dataset_id).parent
    folder.mkdir(parents=True, exist_ok=True)
    return dataset_id, folder / f".{dataset_id}.archive"


def _image_name(member: Member) -> None:
    suffix = PurePosixPath(member.parts[-1]).suffix.lower()
    if suffix in ARCHIVE_SUFFIXES:
        raise refuse(f"{member.name!r}: a nested archive (archives inside are not unpacked)")
    if suffix not in IMAGE_SUFFIXES:
        raise refuse(f"{member.name!r}: not a PNG or JPEG image (only .png, .jpg, .jpeg)")
    if any(p.startswith(".") for p in member.parts):
        raise refuse(f"{member.name!r}: a hidden file or folder")


def plan_layout(files: list[Member], dirs: list[tuple[str, ...]]) -> Layout:
    """The dataset an archive's member list describes; junk (``__MACOSX``, ...) is left out.

    Raises:
        ArchiveRefused: Not a class-per-folder tree of images, naming what is wrong.
    """
    files = [m for m in files if not is_junk(m.parts)]
    dirs = [d for d in dirs if d and not is_junk(d)]
    if not files:
        raise refuse("the archive holds no images (an empty archive?)")
    for member in files:
        _image_name(member)
    tops = {p[0] for p in [m.parts for m in files] + dirs}
    wrapped = len(tops) == 1 and not tops & set(SPLITS) and any(len(m.parts) > 2 for m in files)
    plan = [(m, m.parts[int(wrapped) :]) for m in files]
    inner = [d[int(wrapped) :] for d in dirs if len(d) > int(wrapped)]
    splits = any(parts[0] in SPLITS for _, parts in plan)
    depth = 3 if splits else 2
    counts: dict[str, dict[str, int]] = {}
    for member, parts in plan:
        if splits and parts[0] not in SPLITS:
            raise refuse(f"{member.name!r}: outside the train/ and test/ (or val/) folders")
        if len(parts) < depth:
            raise refuse(f"{member.name!r}: not inside a class folder")
        if len(parts) > depth:
            raise refuse(f"{member.name!r}: images go directly in a class folder")
        split, label = (parts[0], parts[1]) if splits else (FLAT, parts[0])
        counts.setdefault(split, {})
        counts[split][label] = counts[split].get(label, 0) + 1
    for d in inner:  # class folders without an image
        if splits and len(d) == 2 and d[0] in SPLITS:
            counts.setdefault(d[0], {}).setdefault(d[1], 0)
        elif not splits and len(d) == 1:
            counts.setdefault(FLAT, {}).setdefault(d[0], 0)
    if splits and ("train" not in counts or counts.keys() == {"train"}):
        raise refuse("give train/ and test/ (or val/) side by side, or only class folders")
    empty = [
        f"{s}/{c}" if splits else c for s, cs in counts.items() for c, n in cs.items() if not n
    ]
    if empty:
        raise refuse(f"class folder {empty[0]!r} holds no images")
    classes = sorted(counts["train" if splits else FLAT])
    if len(classes) < 2:
        raise refuse(f"needs at least two class folders, found {len(classes)}: {classes}")
    if len(classes) > MAX_CLASSES:
        raise refuse(f"{len(classes)} classes, over the limit of {MAX_CLASSES}")
    for split, found in counts.items():
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        if missing or extra:
            raise refuse(
                f"{split} classes differ from train classes: missing {missing}, extra {extra}"
            )
    if not splits and max(counts[FLAT].values()) < 2:  # the workers hold 20% of each out
        raise refuse("too few images for a test split: give one class 2 images at least")
    return Layout(plan, classes, {s: sum(cs.values()) for s, cs in sorted(counts.items())})


def image_channels(path: Path, member: Member) -> int:
    """Channels of the image at ``path``, checked by its bytes and its header only.

    Raises:
        ArchiveRefused: Not a PNG or JPEG by its magic bytes, over :data:`MAX_PIXELS`,
            or a header (or PNG chunk) that does not read.
    """
    name = member.name
    with path.open("rb") as f:
        head = f.read(512)
        if not head.startswith(IMAGE_MAGIC):
            kind = archive_kind(head)
            what = f"a nested {kind} archive" if kind else "not a PNG or JPEG image"
            raise refuse(f"{name!r}: its bytes are {what}")
        f.seek(0)
        try:
            with Image.open(f, formats=("PNG", "JPEG")) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise refuse(
                        f"{name!r}: {width}x{height} pixels, over the limit of {MAX_PIXELS} "
                        "(a decompression bomb?)"
                    )
                channels = MODE_CHANNELS.get(image.mode, len(image.getbands()))
                image.verify()  # PNG: every chunk's CRC, without inflating the pixels
        except Image.DecompressionBombError as exc:
            raise refuse(
                f"{name!r}: too many pixels, over the limit of {MAX_PIXELS} (a decompression bomb?)"
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise refuse(f"{name!r}: a corrupt image ({exc})") from exc
    return channels


def save_dataset(
    session: Session,
    settings: Settings,
    *,
    owner: str,
    dataset_id: str,
    partial: Path,
    filename: str,
    name: str | None,
    sha256: str,
) -> Dataset:
    """Check the archive in ``partial``, unpack it to its final folder and record the dataset.

    Whatever goes wrong, ``partial`` and every scratch file are gone afterwards
    and no row or folder is left: the folder is renamed into place only after
    every check, and a failed insert removes it again.
    """
    final = settings.dataset_upload_dir(dataset_id)
    work, scratch = (
        final.with_name(f".{dataset_id}.unpacking"),
        final.with_name(f".{dataset_id}.tar"),
    )
    try:
        archive_size = partial.stat().st_size
        with open_archive(partial, limits(settings), scratch) as archive:
            layout = plan_layout(archive.files, archive.dirs)
            channels = archive.extract(layout.plan, work, image_channels)
        work.rename(final)
        try:
            return repo.create_dataset(
                session,
                dataset_id=dataset_id,
                owner=owner,
                name=(name or "").strip()[:100]
                or PurePosixPath(clean_filename(filename, "dataset.zip")).stem,
                filename=clean_filename(filename, "dataset.zip"),
                classes=layout.classes,
                images=layout.images,
                channels=sorted(set(channels)),
                size=sum(m.size for m, _ in layout.plan),
                archive_size=archive_size,
                sha256=sha256,
            )
        except BaseException:
            session.rollback()
            shutil.rmtree(final, ignore_errors=True)
            raise
    finally:
        partial.unlink(missing_ok=True)
        scratch.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def add_dataset(
    session: Session, settings: Settings, *, owner: str, source: Path, name: str | None = None
) -> Dataset:
    """Add a local archive (the CLI's and the local mode's way in): the same checks as the API."""
    dataset_id, partial = new_partial(settings)
    sha256 = copy_hashed(source, partial)
    return save_dataset(
        session, settings, owner=owner, dataset_id=dataset_id, partial=partial,
        filename=source.name, name=name, sha256=sha256,
    )  # fmt: skip


def delete_dataset(session: Session, settings: Settings, dataset: Dataset) -> None:
    """Remove the row, then the folder; refused while a job that has not ended reads it.

    Raises:
        Conflict: Naming the unfinished jobs that use the dataset.
    """
    using = repo.jobs_using(session, dataset.owner, dataset.id)
    if using:
        raise Conflict(f"dataset {dataset.id!r} is used by unfinished jobs: {', '.join(using)}")
    repo.delete_dataset(session, dataset.id)
    shutil.rmtree(settings.dataset_upload_dir(dataset.id), ignore_errors=True)


def folder_classes(settings: Settings, path: str) -> list[str]:
    """The class folders of ``dataset.path`` (``<class>/`` or ``train/<class>/``) in the data dir.

    Raises:
        InvalidInput: On ``dataset.path``: no data directory, no such folder, a
            symbolic link out of the data directory, or fewer than two classes.
    """
    if settings.data_dir is None:
        raise InvalidInput(
            "dataset.path", f"no data directory is set for {path!r}: {DATA_DIR_HINT}"
        )
    try:
        root = settings.data_dir.resolve()
        folder = (root / path).resolve()
        if not folder.is_relative_to(root):
            raise InvalidInput("dataset.path", f"{path!r} leads out of the data directory {root}")
        if not folder.is_dir():
            raise InvalidInput(
                "dataset.path", f"no folder {path!r} in the data directory {root}: {DATA_DIR_HINT}"
            )
        base = folder / "train" if (folder / "train").is_dir() else folder
        with os.scandir(base) as entries:
            found = [e for e in entries if not e.name.startswith(".") and e.is_dir()]
        outside = [e.name for e in found if not Path(e.path).resolve().is_relative_to(root)]
    except (OSError, RuntimeError) as exc:  # unreadable, or a symbolic link loop
        raise InvalidInput("dataset.path", f"cannot read {path!r}: {exc}") from exc
    if outside:
        raise InvalidInput("dataset.path", f"{outside[0]!r} in {path!r} leads out of {root}")
    classes = sorted(e.name for e in found)
    if len(classes) < 2:
        raise InvalidInput(
            "dataset.path",
            f"{path!r} needs at least two class folders (<class>/<image> or "
            f"train/<class>/<image>), found {len(classes)}",
        )
    return classes


def dataset_classes(session: Session, owner: str, spec: JobSpec, settings: Settings) -> int | None:
    """The class count of the job's dataset (None for the built-in sets), checking it exists.

    ``dataset.upload`` must be the caller's dataset; ``dataset.path`` a folder
    of at least two class folders under the data directory.

    Raises:
        InvalidInput: On ``dataset.upload`` or ``dataset.path``.
    """
    dataset = spec.dataset
    if dataset.name != "imagefolder":
        return None
    if dataset.upload is not None:
        try:
            row = repo.get_dataset(session, dataset.upload, owner)
        except DatasetNotFound as exc:
            raise InvalidInput(
                "dataset.upload", f"no dataset {dataset.upload!r} (POST /v1/datasets first)"
            ) from exc
        return len(row.classes)
    if dataset.path is None:  # the spec's own validator already refuses this
        raise InvalidInput("dataset", "imagefolder needs exactly one of path and upload")
    return len(folder_classes(settings, dataset.path))
