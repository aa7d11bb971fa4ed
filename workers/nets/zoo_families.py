"""CIFAR-size members of the modern CNN families, so tests and benchmarks cover them.

Each one is small enough to train for a test on two CPU cores, yet keeps the
structure that makes its family hard to prune:

* ``mobilenetv2``: inverted residuals with depthwise 3x3 convolutions (a
  depthwise conv couples its input and output channels: one group);
* ``resnext``: bottlenecks with a grouped 3x3 convolution (cardinality 4:
  channels are removed per group, the same positions in every group);
* ``densenet``: dense blocks whose layers read the concatenation of every
  earlier output (one channel dimension made of many groups);
* ``regnet``: RegNetY-style X blocks, grouped 3x3 convs with a fixed group
  width and squeeze-and-excitation gating (a channel-wise product).

Their classifiers are named ``classifier`` or ``head``, not ``fc``, which
exercises the "find the classifier" rule of :func:`workers.nets.zoo.classifier_of`.
As in the rest of the zoo, every activation is its own module instance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workers.nets.zoo_base import ZooNet


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    )


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, project 1x1 (linear); residual where shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = _conv_bn(c_in, hidden, 1)
        self.act1 = nn.ReLU6(inplace=True)
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.act2 = nn.ReLU6(inplace=True)
        self.project = _conv_bn(hidden, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.act2(self.depthwise(self.act1(self.expand(x)))))
        return x + out if self.residual else out


class MobileNetV2(ZooNet):
    """MobileNetV2 at width 0.5 for 32x32 inputs: strides 1-2-2, seven inverted residuals."""

    # (expansion, output channels, blocks, stride of the first block)
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 2, 2), (6, 64, 2, 2))

    def __init__(self, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        self._remember("mobilenetv2", in_channels, num_classes, input_size)
        self.stem = _conv_bn(in_channels, 16, 3)
        self.stem_act = nn.ReLU6(inplace=True)
        blocks: list[nn.Module] = []
        c_in = 16
        for expand, c_out, count, stride in self.CONFIG:
            for i in range(count):
                blocks.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.last = _conv_bn(c_in, 256, 1)
        self.last_act = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem_act(self.stem(x)))
        x = self.last_act(self.last(x))
        return self.classifier(self.pool(x).flatten(1))


class ResNeXtBlock(nn.Module):
    """Bottleneck 1x1 -> grouped 3x3 -> 1x1, projection shortcut where shapes change."""

    def __init__(self, c_in: int, width: int, c_out: int, stride: int, cardinality: int) -> None:
        super().__init__()
        self.reduce = _conv_bn(c_in, width, 1)
        self.act1 = nn.ReLU(inplace=True)
        self.grouped = _conv_bn(width, width, 3, stride, groups=cardinality)
        self.act2 = nn.ReLU(inplace=True)
        self.restore = _conv_bn(width, c_out, 1)
        self.shortcut = (
            _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        )
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.restore(self.act2(self.grouped(self.act1(self.reduce(x)))))
        return self.act3(out + self.shortcut(x))


class ResNeXt(ZooNet):
    """ResNeXt-11 (4x8d style) for 32x32: three stages of one bottleneck, cardinality 4."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        self._remember("resnext", in_channels, num_classes, input_size)
        self.stem = _conv_bn(in_channels, 32, 3)
        self.stem_act = nn.ReLU(inplace=True)
        self.stages = nn.Sequential(
            ResNeXtBlock(32, 32, 64, 1, 4),
            ResNeXtBlock(64, 64, 128, 2, 4),
            ResNeXtBlock(128, 128, 256, 2, 4),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem_act(self.stem(x)))
        return self.classifier(self.pool(x).flatten(1))


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (4k) -> BN-ReLU-conv3x3 (k), concatenated to its input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.act1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.act2(self.bn2(self.conv1(self.act1(self.bn1(x))))))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 halving the channels, then 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.act = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(self.act(self.bn(x))))


class DenseNet(ZooNet):
    """DenseNet-BC for 32x32: growth 12, three blocks of three layers, compression 0.5."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        self._remember("densenet", in_channels, num_classes, input_size)
        growth, layers = 12, 3
        channels = 2 * growth
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for block in range(3):
            for _ in range(layers):
                stages.append(DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                stages.append(Transition(channels, channels // 2))
                channels //= 2
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn(self.features(self.stem(x))))
        return self.head(self.pool(x).flatten(1))


class SqueezeExcite(nn.Module):
    """Channel gating: global pool, 1x1 reduce, ReLU, 1x1 expand, sigmoid, product."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class XBlock(nn.Module):
    """RegNetY block: 1x1, grouped 3x3 (fixed group width), SE, 1x1, residual."""

    def __init__(self, c_in: int, c_out: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.a = _conv_bn(c_in, c_out, 1)
        self.a_act = nn.ReLU(inplace=True)
        self.b = _conv_bn(c_out, c_out, 3, stride, groups=c_out // group_width)
        self.b_act = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(c_out, max(1, c_in // 4))
        self.c = _conv_bn(c_out, c_out, 1)
        self.shortcut = (
            _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.c(self.se(self.b_act(self.b(self.a_act(self.a(x))))))
        return self.act(out + self.shortcut(x))


class RegNet(ZooNet):
    """RegNetY-style net for 32x32: widths 32-64-128, group width 16, depths 1-2-2."""

    STAGES = ((32, 1, 1), (64, 2, 2), (128, 2, 2))  # (width, depth, stride)

    def __init__(self, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        self._remember("regnet", in_channels, num_classes, input_size)
        self.stem = _conv_bn(in_channels, 24, 3)
        self.stem_act = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = []
        c_in = 24
        for width, depth, stride in self.STAGES:
            for i in range(depth):
                blocks.append(XBlock(c_in, width, stride if i == 0 else 1, group_width=16))
                c_in = width
        self.trunk = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.trunk(self.stem_act(self.stem(x)))
        return self.head(self.pool(x).flatten(1))


FAMILIES: dict[str, type[ZooNet]] = {
    "mobilenetv2": MobileNetV2,
    "resnext": ResNeXt,
    "densenet": DenseNet,
    "regnet": RegNet,
}
