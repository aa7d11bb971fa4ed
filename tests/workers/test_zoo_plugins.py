"""Users' own architectures: ``prunesearch.models`` entry points, torchvision / timm names.

The plugin is a real installed distribution: a package plus its
``.dist-info`` (METADATA, entry_points.txt) in a folder that a subprocess
gets on its ``PYTHONPATH``, so discovery goes through importlib.metadata
exactly as for a pip-installed package, and this test process stays clean.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from core.spec import JobSpec
from tests.support import install_plugin
from workers.errors import UnknownArchitecture
from workers.nets import zoo

ROOT = Path(__file__).resolve().parents[2]

PACKAGE = """
from torch import nn


class Tiny(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def build(*, in_channels, num_classes, input_size):
    return Tiny(in_channels, num_classes)


def no_fc(*, in_channels, num_classes, input_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, num_classes))


def no_classifier(*, in_channels, num_classes, input_size):
    return nn.Sequential(nn.Flatten(), nn.ReLU())


def named_head(*, in_channels, num_classes, input_size):
    model = nn.Sequential(nn.Conv2d(in_channels, num_classes, 1), nn.AdaptiveAvgPool2d(1))
    model.prunesearch_classifier = "0"
    return model


def not_a_module(**kwargs):
    return "a network, promise"
"""

ENTRY_POINTS = {
    "tinynet": "mynets:build",
    "nofc": "mynets:no_fc",
    "noclassifier": "mynets:no_classifier",
    "namedhead": "mynets:named_head",
    "notmodule": "mynets:not_a_module",
    "broken": "mynets_missing:build",
}

PROBE = """
import json, subprocess, sys
import torch
from core.spec import JobSpec
from workers import export
from workers.nets import zoo
from tests.support import install_plugin
from workers.errors import UnknownArchitecture
from workers.compress.profiling import channel_groups
from workers.compress.prune import prune

out = {"known": zoo.known()}
model = zoo.build("tinynet", in_channels=1, num_classes=7, input_size=28).eval()
out["arch"], out["arch_kwargs"] = model.arch, model.arch_kwargs
out["logits"] = list(model(torch.zeros(2, 1, 28, 28)).shape)

# Pruned, exported and rebuilt from the recipe alone, like a zoo network.
example = torch.zeros(1, 1, 28, 28)
_, groups = channel_groups(model, example)
kept = prune(model, [max(1, g.channels // 2) for g in groups], example_inputs=example)
export.save(__import__("pathlib").Path(sys.argv[1]), model, export.Recipe.for_model(
    model, kept, (1, 28, 28)))
loaded = export.load(__import__("pathlib").Path(sys.argv[1]))
x = torch.randn(3, 1, 28, 28)
with torch.no_grad():
    out["round_trip"] = bool(torch.allclose(loaded(x), model(x)))
out["groups"] = [g.channels for g in groups]

out["classifiers"] = {
    name: zoo.classifier_of(zoo.build(name, in_channels=1, num_classes=7, input_size=28))[0]
    for name in ("tinynet", "nofc", "namedhead")
}
for name in ("noclassifier", "notmodule", "broken", "tinynet2"):
    try:
        zoo.build(name, in_channels=1, num_classes=7, input_size=28)
        out[name] = None
    except UnknownArchitecture as exc:
        out[name] = str(exc)

spec = {"name": "j", "target": {"flops_ratio": 0.5}}
out["spec_ok"] = JobSpec.model_validate({**spec, "model": {"arch": "tinynet"}}).model.arch
try:
    JobSpec.model_validate({**spec, "model": {"arch": "tinynet2"}})
    out["spec_unknown"] = None
except ValueError as exc:
    out["spec_unknown"] = str(exc)

sig = subprocess.run(
    [sys.executable, "-m", "workers.nets.signature", "tinynet", "--in-channels", "3",
     "--num-classes", "5", "--input-size", "32"], capture_output=True, text=True, check=True)
out["signature"] = json.loads(sig.stdout)["tensors"]["fc.weight"]
print(json.dumps(out))
"""


def _run_with_plugin(tmp_path: Path) -> dict[str, Any]:
    site = tmp_path / "site"
    install_plugin(site, "mynets", PACKAGE, ENTRY_POINTS)
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE))
    paths = [str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "export")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_an_entry_point_plugin_builds_prunes_exports_and_validates(tmp_path: Path) -> None:
    out = _run_with_plugin(tmp_path)

    assert out["known"] == [
        *zoo.ARCHS,
        "broken",
        "namedhead",
        "noclassifier",
        "nofc",
        "notmodule",
        "tinynet",
    ]
    assert out["arch"] == "tinynet"
    assert out["arch_kwargs"] == {"in_channels": 1, "num_classes": 7, "input_size": 28}
    assert out["logits"] == [2, 7]
    assert out["groups"] == [8, 16] and out["round_trip"]
    # The classifier is the last Linear whatever its name, or the module the network names.
    assert out["classifiers"] == {"tinynet": "fc", "nofc": "1", "namedhead": "0"}
    assert "no Linear or Conv2d layer" in out["noclassifier"]
    assert "not a torch.nn.Module" in out["notmodule"]
    assert "mynets_missing:build cannot be loaded" in out["broken"]
    assert "unknown architecture 'tinynet2'" in out["tinynet2"] and "tinynet" in out["tinynet2"]
    assert out["spec_ok"] == "tinynet"
    assert "unknown architecture 'tinynet2'" in out["spec_unknown"]
    assert "tinynet" in out["spec_unknown"]
    assert out["signature"] == {"dtype": "F32", "shape": [5, 16]}


def test_without_the_plugin_installed_its_name_is_unknown() -> None:
    spec = {"name": "j", "target": {"flops_ratio": 0.5}}
    with pytest.raises(ValueError, match=r"unknown architecture 'tinynet'.*lenet5"):
        JobSpec.model_validate({**spec, "model": {"arch": "tinynet"}})
    with pytest.raises(UnknownArchitecture, match="resnet56"):
        zoo.build("tinynet", in_channels=1, num_classes=10, input_size=28)


@pytest.mark.parametrize("hub", ["torchvision", "timm"])
def test_a_hub_model_without_its_package_says_what_to_install(hub: str) -> None:
    if importlib.util.find_spec(hub) is not None:
        pytest.skip(f"{hub} is installed here")
    with pytest.raises(UnknownArchitecture, match=f"pip install {hub}"):
        zoo.build(f"{hub}:resnet18", in_channels=3, num_classes=10, input_size=32)
    spec = {"name": "j", "target": {"flops_ratio": 0.5}}
    with pytest.raises(ValueError, match=f"needs the {hub} package"):
        JobSpec.model_validate({**spec, "model": {"arch": f"{hub}:resnet18"}})
    with pytest.raises(ValueError, match="model name"):
        JobSpec.model_validate({**spec, "model": {"arch": f"{hub}:../x"}})
