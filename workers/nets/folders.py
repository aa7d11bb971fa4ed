"""The listing of a user's image folder: its classes, its images, and a fixed test split.

Two layouts are read, each also inside one wrapping folder (as archives
often hold them)::

    root/<class>/...png                           a fixed 20% per class is the test split
    root/train/<class>/...  root/test/<class>/... (or val/ as the test split)

Classes are the sorted folder names and the test split never depends on the
job seed. Only paths and labels are read here (:func:`scan`), no pixels;
:mod:`workers.nets.imagefolder` decodes and splits them for a job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.errors import DatasetInvalid, DatasetNotFound

SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_FOLDERS = ("test", "val")  # the first one present is the test split
TEST_FRACTION = 0.2
_TEST_SEED = 20240612  # the flat layout's test split must not depend on the job seed
_IGNORED = ("__MACOSX",)  # besides hidden names: what macOS puts into zip archives

Item = tuple[str, int]  # (image file, label)


@dataclass(frozen=True)
class Listing:
    """The images of a folder tree, in a fixed order (by class, then path).

    Attributes:
        root: The folder holding the class folders, or train/ and test/.
        classes: Class names in label order.
        train: ``(file, label)`` of the training images.
        test: ``(file, label)`` of the test images.
        stamp: Changes with any file's size or modification time, so a
            cached decode of an edited folder is not reused.
    """

    root: Path
    classes: tuple[str, ...]
    train: tuple[Item, ...]
    test: tuple[Item, ...]
    stamp: int


def scan(root: Path) -> Listing:
    """The classes and images under ``root``, in either layout of the module docstring.

    Raises:
        DatasetNotFound: ``root`` is not a folder.
        DatasetInvalid: Fewer than 2 classes, a class without images, test
            classes that differ from the training ones, train/ without test/
            or val/, or no class with the 2 images a fixed test split needs.
    """
    if not root.is_dir():
        raise DatasetNotFound(f"imagefolder: {root} is not a folder")
    root = _unwrapped(root)
    folders = _subfolders(root)
    if "train" in folders:
        test_name = next((name for name in TEST_FOLDERS if name in folders), None)
        if test_name is None:
            raise DatasetInvalid(
                f"{root} has train/ but neither test/ nor val/ beside it: add the test split, "
                "or put the class folders themselves in the dataset folder"
            )
        classes = _classes(root / "train")
        test_classes = tuple(_subfolders(root / test_name))
        if test_classes != classes:
            raise DatasetInvalid(
                f"{root}: the classes of {test_name}/ differ from those of train/ (only in "
                f"train/: {sorted(set(classes) - set(test_classes))}; only in {test_name}/: "
                f"{sorted(set(test_classes) - set(classes))})"
            )
        train, train_stamp = _files(root / "train", classes)
        test, test_stamp = _files(root / test_name, classes)
        stamp = hash((train_stamp, test_stamp))
    else:
        classes = _classes(root)
        found, stamp = _files(root, classes)
        train, test = _fixed_split(found, len(classes))
        if not test:
            raise DatasetInvalid(f"{root}: too few images for a test split (2 per class at least)")
    return Listing(root, classes, tuple(train), tuple(test), stamp)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _IGNORED


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _visible(p.name))


def _unwrapped(root: Path) -> Path:
    """``root``'s only entry when that is a folder of folders (an archive's top folder)."""
    entries = [p for p in root.iterdir() if _visible(p.name)]
    if len(entries) == 1 and entries[0].is_dir() and _subfolders(entries[0]):
        return entries[0]
    return root


def _classes(folder: Path) -> tuple[str, ...]:
    classes = tuple(_subfolders(folder))
    if len(classes) < 2:
        raise DatasetInvalid(
            f"{folder}: {len(classes)} class folder(s) {list(classes)}; an image folder needs "
            f"at least 2, one per class (e.g. {folder}/cat/1.png, {folder}/dog/1.png)"
        )
    return classes


def _files(folder: Path, classes: Sequence[str]) -> tuple[list[Item], int]:
    """Every image of each class folder (sub-folders included), with the folder's stamp."""
    items: list[Item] = []
    stamps: list[tuple[int, int]] = []
    for label, name in enumerate(classes):
        found = []
        for parent, dirs, files in os.walk(folder / name):
            dirs[:] = sorted(d for d in dirs if _visible(d))
            found += [
                os.path.join(parent, f)
                for f in sorted(files)
                if _visible(f) and f.lower().endswith(SUFFIXES)
            ]
        if not found:
            raise DatasetInvalid(
                f"{folder / name}: class {name!r} has no images ({', '.join(SUFFIXES)})"
            )
        stamps += [(st.st_size, st.st_mtime_ns) for st in map(os.stat, found)]
        items += [(path, label) for path in found]
    return items, hash(tuple(stamps))


def _fixed_split(items: Sequence[Item], num_classes: int) -> tuple[list[Item], list[Item]]:
    """A stratified ``TEST_FRACTION`` of each class (at least one) as the test split."""
    rng = np.random.default_rng(_TEST_SEED)
    labels = np.array([label for _, label in items])
    test = np.zeros(len(items), dtype=bool)
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        count = max(1, round(TEST_FRACTION * len(members))) if len(members) > 1 else 0
        test[rng.permutation(members)[:count]] = True
    train = [item for item, held in zip(items, test, strict=True) if not held]
    return train, [item for item, held in zip(items, test, strict=True) if held]
