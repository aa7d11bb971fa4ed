"""Image files decoded into ``uint8 [C, S, S]`` tensors, singly or by DataLoader workers.

:mod:`workers.nets.imagefolder` decodes a whole folder once or streams it
batch by batch; both go through :func:`decode_batches`, whose worker
processes call :func:`decode` per file. An unreadable file is reported by
name (:class:`~workers.errors.ImageUnreadable`) wherever it is decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from workers.errors import ImageUnreadable
from workers.nets.folders import Item


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


class _Files(Dataset[tuple[Tensor, int]]):
    """Files decoded one by one, in DataLoader workers; picklable for any start method."""

    def __init__(self, items: Sequence[Item], size: int, channels: int) -> None:
        self.items, self.size, self.channels = items, size, channels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.items[index]
        return decode(path, self.size, self.channels), label


def decode_batches(
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
