"""Datasets: deterministic splits, honest test sets, normalised batches on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.settings import Settings
from core.spec import JobSpec
from workers.errors import DatasetNotFound
from workers.nets import data
from workers.steps.context import load_splits

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


def test_a_fixed_split_seed_keeps_the_split_across_job_seeds(tmp_path: Path) -> None:
    """``dataset.split_seed``: jobs of other seeds validate on the images a baseline never saw."""

    def val_of(seed: int, split_seed: int | None, val_fraction: float = 0.1) -> torch.Tensor:
        spec = JobSpec.model_validate(
            {
                "name": "split",
                "target": {"flops_ratio": 0.5},
                "dataset": {
                    "name": "digits", "val_fraction": val_fraction, "split_seed": split_seed,
                },
                "seed": seed,
            }
        )  # fmt: skip
        return load_splits(spec, Settings(home=tmp_path), "cpu").val.images

    assert torch.equal(val_of(1, 0), val_of(2, 0))
    assert torch.equal(val_of(0, None), val_of(5, 0))
    assert not torch.equal(val_of(1, None), val_of(2, None))
    # A smaller held-out part of the same split is inside the larger one (bench/search_quality).
    small, large = val_of(1, 0, 0.02), val_of(2, 0, 0.1)
    assert torch.equal(small, large[: len(small)])


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
    out = data.augmented(images, torch.Generator().manual_seed(0), hflip=False)
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


def test_builtin_at_another_size_and_three_channels() -> None:
    ds = data.load("synthetic", seed=0, val_fraction=0.1, input_size=32, channels=3)
    assert (ds.in_channels, ds.size, len(ds.mean), len(ds.std)) == (3, 32, 3, 3)
    assert isinstance(ds.train, data.MemorySplit)
    assert ds.train.images.shape[1:] == (1, 28, 28)  # stored native, resized per batch
    x, y = next(ds.train.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert ds.mean[0] == ds.mean[1] == ds.mean[2]
    small = data.load("digits", seed=0, val_fraction=0.1, input_size=14)
    assert next(small.test.batches(8, shuffle=False, generator=None))[0].shape == (8, 1, 14, 14)


def test_builtin_defaults_are_the_native_images() -> None:
    plain = data.load("synthetic", seed=0, val_fraction=0.1)
    explicit = data.load("synthetic", seed=0, val_fraction=0.1, input_size=28, channels=1)
    assert (plain.mean, plain.std) == (explicit.mean, explicit.std)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = plain.train.batches(64, shuffle=True, generator=gen_a, augment=True)
    b = explicit.train.batches(64, shuffle=True, generator=gen_b, augment=True)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_fit_resizes_with_interpolation_and_repeats_grey() -> None:
    images = torch.full((2, 1, 28, 28), 100, dtype=torch.uint8)
    images[:, :, :, 14:] = 200
    out = data.fit(images, 56, 3)
    assert out.shape == (2, 3, 56, 56) and out.dtype == torch.uint8
    assert int(out[0, 2, 0, 0]) == 100 and int(out[0, 2, 0, -1]) == 200
    assert data.fit(images, None, None) is images


def test_builtin_augmentation_kinds_and_given_stats() -> None:
    def split(**options: object) -> data.MemorySplit:
        ds = data.load("fashion-mnist", dirs=[FASHION_DIR], seed=0, val_fraction=0.1, **options)  # type: ignore[arg-type]
        assert isinstance(ds.train, data.MemorySplit)
        return ds.train

    assert (split().pad, split().hflip) == (2, True)  # default: shift, flips for clothes
    assert (split(augment="crop_flip", input_size=32).pad, split(augment="none").pad) == (4, 0)
    given = data.load("digits", seed=0, val_fraction=0.1, channels=3, mean=(0.5,), std=(0.25,))
    with pytest.raises(ValueError, match="mean and std together"):
        data.load("digits", seed=0, val_fraction=0.1, mean=(0.5,), std=(0.2, 0.2))
    assert (given.mean, given.std) == ((0.5,) * 3, (0.25,) * 3)
    x, _ = next(given.test.batches(4, shuffle=False, generator=None))
    assert isinstance(given.test, data.MemorySplit)
    expected = (given.test.images[:4].float().div(255).expand(-1, 3, -1, -1) - 0.5) / 0.25
    assert torch.allclose(x, expected)
    with pytest.raises(ValueError, match="unknown augment"):
        data.load("digits", seed=0, val_fraction=0.1, augment="mixup")


def test_a_three_channel_network_runs_on_fashion_mnist() -> None:
    from workers.nets import zoo

    ds = data.load(
        "fashion-mnist", dirs=[FASHION_DIR], seed=0, val_fraction=0.1, input_size=32, channels=3
    )
    model = zoo.build("resnet20", in_channels=3, num_classes=ds.num_classes, input_size=ds.size)
    x, y = next(ds.train.batches(8, shuffle=True, generator=torch.Generator(), augment=True))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)


def test_crop_augment_is_bounded_by_its_padding() -> None:
    images = torch.zeros(64, 1, 32, 32, dtype=torch.uint8)
    images[:, :, 16, 16] = 255
    out = data.augmented(images, torch.Generator().manual_seed(0), pad=4, hflip=False)
    rows, cols = torch.nonzero(out[:, 0] == 255, as_tuple=True)[1:]
    assert len(rows) == 64 and int((rows - 16).abs().max()) == 4
    assert int((cols - 16).abs().max()) == 4
    assert data.augmented(images, None, pad=0, hflip=False) is images


def test_index_batches() -> None:
    assert data.index_batches(0, 4, True, None, None) == []
    batches = data.index_batches(10, 4, False, None, 2)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="batch_size"):
        data.index_batches(10, 0, False, None, None)
