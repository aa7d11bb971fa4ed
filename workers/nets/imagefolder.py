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
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from workers.errors import DatasetInvalid, DatasetNotFound, ImageUnreadable
from workers.nets import data

DEFAULT_SIZE = 32
SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_FOLDERS = ("test", "val")  # the first one present is the test split
TEST_FRACTION = 0.2
STATS_SAMPLE = 5000  # training images a computed mean/std is taken from, at most
DECODE_BATCH = 256
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
        loader = _loader(self.items, index, self.size, self.channels, self.workers, self.device)
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


def decode(path: str | Path, size: int, channels: int) -> Tensor:
    """One image file as ``uint8 [channels, size, size]``.

    Palette and transparent images are composed over black (the colour of
    the augmentation's padding); 16-bit grey is scaled, not clipped, to 8
    bits. The shorter side is resized to ``size`` (bilinear, antialiased when
    shrinking) and the centre cropped, so nothing is distorted.

    Raises:
        ImageUnreadable: PIL cannot decode the file; the message names it.
    """
    try:
        with Image.open(path) as opened:
            opened.draft(None, (size, size))  # a large JPEG decodes at a reduced scale
            image = _converted(ImageOps.exif_transpose(opened), channels)
    except Exception as exc:  # any failure to decode has one meaning: this file is unusable
        raise ImageUnreadable(f"{path}: not a readable PNG or JPEG image ({exc})") from exc
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        w, h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((w, h), Image.Resampling.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.unsqueeze(0) if channels == 1 else pixels.permute(2, 0, 1).contiguous()


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
            chunks, _loader(items, chunks, size, channels, workers), strict=True
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
    loader = _loader(listing.train, chunks, size, channels, workers)
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


class _Files(Dataset[tuple[Tensor, int]]):
    """Files decoded one by one, in DataLoader workers; picklable for any start method."""

    def __init__(self, items: Sequence[Item], size: int, channels: int) -> None:
        self.items, self.size, self.channels = items, size, channels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.items[index]
        return decode(path, self.size, self.channels), label


def _loader(
    items: Sequence[Item],
    index: Sequence[Tensor],
    size: int,
    channels: int,
    workers: int,
    device: torch.device | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(uint8 images, int64 labels)`` of each index batch, in order, decoded by ``workers``.

    An unreadable file fails in a worker, whose error torch re-raises wrapped
    in a traceback; the file's own message is taken back out of it.
    """
    loader = DataLoader(
        _Files(items, size, channels),
        batch_sampler=[b.tolist() for b in index],
        num_workers=min(workers, len(index)),
        pin_memory=device is not None and device.type == "cuda",
    )
    try:
        yield from loader
    except ImageUnreadable as exc:
        found = re.findall(r"ImageUnreadable: (.+)", str(exc))
        if "DataLoader worker" not in str(exc) or not found:
            raise
        raise ImageUnreadable(found[-1]) from None


def _converted(image: Image.Image, channels: int) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit grey PNG
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(grey.round().clip(0, 255).astype(np.uint8))
    if image.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return image.convert("L" if channels == 1 else "RGB")


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
