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

This module splits a dataset for a job; the built-in datasets are read in
:mod:`workers.nets.builtin`, and the per-batch work both kinds of split share
(order, resizing, augmentation, normalisation) is in :mod:`workers.nets.batching`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from workers.nets.batching import (
    AUGMENTS,
    SHIFT,
    augmentation,
    augmented,
    fit,
    index_batches,
    normalise,
)
from workers.nets.builtin import FASHION_FILES, NAMES, raw, read_idx

__all__ = [
    "AUGMENTS",
    "DEFAULT_CACHE_MB",
    "FASHION_FILES",
    "NAMES",
    "NATIVE_SIZE",
    "SHIFT",
    "DataSplits",
    "MemorySplit",
    "Split",
    "augmentation",
    "augmented",
    "carve",
    "fit",
    "given_stats",
    "index_batches",
    "load",
    "normalise",
    "raw",
    "read_idx",
]

NATIVE_SIZE = 28  # of every built-in dataset, with one channel
DEFAULT_CACHE_MB = 1024.0


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
