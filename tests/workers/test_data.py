"""Datasets: deterministic splits, honest test sets, normalised batches on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers import data
from workers.errors import DatasetNotFound

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("name", ["synthetic", "digits"])
def test_shapes_and_dtypes(name: str) -> None:
    ds = data.load(name, seed=0, val_fraction=0.1)
    assert (ds.num_classes, ds.in_channels, ds.size) == (10, 1, 28)
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (1, 28, 28)
        assert split.labels.dtype == torch.int64
        assert len(split) == split.images.shape[0] > 0
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < ds.num_classes
    assert len(ds.val) == round(0.1 * (len(ds.train) + len(ds.val)))
    assert len(ds.mean) == len(ds.std) == 1


@pytest.mark.parametrize("name", ["synthetic", "digits"])
def test_split_is_deterministic_by_seed(name: str) -> None:
    a = data.load(name, seed=3, val_fraction=0.2)
    b = data.load(name, seed=3, val_fraction=0.2)
    c = data.load(name, seed=4, val_fraction=0.2)
    assert torch.equal(a.val.images, b.val.images)
    assert torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)
    # The test split never depends on the job seed.
    assert torch.equal(a.test.images, c.test.images)
    assert torch.equal(a.test.labels, c.test.labels)


def test_digits_test_split_is_about_a_fifth() -> None:
    ds = data.load("digits", seed=0, val_fraction=0.1)
    total = len(ds.train) + len(ds.val) + len(ds.test)
    assert total == 1797
    assert 0.18 < len(ds.test) / total < 0.22
    assert set(ds.test.labels.tolist()) == set(range(10))
    assert not ds.train.hflip


def test_subset_limits_training_images() -> None:
    ds = data.load("synthetic", seed=0, val_fraction=0.1, subset=50)
    assert len(ds.train) == 50
    again = data.load("synthetic", seed=0, val_fraction=0.1, subset=50)
    assert torch.equal(ds.train.images, again.train.images)


def test_batches_are_normalised() -> None:
    ds = data.load("synthetic", seed=0, val_fraction=0.1)
    xs, ys = [], []
    for x, y in ds.train.batches(128, shuffle=False, generator=None):
        assert x.dtype == torch.float32
        xs.append(x)
        ys.append(y)
    x_all = torch.cat(xs)
    assert x_all.shape[0] == len(ds.train)
    assert abs(float(x_all.mean())) < 0.05
    assert abs(float(x_all.std()) - 1.0) < 0.05
    assert torch.equal(torch.cat(ys), ds.train.labels)


def test_shuffle_and_augment_are_reproducible() -> None:
    ds = data.load("synthetic", seed=0, val_fraction=0.1)

    def first(seed: int, augment: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return next(ds.train.batches(32, shuffle=True, generator=gen, augment=augment))[0]

    assert torch.equal(first(1, True), first(1, True))
    assert not torch.equal(first(1, True), first(2, True))
    assert first(1, True).shape == (32, 1, 28, 28)
    # Augmentation shifts images but keeps the order and the label.
    plain, shifted = first(1, False), first(1, True)
    assert not torch.equal(plain, shifted)


def test_limit_stops_early() -> None:
    ds = data.load("synthetic", seed=0, val_fraction=0.1)
    batches = list(ds.train.batches(10, shuffle=True, generator=None, limit=3))
    assert len(batches) == 3


def test_augment_shift_is_bounded() -> None:
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 14, 14] = 255
    out = data._augment(images, torch.Generator().manual_seed(0), hflip=False)
    rows, cols = torch.nonzero(out[:, 0] == 255, as_tuple=True)[1:]
    assert out.shape == images.shape
    assert int((rows - 14).abs().max()) <= 2 and int((cols - 14).abs().max()) <= 2
    assert len(rows) == 64


def test_fashion_mnist_loads() -> None:
    ds = data.load("fashion-mnist", dirs=[FASHION_DIR], seed=0, val_fraction=0.1, subset=1000)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 6000, 10000)
    assert ds.num_classes == 10 and ds.size == 28
    assert ds.train.hflip


def test_fashion_mnist_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFound) as info:
        data.load("fashion-mnist", dirs=[empty], seed=0, val_fraction=0.1)
    message = str(info.value)
    assert str(empty) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "PRUNESEARCH_DATA_DIR" in message


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("imagenet", seed=0, val_fraction=0.1)
