"""The state_dict an architecture expects: tensor names, shapes and dtypes, as JSON.

The API checks uploaded weights against it but never imports torch, so it
runs this module in a subprocess::

    python -m workers.nets.signature lenet5 --in-channels 1 --num-classes 10 --input-size 28

prints ``{"arch": ..., "arch_kwargs": {...}, "tensors": {name: {"dtype": "F32",
"shape": [...]}}}`` (dtypes in safetensors' names) and exits 0. A name the zoo
does not know, or size arguments it refuses, print ``{"error": "arch" | "args",
"message": ...}`` and exit 2. The network is built on the meta device (no
memory, no initialisation cost), falling back to the CPU for a plugin that
cannot be built there.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from workers.errors import UnknownArchitecture
from workers.nets import zoo

DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def signature(arch: str, *, in_channels: int, num_classes: int, input_size: int) -> dict[str, Any]:
    """Every state_dict entry of the freshly built network, in order.

    Raises:
        UnknownArchitecture: As :func:`workers.nets.zoo.build`.
        ValueError: Size arguments the architecture refuses.
    """
    kwargs = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
    try:
        with torch.device("meta"):
            model = zoo.build(arch, **kwargs)
    except (UnknownArchitecture, ValueError):
        raise
    except Exception:  # some third-party init code reads values: build it for real
        model = zoo.build(arch, **kwargs)
    tensors = {
        name: {"dtype": DTYPES.get(t.dtype, str(t.dtype)), "shape": list(t.shape)}
        for name, t in model.state_dict().items()
    }
    return {"arch": arch, "arch_kwargs": kwargs, "tensors": tensors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.nets.signature",
        description="Print an architecture's state_dict shapes.",
    )
    parser.add_argument("arch")
    parser.add_argument("--in-channels", type=int, required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--input-size", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        out = signature(
            args.arch,
            in_channels=args.in_channels,
            num_classes=args.num_classes,
            input_size=args.input_size,
        )
    except UnknownArchitecture as exc:
        print(json.dumps({"error": "arch", "message": str(exc)}))
        return 2
    except ValueError as exc:
        print(json.dumps({"error": "args", "message": str(exc)}))
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
