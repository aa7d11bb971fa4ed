"""Refuse a network that cannot be searched before anything is trained.

A job's network comes from the zoo, from a plugin or from torchvision/timm,
and its input shape comes from the dataset. When the two do not fit (a
classifier sized for 32x32 images fed 28x28 ones, a builder that ignores
``num_classes``), or when the pruner and the exact cost model cannot follow
one of its layers, the job would otherwise fail only after its whole
baseline has been trained, with a raw error. :func:`check` finds all of
that in well under a second for a CIFAR-size network: one forward pass on a
zero input, then the :class:`~search.profile.ModelProfile` (which ``prepare``
keeps: it is structural, the same before and after training).

The API never imports torch, so it asks this module in a subprocess::

    python -m workers.compress.structure lenet5 --in-channels 1 --input-size 28 --num-classes 10

prints ``{"ok": true, "build_s": ..., "forward_s": ..., "profile_s": ...,
"groups": N, "params": ..., "flops": ...}`` and exits 0, or prints
``{"error": "arch" | "args" | "shape" | "structure", "message": ...}`` and
exits 2. ``--num-classes`` left out builds with 2 classes and does not
check the class count (the API does not always know it). ``--many`` reads
a JSON list of ``{"arch", "in_channels", "input_size", "num_classes"}``
objects on stdin and prints one such line per item as it is done, with its
``index``, so one torch import serves a whole batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from search import ModelProfile
from workers.compress.profiling import build_profile
from workers.errors import ProfileBuildError, StructureError, UnknownArchitecture, WorkerError
from workers.nets import zoo

GIST_CHARS = 300  # of a raw error quoted in a message
UNKNOWN_CLASSES_BUILD = 2  # classes to build with when the count is unknown (the fewest allowed)


@dataclass(frozen=True, eq=False)
class StructureReport:
    """What :func:`check` found: the profile, and what it cost to find it.

    Attributes:
        profile: The network's ModelProfile (structural: valid for the
            trained network of the same architecture and shape too).
        groups: Prunable channel groups (at least one).
        params: Parameters of the unpruned network.
        flops: FLOPs (MACs) of one image through the unpruned network.
        forward_s: Seconds of the forward pass on the zero input.
        profile_s: Seconds to trace the network and build the profile.
    """

    profile: ModelProfile
    groups: int
    params: float
    flops: float
    forward_s: float
    profile_s: float


def check(
    model: nn.Module,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int | None,
    arch: str | None = None,
    slices: int = 1,
) -> StructureReport:
    """Check that ``model`` runs on the dataset's images and can be profiled and pruned.

    Runs where the model's parameters are (``prepare`` passes a CPU copy),
    in eval mode, leaving weights, statistics and mode as they were.

    Args:
        model: A freshly built, unpruned network.
        input_shape: ``(C, H, W)`` of one image as the dataset gives it.
        num_classes: Classes of the dataset; None when unknown (then any
            ``(1, K)`` output passes).
        arch: Name stored in the profile; default the model's ``arch``.
        slices: As :func:`workers.compress.profiling.build_profile`.

    Raises:
        StructureError: ``kind == "shape"`` when the forward fails on the
            input shape or returns the wrong shape; ``kind == "structure"``
            when the profile cannot be built or has no prunable group. The
            message names the shapes or the layer, and what to change.
    """
    arch = arch or str(getattr(model, "arch", type(model).__name__))
    start = time.perf_counter()
    output = _forward(model, input_shape)
    forward_s = time.perf_counter() - start
    _check_output(output, input_shape, num_classes)
    start = time.perf_counter()
    try:
        profile = build_profile(
            model,
            arch=arch,
            input_shape=input_shape,
            num_classes=num_classes or int(output.shape[1]),
            slices=slices,
        )
    except ProfileBuildError as exc:
        raise StructureError(_layer_message(model, str(exc))) from exc
    except WorkerError as exc:  # e.g. no classifier the pruner can leave alone
        raise StructureError(f"the network cannot be profiled for pruning: {exc}") from exc
    except Exception as exc:
        raise StructureError(
            f"the pruner cannot trace the network (torch-pruning: {_gist(exc)}); it needs a "
            "forward made of modules and plain tensor operations"
        ) from exc
    profile_s = time.perf_counter() - start
    if not profile.groups:
        raise StructureError(
            "the network has no prunable channel group: no conv or linear layer other than the "
            "classifier has output channels the pruner can remove, so there is nothing to search"
        )
    return StructureReport(
        profile=profile,
        groups=len(profile.groups),
        params=float(profile.base_params),
        flops=float(profile.base_flops),
        forward_s=forward_s,
        profile_s=profile_s,
    )


def _forward(model: nn.Module, input_shape: tuple[int, int, int]) -> Tensor:
    """The output for one zero image; a failure names the shape and the failing layer."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    entered: list[str] = []  # modules whose forward is running, innermost last
    names = dict(model.named_modules())
    handles = []
    for name, module in names.items():
        if name and not isinstance(module, torch.jit.ScriptModule):  # scripted: no hooks
            handles.append(module.register_forward_pre_hook(_enter(entered, name)))
            handles.append(module.register_forward_hook(_leave(entered)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, *input_shape, device=device))
    except Exception as exc:
        where = ""
        if entered:
            layer = entered[-1]
            where = f" in layer {layer} ({type(names[layer]).__name__})"
        c, h, w = input_shape
        raise StructureError(
            f"the network's forward fails on input {input_shape}{where}: {_gist(exc)}; the "
            f"dataset gives {c}x{h}x{w} images: set dataset.input_size / dataset.channels to "
            "what the network expects, or make the network accept this size (e.g. adaptive "
            "pooling before the classifier)",
            kind="shape",
        ) from exc
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not isinstance(output, Tensor):
        raise StructureError(
            f"the network's forward returns a {type(output).__name__}, not a tensor of logits",
            kind="shape",
        )
    return output


def _enter(entered: list[str], name: str) -> Any:
    def hook(module: nn.Module, inputs: Any) -> None:
        entered.append(name)

    return hook


def _leave(entered: list[str]) -> Any:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        entered.pop()

    return hook


def _check_output(output: Tensor, input_shape: tuple[int, int, int], classes: int | None) -> None:
    shape = tuple(output.shape)
    if len(shape) == 2 and shape[0] == 1 and (classes is None or shape[1] == classes):
        return
    want = f"(1, {classes})" if classes is not None else "(1, number of classes)"
    raise StructureError(
        f"the network returns shape {shape} for one input {input_shape}; the dataset needs "
        f"{want}: one logit per class (a plugin's builder must honour num_classes, and the "
        "classifier must see flattened features)",
        kind="shape",
    )


def _layer_message(model: nn.Module, message: str) -> str:
    """A profile failure as "which layer, what is wrong, what to change"."""
    name, sep, reason = message.partition(": ")
    layer = name.split(" (")[0]  # "conv1 (in)" names a side of conv1
    modules = dict(model.named_modules())
    if not sep or not layer or layer not in modules:
        return f"the network cannot be profiled for pruning: {message}"
    advice = "" if "replace" in reason else "; change or replace that layer"
    return (
        f"the pruner's exact cost model cannot follow layer {layer} "
        f"({type(modules[layer]).__name__}): {reason}{advice}"
    )


def _gist(exc: BaseException) -> str:
    """First line of an error, short enough to quote."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= GIST_CHARS else text[: GIST_CHARS - 3] + "..."


def verdict(
    arch: str, *, in_channels: int, input_size: int, num_classes: int | None
) -> dict[str, Any]:
    """Build ``arch`` at these arguments and :func:`check` it, as one JSON-ready answer."""
    start = time.perf_counter()
    try:
        model = zoo.build(
            arch,
            in_channels=in_channels,
            num_classes=num_classes or UNKNOWN_CLASSES_BUILD,
            input_size=input_size,
        )
    except UnknownArchitecture as exc:
        return {"error": "arch", "message": str(exc)}
    except ValueError as exc:
        return {"error": "args", "message": str(exc)}
    except Exception as exc:  # a plugin's or a hub's own failure: the user's to fix
        return {"error": "arch", "message": f"building {arch} fails: {_gist(exc)}"}
    build_s = time.perf_counter() - start
    shape = (in_channels, input_size, input_size)
    try:
        report = check(model, input_shape=shape, num_classes=num_classes, arch=arch)
    except StructureError as exc:
        return {"error": exc.kind, "message": str(exc)}
    return {
        "ok": True,
        "build_s": build_s,
        "forward_s": report.forward_s,
        "profile_s": report.profile_s,
        "groups": report.groups,
        "params": report.params,
        "flops": report.flops,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.compress.structure",
        description="Check that an architecture runs at a dataset's shape and can be pruned.",
    )
    parser.add_argument("arch", nargs="?")
    parser.add_argument("--in-channels", type=int)
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--num-classes", type=int, help="left out: not checked")
    parser.add_argument("--many", action="store_true", help="a JSON list of checks on stdin")
    args = parser.parse_args(argv)
    if args.many:
        for index, item in enumerate(json.load(sys.stdin)):
            out = verdict(
                str(item["arch"]),
                in_channels=int(item["in_channels"]),
                input_size=int(item["input_size"]),
                num_classes=item.get("num_classes"),
            )
            print(json.dumps({"index": index, **out}), flush=True)
        return 0
    if args.arch is None or args.in_channels is None or args.input_size is None:
        parser.error("give ARCH, --in-channels and --input-size (or --many)")
    out = verdict(
        args.arch,
        in_channels=args.in_channels,
        input_size=args.input_size,
        num_classes=args.num_classes,
    )
    print(json.dumps(out))
    return 0 if out.get("ok") else 2


if __name__ == "__main__":
    sys.exit(main())
