"""Export round trip: safetensors + JSON recipe, no pickle, tampering detected.

Pruned and low-rank decomposed networks alike.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from workers import export
from workers.compress import lowrank
from workers.compress.profiling import channel_groups
from workers.compress.prune import prune
from workers.errors import ExportError
from workers.export import Recipe
from workers.nets import zoo

SHAPE = (1, 28, 28)


def _pruned(arch: str) -> tuple[torch.nn.Module, Recipe]:
    torch.manual_seed(0)
    model = zoo.build(arch, in_channels=1, num_classes=10, input_size=28)
    example = torch.zeros(1, *SHAPE)
    model.eval()
    _, groups = channel_groups(model, example)
    counts = [max(1, (g.channels * (i % 3 + 1)) // 4) for i, g in enumerate(groups)]
    kept = prune(model, counts, example_inputs=example)
    # Non-trivial BN statistics, so the round trip checks buffers too.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, *SHAPE))
    model.eval()
    return model, Recipe.for_model(model, kept, SHAPE)


@pytest.mark.parametrize("arch", ["resnet20", "lenet5"])
def test_round_trip(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, recipe = _pruned(arch)
    export.save(tmp_path, model, recipe)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "recipe.json"]

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = export.load(tmp_path)
    assert not loaded.training
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_recipe_json(tmp_path: Path) -> None:
    model, recipe = _pruned("lenet5")
    export.save(tmp_path, model, recipe)
    data = json.loads((tmp_path / "recipe.json").read_text())
    assert data["format"] == 1
    assert data["arch"] == "lenet5"
    assert data["arch_kwargs"] == {"in_channels": 1, "num_classes": 10, "input_size": 28}
    assert data["input_shape"] == [1, 28, 28]
    assert "lowrank" not in data  # pruned-only recipes read as before the operator existed
    assert Recipe.from_dict(data) == recipe


def _tamper(directory: Path, edit: object) -> None:
    path = directory / "recipe.json"
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["kept"].update({"conv1": [0, 1, 999]}),
        lambda d: d["kept"].update({"conv1": [0.5]}),
        lambda d: d["kept"].pop("conv1"),
        lambda d: d.update({"arch": "resnet56"}),
        lambda d: d.update({"arch": "evil"}),
        lambda d: d.update({"format": 2}),
        lambda d: d["arch_kwargs"].update({"num_classes": 3}),
    ],
)
def test_tampered_recipe_raises(tmp_path: Path, edit: object) -> None:
    model, recipe = _pruned("resnet20")
    export.save(tmp_path, model, recipe)
    _tamper(tmp_path, edit)
    with pytest.raises(ExportError):
        export.load(tmp_path)


def test_missing_or_corrupt_files(tmp_path: Path) -> None:
    model, recipe = _pruned("lenet5")
    export.save(tmp_path, model, recipe)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ExportError):
        export.load(tmp_path)
    (tmp_path / "recipe.json").unlink()
    with pytest.raises(ExportError, match="missing"):
        export.load(tmp_path)


def test_onnx_is_optional(tmp_path: Path) -> None:
    model, _ = _pruned("lenet5")
    path = export.export_onnx(tmp_path, model, SHAPE)
    assert path is None or path.is_file()


def _decomposed() -> tuple[torch.nn.Module, Recipe]:
    model, recipe = _pruned("resnet20")
    ranks = {"conv1": 2, "layer1.0.conv1": 2, "layer2.0.downsample.0": 3, "layer3.2.conv2": 60}
    plans = lowrank.decompose(model, ranks, {"layer1.0.conv1": 2})
    assert set(plans) == {"conv1", "layer1.0.conv1", "layer2.0.downsample.0"}
    return model, Recipe.for_model(model, recipe.kept, SHAPE, plans)


def test_pruned_and_decomposed_round_trip(tmp_path: Path) -> None:
    model, recipe = _decomposed()
    export.save(tmp_path, model, recipe)
    data = json.loads((tmp_path / "recipe.json").read_text())
    assert data["lowrank"]["layer1.0.conv1"] == {"rank": 2, "slices": 2}
    assert Recipe.from_dict(data) == recipe
    loaded = export.load(tmp_path)
    assert isinstance(loaded.get_submodule("layer1.0.conv1"), torch.nn.Sequential)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    onnx = export.export_onnx(tmp_path, loaded, SHAPE)
    assert onnx is not None and onnx.stat().st_size > 0


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["lowrank"].update({"layer3.2.conv2": {"rank": 63, "slices": 1}}),
        lambda d: d["lowrank"].update({"layer1.0.conv1": {"rank": 3, "slices": 2}}),
        lambda d: d["lowrank"].update({"layer1.0.conv1": {"rank": 2, "slices": 1}}),
        lambda d: d["lowrank"].update({"bn1": {"rank": 2, "slices": 1}}),
        lambda d: d["lowrank"].update({"conv1": {"rank": 2.0, "slices": 1}}),
        lambda d: d["lowrank"].update({"conv1": {"rank": 2}}),
    ],
)
def test_tampered_lowrank_recipe_raises(tmp_path: Path, edit: object) -> None:
    model, recipe = _decomposed()
    export.save(tmp_path, model, recipe)
    _tamper(tmp_path, edit)
    with pytest.raises(ExportError):
        export.load(tmp_path)
