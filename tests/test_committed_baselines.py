"""The committed baselines are what their records say: same bytes, same test accuracy.

``bench/search_quality.py`` and every comparison in ``docs/benchmarks.md``
start from these files, so a file replaced without its record (or a record
edited by hand) would silently change every figure. Each file is hashed
and re-scored on the whole Fashion-MNIST test set (10,000 images) here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from workers.nets import data, train, zoo

BASELINES = Path(__file__).resolve().parent.parent / "baselines"
RECORDS = sorted(BASELINES.glob("*.json"))
FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
# What "converged" means for each network on Fashion-MNIST's test set: ResNet-20
# reaches about 93% there; a record below its floor was not trained to the end.
FLOORS = {"resnet20": 0.92, "resnet56": 0.93}


def test_there_is_a_committed_baseline() -> None:
    assert [p.stem for p in RECORDS] == sorted(p.stem for p in BASELINES.glob("*.safetensors"))
    assert any(p.stem.startswith("resnet20-") for p in RECORDS)


@pytest.mark.parametrize("record_path", RECORDS, ids=[p.stem for p in RECORDS])
def test_the_file_has_its_recorded_hash_and_test_accuracy(record_path: Path) -> None:
    record: dict[str, Any] = json.loads(record_path.read_text())
    weights = record_path.with_suffix(".safetensors")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == record["sha256"]
    assert record["test_accuracy"] >= FLOORS[record["arch"]]

    splits = data.load(
        record["dataset"],
        dirs=FASHION_DIRS,
        seed=record["recipe"]["seed"],
        val_fraction=record["recipe"]["val_fraction"],
    )
    model = zoo.build(
        record["arch"],
        in_channels=splits.in_channels,
        num_classes=splits.num_classes,
        input_size=splits.size,
    )
    model.load_state_dict(load_file(str(weights)), strict=True)
    assert len(splits.test) == record["test_images"] == 10_000
    # Recorded where it was trained (maybe a GPU): a few images may flip on this CPU.
    assert train.evaluate(model, splits.test) == pytest.approx(record["test_accuracy"], abs=2e-3)
    assert len(splits.train) == record["recipe"]["train_images"]
