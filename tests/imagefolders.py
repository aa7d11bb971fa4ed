"""Real image folders for tests: class folders of 32x32 RGB PNGs, written from real datasets.

Small and fast on purpose (a few hundred images per call by default), so
integration tests can build one per test under ``tmp_path``. Labels follow
the sorted folder names, as ``workers.nets.imagefolder`` reads them: folders are
named so that sorting keeps the original label order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from workers.nets import data

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "tshirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "boot",
)  # fmt: skip
SIZE = 32


def write_fashion_mnist(root: Path, *, per_class: int = 20, split_layout: bool = False) -> Path:
    """Fashion-MNIST images (Debian's IDX files) as ``root/<k>_<name>/<i>.png``.

    ``per_class`` training images per class come from the official training
    file; with ``split_layout`` they go to ``root/train/...`` and
    ``max(2, per_class // 4)`` per class from the official test file to
    ``root/test/...``. Returns ``root``.
    """
    train_x, train_y, test_x, test_y = _fashion()
    if not split_layout:
        _write(root, train_x, train_y, per_class, _fashion_folder)
        return root
    _write(root / "train", train_x, train_y, per_class, _fashion_folder)
    _write(root / "test", test_x, test_y, max(2, per_class // 4), _fashion_folder)
    return root


def write_digits(root: Path, *, per_class: int = 20, split_layout: bool = False) -> Path:
    """scikit-learn's 8x8 digits, upsampled, as ``root/<digit>/<i>.png``; returns ``root``.

    With ``split_layout`` the first ``per_class`` of each digit go to
    ``root/train/`` and the next ``max(2, per_class // 4)`` to ``root/test/``.
    """
    images, labels = _digits()
    if not split_layout:
        _write(root, images, labels, per_class, str)
        return root
    _write(root / "train", images, labels, per_class, str)
    rest = _skip_per_class(labels, per_class)
    _write(root / "test", images[rest], labels[rest], max(2, per_class // 4), str)
    return root


def write_odd_images(root: Path, *, per_class: int = 3) -> Path:
    """Two classes ("bright", "dark") of awkward files: every size, mode and format at once.

    Each class holds ``per_class`` of each: grey PNG 40x24, RGB JPEG 50x70,
    RGBA PNG 33x33 (half transparent), palette PNG 64x16, 16-bit grey PNG 20x20,
    in nested sub-folders too. Returns ``root``.
    """
    for cls, level in (("bright", 220), ("dark", 40)):
        for i in range(per_class):
            base = root / cls
            nested = base / "more" / "deeper"
            nested.mkdir(parents=True, exist_ok=True)
            value = level + 5 * i
            Image.new("L", (40, 24), value).save(base / f"grey_{i}.png")
            Image.new("RGB", (50, 70), (value, value // 2, 255 - value)).save(base / f"rgb_{i}.jpg")
            rgba = np.full((33, 33, 4), value, dtype=np.uint8)
            rgba[:, :16, 3] = 0
            Image.fromarray(rgba, "RGBA").save(base / f"rgba_{i}.png")
            Image.new("RGB", (64, 16), (value, value, value)).convert("P").save(
                nested / f"palette_{i}.png"
            )
            deep = np.full((20, 20), value * 257, dtype=np.uint16)
            Image.fromarray(deep).save(nested / f"grey16_{i}.png")
    return root


def _fashion_folder(label: int) -> str:
    return f"{label}_{FASHION_CLASSES[label]}"


@functools.lru_cache(maxsize=1)
def _fashion() -> tuple[np.ndarray, ...]:
    names = data.FASHION_FILES
    return tuple(data.read_idx(FASHION_DIR / f"{names[key]}.gz") for key in names)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images * (255.0 / 16.0)).round().astype(np.uint8), bunch.target.astype(np.int64)


def _skip_per_class(labels: np.ndarray, skip: int) -> np.ndarray:
    """Indices of each class's images after its first ``skip``."""
    return np.concatenate([np.flatnonzero(labels == k)[skip:] for k in np.unique(labels)])


def _write(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    per_class: int,
    name: Callable[[int], str],
) -> None:
    """The first ``per_class`` grey images of each label as 32x32 RGB PNGs."""
    for k in np.unique(labels):
        target = folder / name(int(k))
        target.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(labels == k)[:per_class]):
            grey = Image.fromarray(images[index])
            grey.resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB").save(
                target / f"{i:04d}.png"
            )
