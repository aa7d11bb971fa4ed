"""The built-in datasets (fashion-mnist, digits, synthetic) as uint8 tensors of both splits.

:mod:`workers.nets.data` splits and batches them; this module only finds,
reads or generates the images of the official train and test splits, once
per process (:func:`raw`). The test splits never depend on a job's seed.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from workers.errors import DatasetNotFound

NAMES = ("fashion-mnist", "digits", "synthetic")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Seeds of the data that must not depend on the job seed.
_DIGITS_TEST_SEED = 20240607
_SYNTHETIC_SEED = 12345


@functools.lru_cache(maxsize=2)
def raw(name: str, dirs: tuple[Path, ...] = ()) -> tuple[Tensor, ...]:
    """Decoded images and labels of both official splits, with the train mean/std.

    Cached per process: decoding takes about a second, and a worker's parent
    calls this before forking each task (see ``workers.worker``), so every
    work-horse inherits the decoded arrays instead of decoding them again.
    The tensors are shared: callers index or copy them, never write in place.
    """
    if name == "fashion-mnist":
        train_x, train_y, test_x, test_y = _fashion_mnist(list(dirs))
    elif name == "digits":
        train_x, train_y, test_x, test_y = _digits()
    elif name == "synthetic":
        train_x, train_y, test_x, test_y = _synthetic()
    else:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(NAMES)}")
    mean = train_x.float().div(255.0).mean(dim=(0, 2, 3))
    std = train_x.float().div(255.0).std(dim=(0, 2, 3)).clamp_min(1e-6)
    return train_x, train_y, test_x, test_y, mean, std


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (``.gz`` or not): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetNotFound(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetNotFound(f"{path} is truncated: expected {shape}, got {data.size} bytes")
    return data.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist(dirs: list[Path]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    for folder in dirs:
        paths = {key: _find_idx(folder, stem) for key, stem in FASHION_FILES.items()}
        if all(paths.values()):
            arrays = {key: read_idx(p) for key, p in paths.items() if p is not None}
            return (
                torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
                torch.from_numpy(arrays["train_labels"].astype(np.int64)),
                torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
                torch.from_numpy(arrays["test_labels"].astype(np.int64)),
            )
    tried = ", ".join(str(d) for d in dirs) or "(no folder given)"
    raise DatasetNotFound(
        f"fashion-mnist: the four IDX files ({', '.join(FASHION_FILES.values())}, optionally "
        f".gz) are in none of: {tried}. Install them with `apt-get install "
        "dataset-fashion-mnist` (puts them in /usr/share/datasets/fashion-mnist) or set "
        "PRUNESEARCH_DATA_DIR to a folder that holds them."
    )


def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8x8 digits, upsampled to 28x28, with a fixed stratified 20% test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1)  # 0..16
    large = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    images = (large * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    rng = np.random.default_rng(_DIGITS_TEST_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for cls in range(10):
        members = np.flatnonzero(bunch.target == cls)
        test_mask[rng.permutation(members)[: round(0.2 * len(members))]] = True
    test = torch.from_numpy(test_mask)
    return images[~test], labels[~test], images[test], labels[test]


def _synthetic(
    n_train: int = 1000, n_test: int = 300, classes: int = 10, size: int = 28
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Oriented gratings: class ``k`` is a sinusoid at angle ``k*180/classes`` degrees.

    Orientation survives translation and global pooling, so every zoo network
    (ResNets with global average pooling included) can learn it in an epoch;
    random phase, frequency jitter, contrast and noise keep it from being trivial.
    Always the same images: the generator seed is fixed, not the job's.
    """
    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    n = n_train + n_test
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=gen)]
    angle = labels.float() * (torch.pi / classes)
    freq = 0.55 + 0.15 * torch.rand(n, generator=gen)
    phase = 2 * torch.pi * torch.rand(n, generator=gen)
    contrast = 0.6 + 0.4 * torch.rand(n, generator=gen)
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy
    wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None]) * contrast[:, None, None]
    noise = 0.6 * torch.randn(n, size, size, generator=gen)
    images = ((wave + noise) * 0.5 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    images = images.unsqueeze(1)
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]
