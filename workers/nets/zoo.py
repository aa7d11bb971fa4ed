"""The model zoo: small CIFAR-style networks that every part of a job can rebuild.

Every network is built from a name and three integers only, and remembers them
(``arch`` and ``arch_kwargs`` attributes), because an exported pruned network
is stored as "zoo name + kept channel indices + weights" rather than as a
pickled module. The final classifier (:func:`classifier_of`) is the one layer
whose output channels (the classes) must never be pruned.

Besides the plain LeNet/VGG/ResNet networks, :mod:`workers.nets.zoo_families`
adds small MobileNetV2, ResNeXt, DenseNet and RegNet-style networks:
depthwise and grouped convolutions, concatenation and channel gating.

ReLUs are separate module instances at every call site (never reused, never
functional) so that torch-pruning's op counter sees and counts each one, and
the dependency graph gets one node per activation.

Users' own networks come in two ways, resolved after the built-in names:

* a Python package that declares an entry point in the group
  ``prunesearch.models``; it loads a callable called with keywords,
  ``builder(in_channels=..., num_classes=..., input_size=...) -> nn.Module``.
  Its classifier is found by :func:`classifier_of` (the last ``Linear``), or
  named by the network's attribute ``prunesearch_classifier`` (a module
  name such as ``"head.proj"``). Install the package where the API and the
  workers run (the API only reads the names from metadata).
* ``torchvision:NAME`` / ``timm:NAME`` where that package imports, built
  untrained with ``num_classes`` (torchvision: 3-channel input only, see
  ``dataset.channels``; timm passes ``in_chans``). Whether the exact cost
  model and the pruner can follow every layer is checked before any
  training (:mod:`workers.compress.structure`).

Such networks get the same ``arch`` / ``arch_kwargs`` attributes as the
built-in ones, so exported recipes rebuild them the same way.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from torch import Tensor, nn

from workers.errors import UnknownArchitecture
from workers.nets.hub_import import import_hub
from workers.nets.zoo_base import ZooNet
from workers.nets.zoo_families import FAMILIES

ARCHS = ("lenet5", "vgg11s", "resnet20", "resnet56", *FAMILIES)
PLUGIN_GROUP = "prunesearch.models"  # the same group core.spec validates against
HUBS = ("torchvision", "timm")

MIN_INPUT_SIZE = 28


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, padding: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class LeNet5(ZooNet):
    """LeNet-5 with BatchNorm; adaptive pooling lets any input size >= 28 work."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        self._remember("lenet5", in_channels, num_classes, input_size)
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 6, 5, padding=2),
            nn.MaxPool2d(2),
            *_conv_bn_relu(6, 16, 5, padding=0),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(120, 84)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).flatten(1)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc(x)


VGG11S_CONFIG: tuple[int | str, ...] = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256)


class VGG11S(ZooNet):
    """A slim VGG-11: eight 3x3 conv+BN+ReLU layers, four max-pools, GAP, ``fc``.

    One max-pool fewer than CIFAR VGG-11 so that a 28x28 input still has a
    1x1 map at the end; global average pooling makes larger inputs work too.
    """

    def __init__(self, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        self._remember("vgg11s", in_channels, num_classes, input_size)
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in VGG11S_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(item, int)
                layers.extend(_conv_bn_relu(c_in, item, 3, padding=1))
                c_in = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; the shortcut is a 1x1 conv + BN where shapes change.

    The projection shortcut ("option B") keeps every coupling a plain tensor
    operation that torch-pruning can follow, unlike the zero-padding shortcut.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class CifarResNet(ZooNet):
    """CIFAR ResNet (He et al. 2016, section 4.2): 6n+2 layers, widths 16-32-64."""

    def __init__(
        self, arch: str, depth: int, in_channels: int, num_classes: int, input_size: int
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        self._remember(arch, in_channels, num_classes, input_size)
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(c_in, c_out, stride)]
        layers += [BasicBlock(c_out, c_out, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


_BUILDERS: dict[str, Callable[[int, int, int], ZooNet]] = {
    "lenet5": LeNet5,
    "vgg11s": VGG11S,
    "resnet20": lambda c, k, s: CifarResNet("resnet20", 20, c, k, s),
    "resnet56": lambda c, k, s: CifarResNet("resnet56", 56, c, k, s),
    **FAMILIES,
}


def build(arch: str, *, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    """Build an unpruned, freshly initialised network of the zoo or of a plugin.

    Args:
        arch: One of :data:`ARCHS`, an entry-point name of the
            ``prunesearch.models`` group, or ``torchvision:NAME`` / ``timm:NAME``.
        in_channels: Image channels (1 or 3 in practice; any positive number works).
        num_classes: Output classes of the classifier (at least 2).
        input_size: Side of the square input images (at least 28 for the
            built-in networks). Stored so the network can be rebuilt and
            profiled at the size it was trained for.

    Raises:
        UnknownArchitecture: ``arch`` names nothing installed, or what it names
            does not follow the contract (an ``nn.Module`` with a classifier).
        ValueError: A size argument is out of range.
    """
    builder = _BUILDERS.get(arch)
    if builder is not None:
        if in_channels < 1 or num_classes < 2 or input_size < MIN_INPUT_SIZE:
            raise ValueError(
                f"need in_channels >= 1, num_classes >= 2, input_size >= {MIN_INPUT_SIZE}; got "
                f"{in_channels}, {num_classes}, {input_size}"
            )
        return builder(in_channels, num_classes, input_size)
    if in_channels < 1 or num_classes < 2 or input_size < 1:
        raise ValueError(
            f"need in_channels >= 1, num_classes >= 2, input_size >= 1; got "
            f"{in_channels}, {num_classes}, {input_size}"
        )
    kwargs = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
    hub, sep, name = arch.partition(":")
    if sep and hub in HUBS:
        model = _from_hub(hub, name, in_channels, num_classes)
    else:
        plugin = _plugin(arch)
        if plugin is None:
            raise UnknownArchitecture(
                f"unknown architecture {arch!r}; known: {', '.join(known())}, or "
                "torchvision:NAME / timm:NAME where that package is installed"
            )
        model = plugin(**kwargs)
    return _adopt(model, arch, kwargs)


def known() -> list[str]:
    """The built-in names, then the installed plugins' (sorted)."""
    plugins = sorted({ep.name for ep in entry_points(group=PLUGIN_GROUP)} - set(ARCHS))
    return [*ARCHS, *plugins]


def _plugin(arch: str) -> Callable[..., Any] | None:
    for ep in entry_points(group=PLUGIN_GROUP, name=arch):
        try:
            builder = ep.load()
        except Exception as exc:  # a broken plugin is the user's to fix: say which one
            raise UnknownArchitecture(
                f"architecture {arch!r}: entry point {ep.value} cannot be loaded: {exc!r}"
            ) from exc
        if not callable(builder):
            raise UnknownArchitecture(f"architecture {arch!r}: {ep.value} is not callable")
        return builder
    return None


def _from_hub(hub: str, name: str, in_channels: int, num_classes: int) -> Any:
    """An untrained torchvision / timm model with ``num_classes`` outputs."""
    if importlib.util.find_spec(hub) is None:
        raise UnknownArchitecture(
            f"{hub}:{name} needs the {hub} package, which is not installed here: pip install {hub}"
        )
    module: Any = import_hub(hub)
    if hub == "torchvision":
        if in_channels != 3:
            raise ValueError(
                f"torchvision models take 3-channel images; got in_channels={in_channels}"
            )
        try:
            return module.models.get_model(name, weights=None, num_classes=num_classes)
        except ValueError as exc:
            raise UnknownArchitecture(f"torchvision has no model {name!r}: {exc}") from exc
    if not module.is_model(name):
        raise UnknownArchitecture(f"timm has no model {name!r}")
    return module.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels
    )


def classifier_of(model: nn.Module) -> tuple[str, nn.Module]:
    """The network's final classifier: its outputs are the classes, never pruned.

    The module named by the attribute ``prunesearch_classifier`` when the
    network sets one; otherwise the last ``nn.Linear`` in module order (the
    head of every common CNN: ``fc``, ``classifier``, ``head.fc``,
    ``classifier.3``), and for an all-convolutional network the last conv.

    Raises:
        UnknownArchitecture: The named module does not exist, or the network
            has neither a linear nor a convolutional layer.
    """
    named = getattr(model, "prunesearch_classifier", None)
    if isinstance(named, str):
        try:
            return named, model.get_submodule(named)
        except AttributeError as exc:
            raise UnknownArchitecture(
                f"prunesearch_classifier names {named!r}, which is not a module of the network"
            ) from exc
    last: tuple[str, nn.Module] | None = None
    for kind in (nn.Linear, nn.Conv2d):
        for name, module in model.named_modules():
            if isinstance(module, kind):
                last = (name, module)
        if last is not None:
            return last
    raise UnknownArchitecture(
        f"{type(model).__name__} has no Linear or Conv2d layer to serve as its classifier"
    )


def _adopt(model: Any, arch: str, kwargs: dict[str, int]) -> nn.Module:
    """Check a foreign network against the zoo's contract and make it rebuildable."""
    if not isinstance(model, nn.Module):
        raise UnknownArchitecture(
            f"architecture {arch!r} built a {type(model).__name__}, not a torch.nn.Module"
        )
    classifier_of(model)
    # Plain attributes, as ZooNet keeps them: export writes them into the recipe.
    model.__dict__["arch"] = arch
    model.__dict__["arch_kwargs"] = dict(kwargs)
    return model
