"""A network that does not fit its dataset or the pruner is refused before any training.

The networks here are real modules; the plugin is a real installed
distribution (a package plus its ``.dist-info`` on ``sys.path``, found
through importlib.metadata as a pip-installed one would be), registered for
one test only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cli.local import run_local
from core.spec import JobSpec
from tests.support import install_plugin
from workers.compress.structure import check
from workers.errors import StructureError, UnknownArchitecture
from workers.nets import zoo
from workers.nets.hub_import import import_failure, import_hub

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "structure_test_nets"


class CifarLeNet(nn.Module):
    """The classic LeNet for 32x32 images: its classifier is sized for 5x5 maps."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(120, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(self.relu3(self.fc1(x.flatten(1))))


class Upsampling(nn.Module):
    """Runs at any size, but upsamples: a layer the exact cost model does not price."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.up = nn.Upsample(scale_factor=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.up(self.relu(self.conv(x)))).flatten(1))


def test_a_forward_that_does_not_fit_the_input_names_both_shapes_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(StructureError) as info:
        check(CifarLeNet(), input_shape=(3, 28, 28), num_classes=10)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert info.value.kind == "shape"
    assert "(3, 28, 28)" in message and "3x28x28" in message
    assert "1x256 and 400x120" in message  # the network's own expectation, quoted
    assert "layer fc1 (Linear)" in message
    assert "dataset.input_size" in message and "adaptive pooling" in message


def test_channels_that_do_not_fit_and_a_wrong_class_count_are_shape_errors() -> None:
    with pytest.raises(StructureError, match=r"layer conv1 \(Conv2d\).*3 channels") as info:
        check(CifarLeNet(in_channels=3), input_shape=(1, 32, 32), num_classes=10)
    assert "dataset.channels" in str(info.value)

    with pytest.raises(StructureError, match=r"shape \(1, 5\).*needs \(1, 10\)") as info:
        check(CifarLeNet(num_classes=5), input_shape=(3, 32, 32), num_classes=10)
    assert info.value.kind == "shape"
    # An unknown class count accepts any (1, K) output.
    assert check(CifarLeNet(num_classes=5), input_shape=(3, 32, 32), num_classes=None).groups


def test_a_layer_the_profile_cannot_model_is_named() -> None:
    with pytest.raises(StructureError) as info:
        check(Upsampling(), input_shape=(1, 28, 28), num_classes=10)
    assert info.value.kind == "structure"
    assert "layer up (Upsample)" in str(info.value)
    assert "replace" in str(info.value)


def test_a_network_with_nothing_to_prune_is_refused() -> None:
    only_classifier = nn.Sequential()
    only_classifier.add_module("flat", nn.Flatten())
    only_classifier.add_module("fc", nn.Linear(28 * 28, 10))
    with pytest.raises(StructureError, match="no prunable channel group"):
        check(only_classifier, input_shape=(1, 28, 28), num_classes=10)


@pytest.mark.parametrize("arch", zoo.ARCHS)
def test_zoo_networks_pass_and_report_timings(arch: str) -> None:
    model = zoo.build(arch, in_channels=3, num_classes=10, input_size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = check(model, input_shape=(3, 32, 32), num_classes=10)
    assert report.groups == len(report.profile.groups) >= 1
    assert report.profile.arch == arch and report.profile.input_shape == (3, 32, 32)
    assert report.flops > 0 and report.params == sum(p.numel() for p in model.parameters())
    assert report.forward_s > 0 and report.profile_s > 0
    assert model.training  # mode, weights and BN statistics as they were
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_subprocess_answers_in_json() -> None:
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers.compress.structure", *args],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
        )

    ok = run("lenet5", "--in-channels", "1", "--input-size", "28", "--num-classes", "10")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["ok"] is True and out["groups"] == 4 and out["profile_s"] > 0

    refused = run("lenet5", "--in-channels", "1", "--input-size", "16")
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["error"] == "args"

    items = [
        {"arch": "resnet20", "in_channels": 3, "input_size": 32, "num_classes": 10},
        {"arch": "nonesuch", "in_channels": 3, "input_size": 32, "num_classes": None},
    ]
    many = run("--many", stdin=json.dumps(items))
    assert many.returncode == 0, many.stderr
    lines = [json.loads(line) for line in many.stdout.splitlines()]
    assert [line["index"] for line in lines] == [0, 1]
    assert lines[0]["ok"] and lines[1]["error"] == "arch"


# --- the job's prepare -------------------------------------------------------------------

PACKAGE = """
from torch import nn


class CifarLeNet(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(120, num_classes)

    def forward(self, x):
        x = self.pool2(self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x))))))
        return self.fc(self.relu3(self.fc1(x.flatten(1))))


def build(*, in_channels, num_classes, input_size):
    return CifarLeNet(in_channels, num_classes)
"""


def install_cifar_plugin(site: Path) -> str:
    """Install ``cifarlenet`` into ``site``: a plugin whose network needs 32x32 inputs."""
    install_plugin(site, PLUGIN, PACKAGE, {"cifarlenet": f"{PLUGIN}:build"})
    return "cifarlenet"


@pytest.fixture
def cifar_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The plugin, importable by this process for one test."""
    name = install_cifar_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield name
    sys.modules.pop(PLUGIN, None)


def test_prepare_fails_a_mismatching_network_without_training(
    cifar_plugin: str, tmp_path: Path
) -> None:
    spec = JobSpec.model_validate(
        {
            "name": "mismatch",
            # Fifty epochs: had it trained, the test would take minutes, not a second.
            "model": {"arch": cifar_plugin, "pretrain_epochs": 50},
            "dataset": {"name": "synthetic"},  # 1x28x28 images
            "target": {"flops_ratio": 0.5},
            "search": {"n_trials": 2},
        }
    )
    start = time.perf_counter()
    job = run_local(spec, tmp_path / "out", progress=False)
    elapsed = time.perf_counter() - start

    assert job["status"] == "failed"
    assert job["error"].startswith("prepare: the network's forward fails on input (1, 28, 28)")
    assert "1x256 and 400x120" in job["error"] and "1x28x28 images" in job["error"]
    assert not list((tmp_path / "out").rglob("*.safetensors"))  # no baseline was written
    assert job["baseline"] is None
    assert elapsed < 15.0  # database, dataset and the check; no training


def test_the_same_network_at_its_size_passes_the_check(cifar_plugin: str) -> None:
    model = zoo.build(cifar_plugin, in_channels=1, num_classes=10, input_size=32)
    assert check(model, input_shape=(1, 32, 32), num_classes=10).groups == 3


# --- torchvision / timm that do not match torch ------------------------------------------


def test_a_torchvision_build_mismatch_says_which_versions_to_install() -> None:
    torch_version = str(torch.__version__)  # e.g. 2.13.0+cpu
    base, _, label = torch_version.partition("+")
    minor = int(base.split(".")[1])
    exc = RuntimeError("operator torchvision::nms does not exist")
    message = import_failure("torchvision", exc)
    assert message.startswith("torchvision")
    assert f"with torch {torch_version} installed here" in message
    assert "(operator torchvision::nms does not exist)" in message
    assert "must come from the same build (CPU or the same CUDA version)" in message
    assert f"pip install torch=={base} torchvision==0.{minor + 15}.*" in message
    if label:
        assert f"--index-url https://download.pytorch.org/whl/{label}" in message

    # timm imports torchvision: its failure points at torchvision, not at timm.
    nested = ImportError("cannot import name 'InterpolationMode' from 'torchvision.transforms'")
    assert import_failure("timm", nested).startswith("timm needs torchvision, but torchvision")


def test_import_hub_turns_a_failing_import_into_the_explained_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "structure_test_broken_hub"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(
        "raise RuntimeError('undefined symbol: _ZN3c1017RegisterOperators')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownArchitecture, match="cannot be imported with torch") as info:
        import_hub(name)
    assert "undefined symbol" in str(info.value) and f"pip install -U {name}" in str(info.value)
    with pytest.raises(UnknownArchitecture, match="not installed here: pip install"):
        import_hub("structure_test_no_such_hub")
