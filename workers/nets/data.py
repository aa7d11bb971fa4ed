"""Datasets as splits that yield normalised batches on the device.

The built-in datasets are small (at most 70,000 images of 28x28), so the
whole split lives on the device as ``uint8 [N, C, H, W]`` (:class:`MemorySplit`)
and batches are cut by index: no DataLoader workers to fork, no per-sample
Python, and the same code on CPU and CUDA. Resizing, grey-to-RGB,
augmentation and the conversion to normalised float happen per batch on the
device, so a larger input size costs no memory. Users' image folders
(:mod:`workers.nets.imagefolder`) stream from disk instead when they are large;
both kinds satisfy the :class:`Split` protocol that training calls.

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
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from workers.errors import DatasetNotFound

NAMES = ("fashion-mnist", "digits", "synthetic")
AUGMENTS = ("default", "none", "shift", "crop_flip")
NATIVE_SIZE = 28  # of every built-in dataset, with one channel
SHIFT = 2
DEFAULT_CACHE_MB = 1024.0
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Seeds of the data that must not depend on the job seed.
_DIGITS_TEST_SEED = 20240607
_SYNTHETIC_SEED = 12345


class Split(Protocol):
    """What training and evaluation use of a split, whether in memory or streamed.

    Both :class:`MemorySplit` and ``workers.nets.imagefolder.StreamSplit`` satisfy
    it, so callers (``workers.nets.train``) are type-checked against either.
    """

    def __len__(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        augment: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: normalised float images and int64 labels on the device.

        Args:
            batch_size: Images per batch; the last batch may be smaller.
            shuffle: Visit the images in a random order drawn from ``generator``.
            generator: CPU generator for the order and the augmentation; ``None``
                uses torch's global one (not reproducible).
            augment: Apply the split's augmentation (the dataset's ``augment``).
            limit: Stop after this many batches.
        """
        ...


@dataclass(frozen=True, eq=False)
class MemorySplit:
    """One split held whole: uint8 images and int64 labels on the device.

    Attributes:
        images: ``uint8 [N, C, H, W]`` as stored (a built-in set: 28x28 grey).
        labels: ``int64 [N]``.
        mean: Per-channel mean of the dataset in ``[0, 1]`` units, ``float [C]``.
        std: Per-channel standard deviation, ``float [C]``.
        hflip: Whether the augmentation flips (where a flip preserves the label).
        pad: Zero padding of the augmentation's random crop: ``SHIFT`` for
            "shift", ``size // 8`` for "crop_flip", 0 for none.
        size: Side the batches are resized to; ``None``: as stored.
        channels: Channels of the batches (grey repeated to 3); ``None``: as stored.
    """

    images: Tensor
    labels: Tensor
    mean: Tensor
    std: Tensor
    hflip: bool = False
    pad: int = SHIFT
    size: int | None = None
    channels: int | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        augment: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """See :meth:`Split.batches`; resized, augmented and normalised per batch."""
        for idx in index_batches(len(self), batch_size, shuffle, generator, limit, self.device):
            images = self.images.index_select(0, idx)
            images = fit(images, self.size, self.channels)
            if augment:
                images = augmented(images, generator, pad=self.pad, hflip=self.hflip)
            yield normalise(images, self.mean, self.std), self.labels.index_select(0, idx)


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
    classes: tuple[str, ...] = ()  # folder names of an imagefolder, in label order


def load(
    name: str,
    *,
    dirs: Sequence[Path] = (),
    seed: int,
    val_fraction: float,
    subset: int | None = None,
    device: str | torch.device = "cpu",
    root: Path | None = None,
    input_size: int | None = None,
    channels: int | None = None,
    augment: str = "default",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    loader_workers: int = 2,
    cache_mb: float = DEFAULT_CACHE_MB,
) -> DataSplits:
    """Load a dataset and split it for a job.

    Args:
        name: ``fashion-mnist``, ``digits``, ``synthetic`` or ``imagefolder``.
        dirs: Folders to search, in order, for file-based datasets
            (``Settings.dataset_dirs`` gives the configured ones).
        seed: Decides which training images go to validation and the subset.
        val_fraction: Part of the official training split held out for
            validation (scoring candidates), in ``[0, 1)``.
        subset: Keep at most this many training images (after the val carve-out).
        device: Where the tensors live.
        root: The folder of an ``imagefolder`` (see :func:`workers.nets.imagefolder.load`).
        input_size: Side of the square network input; ``None``: the dataset's
            own (28 for the built-in sets, 32 for an imagefolder).
        channels: 1 or 3; ``None``: 1 for the built-in sets, 3 for an imagefolder.
        augment: ``shift``, ``crop_flip``, ``none`` or ``default`` (shift for the
            built-in sets, crop_flip for an imagefolder); applied where callers
            ask for ``augment=True``.
        mean: Per-channel normalisation in ``[0, 1]`` units, with ``std``;
            ``None``: computed from the training images.
        std: Per-channel standard deviation, with ``mean``.
        loader_workers: DataLoader processes that decode an imagefolder.
        cache_mb: An imagefolder whose decoded images fit in this many MiB is
            held in memory; a larger one streams from disk.

    Raises:
        DatasetNotFound: The dataset's files are in none of ``dirs`` (or, a
            subclass, an imagefolder cannot be used; see ``workers.nets.imagefolder``).
        ValueError: Unknown name or option, or out-of-range fraction/subset.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be positive, got {subset}")
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; expected one of {', '.join(AUGMENTS)}")
    if name == "imagefolder":
        if root is None:
            raise ValueError("the imagefolder dataset needs its folder (root)")
        from workers.nets import imagefolder  # here: it imports this module

        return imagefolder.load(
            root,
            seed=seed,
            val_fraction=val_fraction,
            subset=subset,
            device=device,
            input_size=input_size or imagefolder.DEFAULT_SIZE,
            channels=channels or 3,
            augment=augment,
            mean=mean,
            std=std,
            loader_workers=loader_workers,
            cache_mb=cache_mb,
        )
    train_x, train_y, test_x, test_y, raw_mean, raw_std = raw(name, tuple(dirs))
    size, chans = input_size or NATIVE_SIZE, channels or 1
    if chans not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {chans}")
    native = size == NATIVE_SIZE and chans == 1
    pad, hflip = augmentation(
        "shift" if augment == "default" else augment, size=size, flips=name == "fashion-mnist"
    )
    # The native images' statistics serve every size: resizing barely moves them.
    given = mean is not None or std is not None
    mean_t, std_t = given_stats(mean, std, chans) if given else (raw_mean, raw_std)
    mean_t, std_t = mean_t.expand(chans).clone(), std_t.expand(chans).clone()
    train_idx, val_idx = carve(len(train_y), seed, val_fraction, subset)
    dev = torch.device(device)
    mean_d, std_d = mean_t.to(dev), std_t.to(dev)
    shape = (None, None) if native else (size, chans)

    def split(images: Tensor, labels: Tensor) -> MemorySplit:
        stored = images.contiguous().to(dev)
        return MemorySplit(stored, labels.long().to(dev), mean_d, std_d, hflip, pad, *shape)

    return DataSplits(
        train=split(train_x[train_idx], train_y[train_idx]),
        val=split(train_x[val_idx], train_y[val_idx]),
        test=split(test_x, test_y),
        num_classes=int(max(train_y.max(), test_y.max())) + 1,
        in_channels=chans,
        size=size,
        mean=tuple(float(v) for v in mean_t),
        std=tuple(float(v) for v in std_t),
    )


def carve(n: int, seed: int, val_fraction: float, subset: int | None) -> tuple[Tensor, Tensor]:
    """``(train_idx, val_idx)`` into ``n`` official training images, decided by ``seed`` alone."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * n)
    val_idx, train_idx = order[:n_val], order[n_val:]
    if subset is not None:
        train_idx = train_idx[:subset]
    return train_idx, val_idx


def augmentation(kind: str, *, size: int, flips: bool) -> tuple[int, bool]:
    """``(pad, hflip)`` of an augmentation kind at input side ``size``.

    ``flips`` says whether the shift of this dataset may flip (a flip must
    preserve the label: clothes yes, digits no); crop_flip is meant for
    natural images and always flips.
    """
    if kind == "none":
        return 0, False
    if kind == "shift":
        return SHIFT, flips
    if kind == "crop_flip":
        return max(1, size // 8), True
    raise ValueError(f"unknown augment {kind!r}; expected one of {', '.join(AUGMENTS)}")


def normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 images to the float input the networks expect."""
    x = images.float().div_(255.0)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def fit(images: Tensor, size: int | None, channels: int | None) -> Tensor:
    """uint8 ``[B, C, H, W]`` square images resized to ``size`` and grey repeated to ``channels``.

    Bilinear with antialiasing, rounded back to uint8, so resized images are
    exactly what a dataset stored at that size would hold. ``None`` keeps as is.
    """
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        x = F.interpolate(
            images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        images = x.round_().clamp_(0, 255).to(torch.uint8)
    if channels is not None and images.shape[1] != channels:
        if images.shape[1] != 1:
            raise ValueError(f"cannot make {channels} channels of {images.shape[1]}")
        images = images.expand(-1, channels, -1, -1)
    return images


def given_stats(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> tuple[Tensor, Tensor]:
    """A spec's mean/std as ``float [channels]`` tensors (a single value is repeated)."""
    if mean is None or std is None or len(mean) != len(std) or len(mean) not in (1, channels):
        raise ValueError(
            f"give mean and std together, with {channels} values each (or one for every channel)"
        )
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {tuple(std)}")
    mean_t, std_t = (torch.tensor([float(v) for v in vs]) for vs in (mean, std))
    return mean_t.expand(channels).clone(), std_t.expand(channels).clone()


def index_batches(
    n: int,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    limit: int | None,
    device: torch.device | None = None,
) -> list[Tensor]:
    """The index batches of one pass over ``n`` images, the order drawn on the CPU first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.to(device).split(batch_size))[:limit] if n else []


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


def augmented(
    images: Tensor, generator: torch.Generator | None, *, pad: int = SHIFT, hflip: bool
) -> Tensor:
    """Random crop after zero padding by ``pad`` (a shift per image), optional flip, on the device.

    Every draw comes from ``generator`` on the CPU, in a fixed order (rows,
    columns, flips), so the same generator gives the same images on any device.
    ``(pad, hflip) == (0, False)`` returns ``images`` unchanged, with no draws.
    """
    if pad == 0 and not hflip:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


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
