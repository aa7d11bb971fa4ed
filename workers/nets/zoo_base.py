"""The base class of the zoo's networks (its own module so the families can share it)."""

from __future__ import annotations

from torch import nn


class ZooNet(nn.Module):
    """Base of the zoo's networks: carries what is needed to rebuild it."""

    arch: str
    arch_kwargs: dict[str, int]

    def _remember(self, arch: str, in_channels: int, num_classes: int, input_size: int) -> None:
        self.arch = arch
        self.arch_kwargs = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "input_size": input_size,
        }
