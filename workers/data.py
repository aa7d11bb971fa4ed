"""Datasets held in memory as uint8 tensors on the target device.

The datasets of this project are small (at most 70,000 images of 28x28), so
the whole split lives on the device as ``uint8 [N, C, H, W]`` and batches are
cut by index: no DataLoader workers to fork, no per-sample Python, and the
same code on CPU and CUDA. Conversion to normalised float and the light
augmentation happen per batch on the device.

Randomness: the train/val split and the subset depend only on the job seed;
the test split never does (it is the official one, or a fixed one for
``digits``), so final numbers of different jobs are comparable. Every random
choice per batch is drawn from a caller's ``torch.Generator`` on the CPU, so
a run is reproducible whatever the device.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from workers.errors import DatasetNotFound

NAMES = ("fashion-mnist", "digits", "synthetic")
SHIFT = 2
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Seeds of the data that must not depend on the job seed.
_DIGITS_TEST_SEED = 20240607
_SYNTHETIC_SEED = 12345


@dataclass(frozen=True, eq=False)
class Split:
    """One split: uint8 images and int64 labels on the device, plus how to batch them.

    Attributes:
        images: ``uint8 [N, C, H, W]``.
        labels: ``int64 [N]``.
        mean: Per-channel mean of the dataset in ``[0, 1]`` units, ``float [C]``.
        std: Per-channel standard deviation, ``float [C]``.
        hflip: Whether a horizontal flip preserves the label (not for digits).
    """

    images: Tensor
    labels: Tensor
    mean: Tensor
    std: Tensor
    hflip: bool = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 images to the float input the networks expect."""
        x = images.float().div_(255.0)
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        augment: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: normalised float images and labels on the device.

        Args:
            batch_size: Images per batch; the last batch may be smaller.
            shuffle: Visit the images in a random order drawn from ``generator``.
            generator: CPU generator for the order and the augmentation; ``None``
                uses torch's global one (not reproducible).
            augment: Random shift by up to 2 px (zero padding + crop) and, where
                it preserves the label, a random horizontal flip per image.
            limit: Stop after this many batches.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.device)
        for count, start in enumerate(range(0, n, batch_size)):
            if limit is not None and count >= limit:
                return
            idx = order[start : start + batch_size]
            images = self.images.index_select(0, idx)
            if augment:
                images = _augment(images, generator, hflip=self.hflip)
            yield self.normalise(images), self.labels.index_select(0, idx)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """The three splits of a job's dataset and what a network needs to know of it."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load(
    name: str,
    *,
    dirs: Sequence[Path] = (),
    seed: int,
    val_fraction: float,
    subset: int | None = None,
    device: str | torch.device = "cpu",
) -> DataSplits:
    """Load a dataset and split it for a job.

    Args:
        name: ``fashion-mnist``, ``digits`` or ``synthetic``.
        dirs: Folders to search, in order, for file-based datasets
            (``Settings.dataset_dirs`` gives the configured ones).
        seed: Decides which training images go to validation and the subset.
        val_fraction: Part of the official training split held out for
            validation (scoring candidates), in ``[0, 1)``.
        subset: Keep at most this many training images (after the val carve-out).
        device: Where the tensors live.

    Raises:
        DatasetNotFound: The dataset's files are in none of ``dirs``.
        ValueError: Unknown name or out-of-range fraction/subset.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be positive, got {subset}")
    train_x, train_y, test_x, test_y, mean, std = raw(name, tuple(dirs))
    hflip = name == "fashion-mnist"
    num_classes = int(max(train_y.max(), test_y.max())) + 1

    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * len(train_y))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if subset is not None:
        train_idx = train_idx[:subset]

    dev = torch.device(device)
    mean_d, std_d = mean.to(dev), std.to(dev)

    def split(images: Tensor, labels: Tensor) -> Split:
        return Split(images.contiguous().to(dev), labels.long().to(dev), mean_d, std_d, hflip)

    return DataSplits(
        train=split(train_x[train_idx], train_y[train_idx]),
        val=split(train_x[val_idx], train_y[val_idx]),
        test=split(test_x, test_y),
        num_classes=num_classes,
        in_channels=int(train_x.shape[1]),
        size=int(train_x.shape[2]),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


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


def _augment(images: Tensor, generator: torch.Generator | None, *, hflip: bool) -> Tensor:
    """Random shift (pad + crop, per image) and optional horizontal flip, on the device."""
    b, _, h, w = images.shape
    padded = F.pad(images, (SHIFT, SHIFT, SHIFT, SHIFT))
    dy = torch.randint(0, 2 * SHIFT + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * SHIFT + 1, (b,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


def _read_idx(path: Path) -> np.ndarray:
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
            arrays = {key: _read_idx(p) for key, p in paths.items() if p is not None}
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
