"""Export and re-load a pruned network without pickle.

A pruned network is stored as two files: ``recipe.json`` (zoo name, the
constructor's integers, the kept original channel indices per group, the
rank and slices of every decomposed layer, the input shape) and
``model.safetensors`` (the weights). Loading rebuilds the architecture from
the zoo, cuts it with the recipe, splits the decomposed layers into their
two factors (:func:`workers.compress.lowrank.restructure`) and loads the weights
strictly, so a file from an untrusted party can at worst fail to load; it
can never execute code, which ``torch.load`` of a pickled module could.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from workers.compress import lowrank
from workers.compress.prune import apply_kept
from workers.errors import ExportError, PruneError, UnknownArchitecture
from workers.nets import zoo

log = logging.getLogger(__name__)

FORMAT = 1
WEIGHTS = "model.safetensors"
RECIPE = "recipe.json"
ONNX = "model.onnx"
_ARCH_KEYS = ("in_channels", "num_classes", "input_size")


@dataclass(frozen=True)
class Recipe:
    """Everything needed to rebuild a pruned network's architecture from the zoo.

    Attributes:
        arch: Zoo name.
        arch_kwargs: ``in_channels``, ``num_classes`` and ``input_size`` of :func:`zoo.build`.
        kept: Kept original channel indices (sorted) per group name.
        input_shape: ``(C, H, W)`` of one input image.
        lowrank: ``{"rank": r, "slices": k}`` per decomposed layer (decomposed
            layers only, as :func:`workers.compress.lowrank.decompose` returns them);
            applied after the channel cut. Empty for a pruned-only network.
    """

    arch: str
    arch_kwargs: Mapping[str, int]
    kept: Mapping[str, Sequence[int]] = field(default_factory=dict)
    input_shape: tuple[int, int, int] = (1, 28, 28)
    lowrank: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise so that recipes built from lists and parsed from JSON compare equal.
        kept = {str(k): tuple(sorted(int(i) for i in v)) for k, v in self.kept.items()}
        ranks = {
            str(k): {"rank": int(v["rank"]), "slices": int(v["slices"])}
            for k, v in self.lowrank.items()
        }
        object.__setattr__(self, "arch_kwargs", dict(self.arch_kwargs))
        object.__setattr__(self, "kept", kept)
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "lowrank", ranks)

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        kept: Mapping[str, Sequence[int]],
        input_shape: tuple[int, int, int],
        lowrank: Mapping[str, tuple[int, int]] | None = None,
    ) -> Recipe:
        """Recipe of a zoo network pruned with ``kept`` (as returned by ``prune``)
        and decomposed with ``lowrank`` (``{layer: (rank, slices)}``, as returned
        by :func:`workers.compress.lowrank.decompose`)."""
        arch = getattr(model, "arch", None)
        kwargs = getattr(model, "arch_kwargs", None)
        if not isinstance(arch, str) or not isinstance(kwargs, dict):
            raise ExportError("only networks built by workers.nets.zoo can be exported as a recipe")
        return cls(
            arch=arch,
            arch_kwargs=dict(kwargs),
            kept=kept,
            input_shape=input_shape,
            lowrank={
                name: {"rank": rank, "slices": k} for name, (rank, k) in (lowrank or {}).items()
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (see :meth:`from_dict`); ``lowrank`` only where a layer is decomposed."""
        data: dict[str, Any] = {
            "format": FORMAT,
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "kept": {name: list(idxs) for name, idxs in self.kept.items()},
            "input_shape": list(self.input_shape),
        }
        if self.lowrank:
            data["lowrank"] = {name: dict(plan) for name, plan in self.lowrank.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Parse and validate a recipe; anything unexpected is an :class:`ExportError`."""
        if data.get("format") != FORMAT:
            raise ExportError(f"unsupported recipe format {data.get('format')!r}")
        try:
            raw_kwargs = data["arch_kwargs"]
            kwargs = {key: _as_int(raw_kwargs[key]) for key in _ARCH_KEYS}
            kept = {
                str(name): tuple(_as_int(i) for i in idxs) for name, idxs in data["kept"].items()
            }
            shape = tuple(_as_int(v) for v in data["input_shape"])
            arch = data["arch"]
            # Recipes written before the lowrank operator have no such field.
            ranks = {
                str(name): {"rank": _as_int(plan["rank"]), "slices": _as_int(plan["slices"])}
                for name, plan in data.get("lowrank", {}).items()
            }
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ExportError(f"malformed recipe: {exc!r}") from exc
        if not isinstance(arch, str) or len(shape) != 3:
            raise ExportError("malformed recipe: arch must be a string, input_shape (C, H, W)")
        return cls(arch, kwargs, kept, (shape[0], shape[1], shape[2]), ranks)


def save(directory: Path, model: nn.Module, recipe: Recipe) -> None:
    """Write ``model.safetensors`` and ``recipe.json`` into ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()
    }
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": str(FORMAT)})
    (directory / RECIPE).write_text(json.dumps(recipe.to_dict(), indent=1, sort_keys=True))


def load(directory: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported network (eval mode, on ``device``) with no pickle involved.

    Raises:
        ExportError: A file is missing or malformed, the recipe does not fit
            the architecture, or the weights do not match it exactly.
    """
    recipe_path, weights_path = directory / RECIPE, directory / WEIGHTS
    for path in (recipe_path, weights_path):
        if not path.is_file():
            raise ExportError(f"{path} is missing")
    try:
        recipe = Recipe.from_dict(json.loads(recipe_path.read_text()))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{recipe_path} is not valid JSON: {exc}") from exc
    try:
        model = zoo.build(recipe.arch, **recipe.arch_kwargs)
    except (UnknownArchitecture, ValueError) as exc:
        raise ExportError(f"{recipe_path}: {exc}") from exc
    dev = torch.device(device)
    model.to(dev).eval()
    try:
        apply_kept(model, recipe.kept, torch.zeros(1, *recipe.input_shape, device=dev))
        lowrank.restructure(
            model,
            {name: plan["rank"] for name, plan in recipe.lowrank.items()},
            {name: plan["slices"] for name, plan in recipe.lowrank.items()},
        )
    except PruneError as exc:
        raise ExportError(f"{recipe_path}: {exc}") from exc
    except RuntimeError as exc:  # the input shape does not fit the network
        raise ExportError(f"{recipe_path}: cannot trace the network: {exc}") from exc
    try:
        state = load_file(str(weights_path), device=str(dev))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ExportError(f"{weights_path} does not match the recipe: {exc}") from exc
    return model


def export_onnx(
    directory: Path, model: nn.Module, input_shape: tuple[int, int, int]
) -> Path | None:
    """Write ``model.onnx`` (dynamic batch) where the exporter is available.

    ONNX is a convenience for deployment, not part of the result contract,
    so a failure (typically the ``onnx`` package missing) is logged and
    ``None`` returned rather than failing the job.
    """
    path = directory / ONNX
    directory.mkdir(parents=True, exist_ok=True)
    try:
        cpu_model = copy.deepcopy(model).to("cpu").eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                cpu_model,
                (torch.zeros(1, *input_shape),),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
    except Exception as exc:  # any exporter failure only costs the optional file
        log.warning("ONNX export skipped: %s", exc)
        path.unlink(missing_ok=True)
        return None
    return path


def _as_int(value: Any) -> int:
    """Strict integer: JSON floats or booleans in a recipe mean it was tampered with."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value
