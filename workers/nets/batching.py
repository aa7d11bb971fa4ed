"""Per-batch work on the device: the index order, resizing, augmentation and normalisation.

Both kinds of split, :class:`workers.nets.data.MemorySplit` and
:class:`workers.nets.imagefolder.StreamSplit`, hold or decode uint8 images
and turn every batch into the networks' float input with these functions,
drawing every random choice from the caller's CPU generator in the same
order; that is why both kinds yield the same batches on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTS = ("default", "none", "shift", "crop_flip")
SHIFT = 2


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
