"""Image folders: layouts, errors, decoding, streaming vs in-memory, augmentation, wiring."""

from __future__ import annotations

import math
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.settings import Settings
from core.spec import DatasetSpec, JobSpec
from tests.imagefolders import write_digits, write_fashion_mnist, write_odd_images
from workers.errors import DatasetInvalid, DatasetNotFound, ImageUnreadable
from workers.nets import data, imagefolder, train, zoo
from workers.steps.context import load_splits


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 digits in the flat layout (12 per class: 10 train, 2 test)."""
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=12)


def _load(root: Path, **options: object) -> data.DataSplits:
    return imagefolder.load(root, seed=0, val_fraction=0.2, **options)  # type: ignore[arg-type]


def _all(split: data.Split, seed: int, augment: bool = False) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    return list(split.batches(16, shuffle=True, generator=gen, augment=augment))


# Layouts and classes


def test_flat_layout_has_a_fixed_stratified_test_split(digits_root: Path) -> None:
    listing = imagefolder.scan(digits_root)
    assert listing.classes == tuple(str(k) for k in range(10))
    assert (len(listing.train), len(listing.test)) == (100, 20)
    assert sorted(label for _, label in listing.test) == sorted(list(range(10)) * 2)
    assert imagefolder.scan(digits_root) == listing  # the same files, in the same order
    a = imagefolder.load(digits_root, seed=0, val_fraction=0.2)
    b = imagefolder.load(digits_root, seed=1, val_fraction=0.2)
    assert isinstance(a.test, data.MemorySplit) and isinstance(b.test, data.MemorySplit)
    assert torch.equal(a.test.images, b.test.images)  # never depends on the job seed
    assert isinstance(a.val, data.MemorySplit) and isinstance(b.val, data.MemorySplit)
    assert not torch.equal(a.val.labels, b.val.labels)
    assert (len(a.train), len(a.val)) == (80, 20)
    assert (a.num_classes, a.in_channels, a.size, a.classes) == (10, 3, 32, listing.classes)


def test_train_and_test_folders_or_val(tmp_path: Path) -> None:
    root = write_fashion_mnist(tmp_path / "fm", per_class=8, split_layout=True)
    listing = imagefolder.scan(root)
    assert listing.classes[0] == "0_tshirt" and len(listing.classes) == 10
    assert (len(listing.train), len(listing.test)) == (80, 20)
    assert all("/test/" in path for path, _ in listing.test)
    (root / "test").rename(root / "val")
    assert imagefolder.scan(root).test == tuple(
        (path.replace("/test/", "/val/"), label) for path, label in listing.test
    )
    shutil.copytree(root / "val", root / "test")  # test/ wins over val/
    assert all("/test/" in path for path, _ in imagefolder.scan(root).test)


def test_a_wrapping_folder_hidden_files_and_other_files_are_skipped(tmp_path: Path) -> None:
    inner = write_odd_images(tmp_path / "archive" / "mine")
    (tmp_path / "archive" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "archive" / "__MACOSX" / "mine").mkdir(parents=True)
    (inner / "bright" / "README.txt").write_text("not an image")
    (inner / "bright" / ".hidden.png").write_bytes(b"not an image either")
    listing = imagefolder.scan(tmp_path / "archive")
    assert listing.root == inner and listing.classes == ("bright", "dark")
    files = [path for path, _ in listing.train + listing.test]
    assert len(files) == 30 and sum("/deeper/" in f for f in files) == 12  # nested folders too


# Errors, each one named


def _classes(root: Path, **counts: int) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "nope")) as info:
        imagefolder.scan(tmp_path / "nope")
    assert not isinstance(info.value, DatasetInvalid)


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    with pytest.raises(DatasetInvalid, match="at least 2"):
        imagefolder.scan(_classes(tmp_path, only=3))


def test_a_class_without_images(tmp_path: Path) -> None:
    root = _classes(tmp_path, cat=3, dog=3)
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetInvalid, match="class 'emu' has no images"):
        imagefolder.scan(root)


def test_test_classes_must_be_the_train_classes(tmp_path: Path) -> None:
    _classes(tmp_path / "train", a=2, b=2, c=2)
    _classes(tmp_path / "test", a=1, b=1, d=1)
    with pytest.raises(DatasetInvalid, match=r"only in train/: \['c'\]; only in test/: \['d'\]"):
        imagefolder.scan(tmp_path)


def test_train_without_test(tmp_path: Path) -> None:
    _classes(tmp_path / "train", a=5, b=5)
    # Alone, train/ is a wrapping folder of the flat layout...
    assert len(imagefolder.scan(tmp_path).test) == 2
    # ...but beside other folders, the test split is missing.
    _classes(tmp_path / "extra", a=1, b=1)
    with pytest.raises(DatasetInvalid, match="neither test/ nor val/"):
        imagefolder.scan(tmp_path)


def test_too_few_images_for_a_test_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetInvalid, match="too few images"):
        imagefolder.scan(_classes(tmp_path, a=1, b=1))


@pytest.mark.parametrize("cache_mb", [data.DEFAULT_CACHE_MB, 0.0])
def test_an_unreadable_image_is_named(tmp_path: Path, cache_mb: float) -> None:
    root = _classes(tmp_path, a=5, b=5)
    bad = root / "b" / "broken.png"
    bad.write_bytes((root / "b" / "0.png").read_bytes()[:40])  # truncated
    with pytest.raises(ImageUnreadable) as info:
        ds = imagefolder.load(root, seed=0, val_fraction=0.0, cache_mb=cache_mb)
        for split in (ds.train, ds.test):  # streaming: it fails in the batch that holds it
            _all(split, 0)
    message = str(info.value)
    assert message.startswith(str(bad)) and "Traceback" not in message


# Decoding


def test_every_mode_and_size_decodes_to_the_input_shape(tmp_path: Path) -> None:
    listing = imagefolder.scan(write_odd_images(tmp_path))
    for path, label in listing.train + listing.test:
        for channels in (1, 3):
            x = imagefolder.decode(path, 24, channels)
            assert x.shape == (channels, 24, 24) and x.dtype == torch.uint8
        if path.endswith(("grey_0.png", "grey16_0.png")):  # 16-bit grey scaled, not clipped
            assert torch.all(x == (220 if label == 0 else 40))
        if "rgba" in path:  # transparent pixels over black
            assert torch.all(x[:, :, 0] == 0) and int(x[0, 12, -1]) > 0


def test_shorter_side_is_resized_and_the_centre_cropped(tmp_path: Path) -> None:
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :16, 0], wide[:, 16:48, 1], wide[:, 48:, 2] = 255, 255, 255
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(wide.transpose(1, 0, 2)).save(tmp_path / "tall.png")
    for name, inner in (("wide", (slice(None), slice(1, -1))), ("tall", (slice(1, -1),))):
        x = imagefolder.decode(tmp_path / f"{name}.png", 16, 3)
        assert x.shape == (3, 16, 16)
        # Halved to 32x16, the centre 16 columns (rows) are the green middle half.
        assert int(x[1][inner].min()) > 200 and int(x[0][inner].max()) < 60
        assert int(x[2][inner].max()) < 60
    same = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(same).save(tmp_path / "same.png")
    assert torch.equal(
        imagefolder.decode(tmp_path / "same.png", 32, 3).permute(1, 2, 0), torch.from_numpy(same)
    )
    grey = imagefolder.decode(tmp_path / "same.png", 32, 1)
    luma = np.array(Image.fromarray(same).convert("L"))
    assert torch.equal(grey[0], torch.from_numpy(luma))


# Streaming and the in-memory fast path


def test_streaming_and_memory_give_the_same_batches(digits_root: Path) -> None:
    memory = _load(digits_root)
    stream = _load(digits_root, cache_mb=0.0, loader_workers=2)
    assert isinstance(memory.train, data.MemorySplit)
    assert isinstance(stream.train, imagefolder.StreamSplit)
    assert (memory.mean, memory.std) == (stream.mean, stream.std)
    for name in ("train", "val", "test"):
        a, b = getattr(memory, name), getattr(stream, name)
        assert len(a) == len(b)
        for augment in (False, True):
            for (xa, ya), (xb, yb) in zip(_all(a, 7, augment), _all(b, 7, augment), strict=True):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
                assert xa.dtype == torch.float32 and ya.dtype == torch.int64
    limited = list(stream.test.batches(4, shuffle=False, generator=None, limit=2))
    assert [len(y) for _, y in limited] == [4, 4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streaming_and_memory_agree_on_cuda(digits_root: Path) -> None:
    memory = _load(digits_root, device="cuda")
    stream = _load(digits_root, device="cuda", cache_mb=0.0, loader_workers=2)
    assert memory.train.device.type == stream.train.device.type == "cuda"
    for (xa, ya), (xb, yb) in zip(
        _all(memory.train, 3, True), _all(stream.train, 3, True), strict=True
    ):
        assert xa.is_cuda and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_streaming_decodes_in_loader_workers(digits_root: Path) -> None:
    ds = _load(digits_root, cache_mb=0.0, loader_workers=2)
    before = set(multiprocessing.active_children())
    batches = ds.train.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0))
    next(batches)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    batches.close()
    assert not workers & set(multiprocessing.active_children())  # shut down with the pass
    serial = _load(digits_root, cache_mb=0.0, loader_workers=0)
    next(serial.train.batches(16, shuffle=False, generator=None))
    # No new process (a child of an earlier test may have ended meanwhile).
    assert not set(multiprocessing.active_children()) - before


def test_stats_sample_is_capped_and_spread() -> None:
    chunks = imagefolder._sample_chunks(12_000)
    sample = torch.cat(chunks)
    assert len(sample) == imagefolder.STATS_SAMPLE == len(set(sample.tolist()))
    assert (int(sample[0]), int(sample[-1])) == (0, 11_999)
    assert max(len(c) for c in chunks) == imagefolder.DECODE_BATCH


# Augmentation and normalisation


@pytest.mark.parametrize(
    ("augment", "pad", "hflip"),
    [("default", 4, True), ("crop_flip", 4, True), ("shift", 2, False), ("none", 0, False)],
)
def test_augmentation_kinds(digits_root: Path, augment: str, pad: int, hflip: bool) -> None:
    ds = _load(digits_root, augment=augment)
    assert isinstance(ds.train, data.MemorySplit)
    assert (ds.train.pad, ds.train.hflip) == (pad, hflip)
    first = _all(ds.train, 1, augment=True)[0][0]
    assert first.shape == (16, 3, 32, 32)
    assert torch.equal(first, _all(ds.train, 1, augment=True)[0][0])
    plain = _all(ds.train, 1)[0][0]
    if augment == "none":
        assert torch.equal(first, plain)
    else:
        assert not torch.equal(first, plain)
        assert not torch.equal(first, _all(ds.train, 2, augment=True)[0][0])


def test_normalisation_computed_and_given(digits_root: Path) -> None:
    ds = _load(digits_root)
    train_x = imagefolder.decoded(imagefolder.scan(digits_root), 32, 3, 2)[0].float() / 255
    assert ds.mean == pytest.approx(train_x.mean((0, 2, 3)).tolist(), abs=1e-5)
    assert ds.std == pytest.approx(train_x.std((0, 2, 3)).tolist(), abs=1e-4)
    x = torch.cat([x for x, _ in _all(ds.train, 0)])
    assert abs(float(x.mean())) < 0.2 and abs(float(x.std()) - 1) < 0.2

    for cache_mb in (data.DEFAULT_CACHE_MB, 0.0):
        given = _load(digits_root, mean=(0.5,), std=(0.25,), channels=1, cache_mb=cache_mb)
        assert (given.mean, given.std, given.in_channels) == ((0.5,), (0.25,), 1)
        x, _ = next(given.test.batches(4, shuffle=False, generator=None))
        raw = imagefolder.decode(imagefolder.scan(digits_root).test[0][0], 32, 1)
        assert torch.allclose(x[0], (raw.float() / 255 - 0.5) / 0.25)
    with pytest.raises(ValueError, match="mean and std together"):
        _load(digits_root, mean=(0.5, 0.5), std=(0.2, 0.2))


# A real network on a streamed folder, and the job wiring


def test_resnet20_trains_on_a_streamed_folder(tmp_path: Path) -> None:
    root = write_fashion_mnist(tmp_path / "fm", per_class=6, split_layout=True)
    ds = _load(root, cache_mb=0.0, loader_workers=2)
    assert isinstance(ds.train, imagefolder.StreamSplit)
    model = zoo.build("resnet20", in_channels=3, num_classes=10, input_size=32)
    stats = train.fit(model, ds.train, steps=3, batch_size=16, seed=0)
    assert stats["steps"] == 3 and math.isfinite(stats["final_loss"])
    assert 0.0 <= train.evaluate(model, ds.test, batch_size=32) <= 1.0


def _spec(**dataset: object) -> JobSpec:
    folder = DatasetSpec(name="imagefolder", **dataset)  # type: ignore[arg-type]
    return JobSpec(name="folder", dataset=folder, target={"flops_ratio": 0.5})  # type: ignore[arg-type]


def test_load_splits_reads_path_under_the_data_dir(tmp_path: Path, digits_root: Path) -> None:
    settings = Settings(home=tmp_path, data_dir=tmp_path / "data", dataset_cache_mb=0)
    shutil.copytree(digits_root, tmp_path / "data" / "sets" / "digits")
    ds = load_splits(_spec(path="sets/digits", loader_workers=0), settings, "cpu")
    assert isinstance(ds.train, imagefolder.StreamSplit)
    assert (ds.in_channels, ds.size, ds.num_classes) == (3, 32, 10)

    (tmp_path / "data" / "escape").symlink_to(digits_root)
    with pytest.raises(DatasetNotFound, match="outside the data directory"):
        load_splits(_spec(path="escape"), settings, "cpu")
    with pytest.raises(DatasetNotFound, match="PRUNESEARCH_DATA_DIR") as info:
        load_splits(_spec(path="sets/nope"), settings, "cpu")
    assert str((tmp_path / "data" / "sets" / "nope").resolve()) in str(info.value)
    with pytest.raises(DatasetNotFound, match="none is set: set PRUNESEARCH_DATA_DIR"):
        load_splits(_spec(path="sets/digits"), Settings(home=tmp_path, data_dir=None), "cpu")


def test_load_splits_reads_an_upload(tmp_path: Path, digits_root: Path) -> None:
    settings = Settings(home=tmp_path, artifact_dir=tmp_path / "artifacts")
    upload = "0123456789abcdef0123456789abcdef"
    folder = settings.dataset_upload_dir(upload)
    assert folder == tmp_path / "artifacts" / "datasets" / upload
    shutil.copytree(digits_root, folder)
    ds = load_splits(_spec(upload=upload, input_size=16, channels=1), settings, "cpu")
    assert isinstance(ds.train, data.MemorySplit)
    assert (ds.in_channels, ds.size) == (1, 16)
    assert next(ds.train.batches(8, shuffle=False, generator=None))[0].shape == (8, 1, 16, 16)
    with pytest.raises(DatasetNotFound, match="POST /v1/datasets"):
        load_splits(_spec(upload="f" * 32), settings, "cpu")
    with pytest.raises(ValueError, match="not a dataset upload id"):
        settings.dataset_upload_dir("../etc")
