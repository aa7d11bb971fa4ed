"""Users' image folders: one sub-folder per class of PNG/JPEG images of any size.

Two layouts are read, each also inside one wrapping folder (as archives
often hold them)::

    root/<class>/...png                           a fixed 20% per class is the test split
    root/train/<class>/...  root/test/<class>/... (or val/ as the test split)

Classes are the sorted folder names, so labels do not depend on the order a
filesystem lists them, and the test split never depends on the job seed (the
rule of :mod:`workers.nets.data`), so the numbers of different jobs compare.

Each image is decoded with PIL to grey or RGB, its shorter side resized to
the input size and centre-cropped: ``uint8 [C, S, S]``. A dataset whose
decoded images fit under ``cache_mb`` is decoded once, by DataLoader workers,
into :class:`workers.nets.data.MemorySplit` (the fast path: no decoding per
epoch). A larger one streams: :class:`StreamSplit` has each batch decoded in
DataLoader processes, so memory holds only the batches in flight. Both take
the order and every augmentation draw from the caller's generator in the
same way, so they yield the same batches.

This module loads and splits a folder for a job; the listing (layouts,
classes, test split) is :mod:`workers.nets.folders`, the decoding of files
:mod:`workers.nets.decoding`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from workers.nets import data
from workers.nets.decoding import decode, decode_batches
from workers.nets.folders import (
    SUFFIXES,
    TEST_FOLDERS,
    TEST_FRACTION,
    Item,
    Listing,
    scan,
)

__all__ = [
    "DECODE_BATCH",
    "DEFAULT_SIZE",
    "STATS_SAMPLE",
    "SUFFIXES",
    "TEST_FOLDERS",
    "TEST_FRACTION",
    "Item",
    "Listing",
    "StreamSplit",
    "decode",
    "decoded",
    "load",
    "scan",
]

DEFAULT_SIZE = 32
STATS_SAMPLE = 5000  # training images a computed mean/std is taken from, at most
DECODE_BATCH = 256


@dataclass(frozen=True, eq=False)
class StreamSplit:
    """A split whose images stay on disk; DataLoader workers decode each batch.

    Satisfies :class:`workers.nets.data.Split`. The workers only decode, which
    involves no randomness; the order and the augmentation are drawn in this
    process from the caller's generator, exactly as :class:`MemorySplit
    <workers.nets.data.MemorySplit>` draws them.

    Attributes:
        items: ``(file, label)`` of the split's images.
        size: Side of the decoded square images.
        channels: 1 (grey) or 3 (RGB).
        mean: Per-channel mean in ``[0, 1]`` units, on the device.
        std: Per-channel standard deviation, on the device.
        hflip: Whether the augmentation flips.
        pad: Zero padding of the augmentation's random crop (0: none).
        workers: DataLoader processes; 0 decodes in this process.
    """

    items: tuple[Item, ...]
    size: int
    channels: int
    mean: Tensor
    std: Tensor
    hflip: bool = False
    pad: int = 0
    workers: int = 2

    def __len__(self) -> int:
        return len(self.items)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        augment: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """See :meth:`workers.nets.data.Split.batches`; decoded while the previous batch trains."""
        index = data.index_batches(len(self), batch_size, shuffle, generator, limit)
        if not index:
            return
        loader = decode_batches(
            self.items, index, self.size, self.channels, self.workers, self.device
        )
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            if augment:
                images = data.augmented(images, generator, pad=self.pad, hflip=self.hflip)
            yield data.normalise(images, self.mean, self.std), labels.to(self.device)


def load(
    root: Path,
    *,
    seed: int,
    val_fraction: float,
    subset: int | None = None,
    device: str | torch.device = "cpu",
    input_size: int = DEFAULT_SIZE,
    channels: int = 3,
    augment: str = "default",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    loader_workers: int = 2,
    cache_mb: float = data.DEFAULT_CACHE_MB,
) -> data.DataSplits:
    """Read an image folder and split it for a job (``workers.nets.data.load`` calls this).

    The training images are split into train and val by ``seed``, as for the
    built-in sets; ``mean``/``std`` left out are computed from at most
    ``STATS_SAMPLE`` training images spread evenly over the classes.

    Raises:
        DatasetNotFound: ``root`` is not a folder.
        DatasetInvalid: The tree cannot be used (see :func:`scan`).
        ImageUnreadable: An image cannot be decoded (when it is first decoded:
            at once on the fast path, in some batch when streaming).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    listing = scan(root)
    kind = "crop_flip" if augment == "default" else augment
    # Flips are crop_flip's alone: a user who picks shift has orientation-bound images.
    pad, hflip = data.augmentation(kind, size=input_size, flips=False)
    train_idx, val_idx = data.carve(len(listing.train), seed, val_fraction, subset)
    dev = torch.device(device)
    given = mean is not None or std is not None
    nbytes = (len(listing.train) + len(listing.test)) * channels * input_size**2
    if nbytes <= cache_mb * 2**20:
        train_x, train_y, test_x, test_y = decoded(listing, input_size, channels, loader_workers)
        sample = _sample_chunks(len(train_x))
        mean_t, std_t = (
            data.given_stats(mean, std, channels) if given else _stats(train_x[c] for c in sample)
        )
        m, s = mean_t.to(dev), std_t.to(dev)

        def memory(x: Tensor, y: Tensor) -> data.Split:
            return data.MemorySplit(x.contiguous().to(dev), y.to(dev), m, s, hflip, pad)

        train = memory(train_x[train_idx], train_y[train_idx])
        val = memory(train_x[val_idx], train_y[val_idx])
        test = memory(test_x, test_y)
    else:
        if given:
            mean_t, std_t = data.given_stats(mean, std, channels)
        else:
            mean_t, std_t = _streamed_stats(listing, input_size, channels, loader_workers)
        m, s = mean_t.to(dev), std_t.to(dev)

        def stream(items: Sequence[Item]) -> data.Split:
            return StreamSplit(tuple(items), input_size, channels, m, s, hflip, pad, loader_workers)

        train = stream([listing.train[i] for i in train_idx.tolist()])
        val = stream([listing.train[i] for i in val_idx.tolist()])
        test = stream(listing.test)
    return data.DataSplits(
        train=train,
        val=val,
        test=test,
        num_classes=len(listing.classes),
        in_channels=channels,
        size=input_size,
        mean=tuple(float(v) for v in mean_t),
        std=tuple(float(v) for v in std_t),
        classes=listing.classes,
    )


@functools.lru_cache(maxsize=2)
def decoded(
    listing: Listing, size: int, channels: int, workers: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train_x, train_y, test_x, test_y)`` of the whole listing, decoded on the CPU.

    Cached per process like :func:`workers.nets.data.raw`: a worker's parent that
    loads a job's splits before forking its tasks saves each task the decode.
    The tensors are shared: callers index or copy them, never write in place.
    """

    def whole(items: Sequence[Item]) -> tuple[Tensor, Tensor]:
        images = torch.empty(len(items), channels, size, size, dtype=torch.uint8)
        chunks = list(torch.arange(len(items)).split(DECODE_BATCH))
        for chunk, (batch, _) in zip(
            chunks, decode_batches(items, chunks, size, channels, workers), strict=True
        ):
            images[int(chunk[0]) : int(chunk[-1]) + 1] = batch
        return images, torch.tensor([label for _, label in items], dtype=torch.int64)

    return *whole(listing.train), *whole(listing.test)


@functools.lru_cache(maxsize=4)
def _streamed_stats(
    listing: Listing, size: int, channels: int, workers: int
) -> tuple[Tensor, Tensor]:
    """Mean and std of the sample of :func:`_sample_chunks`, decoded from disk (cached)."""
    chunks = _sample_chunks(len(listing.train))
    loader = decode_batches(listing.train, chunks, size, channels, workers)
    return _stats(images for images, _ in loader)


def _sample_chunks(n: int) -> list[Tensor]:
    """At most ``STATS_SAMPLE`` evenly spaced indices into ``n`` images, in decode batches.

    Evenly spaced over a list ordered by class, the sample is stratified, and
    needs no randomness.
    """
    return list(torch.linspace(0, n - 1, min(n, STATS_SAMPLE)).round().long().split(DECODE_BATCH))


def _stats(batches: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std, in ``[0, 1]`` units, of uint8 batches (float64 sums)."""
    count, total, squares = 0, torch.zeros(()), torch.zeros(())
    for batch in batches:
        x = batch.to(torch.float64).div_(255.0).transpose(0, 1).reshape(batch.shape[1], -1)
        total, squares = total + x.sum(1), squares + x.square().sum(1)
        count += x.shape[1]
    mean = total / count
    var = (squares - count * mean.square()) / max(1, count - 1)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6)
