"""Hostile dataset archives: each is refused with a 4xx naming the problem and leaves nothing.

Nothing means: no dataset row, nothing under the datasets folder (not even a
hidden partial file or folder), and no file anywhere else changed or added
(a sentinel outside is what a link or a ``..`` would reach). One real app on
SQLite for the module, with small limits so that bombs are cheap to build.
Archives are made with the standard library and patched byte by byte where
it refuses to write something hostile.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.errors import ArchiveRefused
from core.settings import Settings
from service.archives import ArchiveLimits, open_archive
from tests.service.conftest import keyed_client
from tests.service.test_datasets import image, stored, tar_of, zip_of

LIMIT_MB = 2  # archives; they may unpack to 8 MiB
MAX_FILES = 60
GOOD = {f"{label}/{k}.png": image(k) for label in ("cat", "dog") for k in range(2)}


@dataclass(frozen=True)
class Env:
    client: TestClient
    settings: Settings
    root: Path  # everything the test may touch; the database is under root / "db"
    sentinel: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("hostile")
    settings = Settings(
        home=root / "home",
        database_url=f"sqlite:///{root / 'db' / 'prunesearch.db'}",
        redis_url=f"{redis_base_url}/13",
        max_dataset_mb=LIMIT_MB,
        max_dataset_files=MAX_FILES,
        rate_limit=0,
    )
    sentinel = root / "outside" / "sentinel.png"
    sentinel.parent.mkdir()
    sentinel.write_bytes(b"untouched")
    with keyed_client(settings, "alice") as client:
        yield Env(client, settings, root, sentinel)


def _tree(env: Env) -> dict[str, str]:
    """Every file outside the database folder, with a hash of its content."""
    return {
        str(p.relative_to(env.root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(env.root.rglob("*"))
        if p.is_file() and not p.is_relative_to(env.root / "db")
    }


# --- makers --------------------------------------------------------------------------------


def _info(name: str, kind: bytes, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _patch_zip(data: bytes, name: str, central: dict[int, int], local: dict[int, int]) -> bytes:
    """``data`` with 32- or 16-bit fields of ``name``'s headers set: {offset: value}."""
    out = bytearray(data)
    encoded = name.encode()
    for signature, fields, at_name in ((b"PK\x01\x02", central, 46), (b"PK\x03\x04", local, 30)):
        start = out.find(signature)
        while start >= 0:
            if out[start + at_name : start + at_name + len(encoded)] == encoded:
                for offset, value in fields.items():
                    wide = offset in (18, 20, 22, 24, 42)  # sizes and offsets; flags are 16-bit
                    struct.pack_into("<I" if wide else "<H", out, start + offset, value)
            start = out.find(signature, start + 4)
    return bytes(out)


def _zip_symlink() -> bytes:
    link = zipfile.ZipInfo("cat/link.png")
    link.external_attr = (0o120777 << 16) | 0x20
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in GOOD.items():
            z.writestr(name, data)
        z.writestr(link, "../../outside/sentinel.png")
    return buf.getvalue()


def _lying_sizes() -> bytes:
    """A member whose headers say 100 bytes while its deflate stream holds 3 MiB."""
    data = zip_of({**GOOD, "cat/big.png": image(0) + bytes(3 << 20)})
    return _patch_zip(data, "cat/big.png", {24: 100}, {22: 100})


def _overlapping() -> bytes:
    """Two central-directory entries over the same bytes (how the best zip bombs are made)."""
    data = zip_of({**GOOD, "dog/9.png": image(9)})
    return _patch_zip(data, "dog/9.png", {42: 0}, {})  # the first member's local header


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` over a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    )


def _jpeg_declaring(side: int) -> bytes:
    data = bytearray(image(0, fmt="JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, side, side)
    return bytes(data)


@functools.cache
def _zeros_gz(size: int, tar: bool) -> bytes:
    """``size`` zero bytes gzipped, bare or as the one image of a tar."""
    if tar:
        return tar_of([("cat/1.png", bytes(size)), ("dog/1.png", image(1))], "w:gz")
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return packer.compress(bytes(size)) + packer.flush()


def _tar_cut_at_a_member() -> bytes:
    """Two whole members, and neither the rest nor the end-of-archive blocks."""
    data = tar_of(list(GOOD.items()))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return data[: tf.getmembers()[2].offset]


HOSTILE: dict[str, tuple[Callable[[Path], bytes], int, str]] = {
    # name: (maker, given the sentinel's path; status; words in the message)
    "zip: ../ traversal": (lambda _: zip_of({**GOOD, "../../outside/evil.png": image(0)}), 422, "leaves the archive"),  # noqa: E501
    "tar: ../ inside a path": (lambda _: tar_of([*GOOD.items(), ("cat/../../../evil.png", image(0))]), 422, "leaves the archive"),  # noqa: E501
    "zip: absolute path": (lambda s: zip_of({**GOOD, str(s): image(0)}), 422, "absolute path"),
    "tar: absolute path": (lambda s: tar_of([*GOOD.items(), (str(s), image(0))]), 422, "absolute path"),  # noqa: E501
    "zip: Windows drive letter": (lambda _: zip_of({**GOOD, "C:/evil.png": image(0)}), 422, "drive letter"),  # noqa: E501
    "zip: backslashes": (lambda _: zip_of({**GOOD, "..\\..\\evil.png": image(0)}), 422, "backslash"),  # noqa: E501
    "zip: symbolic link": (lambda _: _zip_symlink(), 422, "symbolic link"),
    "tar: symbolic link, then a file through it": (
        lambda s: tar_of([*GOOD.items(), _info("cat/3.png", tarfile.SYMTYPE, linkname=str(s)), ("cat/3.png", b"pwned")]),  # noqa: E501
        422, "symbolic link",
    ),
    "tar: hard link": (lambda s: tar_of([*GOOD.items(), _info("cat/3.png", tarfile.LNKTYPE, linkname=str(s))]), 422, "hard link"),  # noqa: E501
    "tar: device file": (lambda _: tar_of([*GOOD.items(), _info("cat/3.png", tarfile.CHRTYPE, devmajor=1, devminor=3)]), 422, "device file"),  # noqa: E501
    "tar: FIFO": (lambda _: tar_of([*GOOD.items(), _info("cat/3.png", tarfile.FIFOTYPE)]), 422, "FIFO"),  # noqa: E501
    "tar: a folder and a file of one name": (lambda _: tar_of([_info("cat/0.png", tarfile.DIRTYPE), *GOOD.items()]), 422, "both a file and a folder"),  # noqa: E501
    "zip bomb: one member at 1000:1": (lambda _: zip_of({**GOOD, "cat/bomb.png": bytes(16 << 20)}), 422, "zip bomb"),  # noqa: E501
    "zip bomb: many members, 10 MiB in all": (lambda _: zip_of({**GOOD, **{f"cat/z{i}.png": bytes(1 << 20) for i in range(10)}}), 422, "over the limit of 8 MiB"),  # noqa: E501
    "zip: sizes in the headers lie": (lambda _: _lying_sizes(), 422, "Bad CRC-32"),
    "zip: overlapping members": (lambda _: _overlapping(), 422, "overlap"),
    "tar.gz bomb": (lambda _: _zeros_gz(16 << 20, tar=True), 422, "gzip bomb"),
    "gzip bomb, no tar inside": (lambda _: _zeros_gz(64 << 20, tar=False), 422, "gzip bomb"),
    "too many members": (lambda _: zip_of({**GOOD, **{f"dog/x{i}.png": image(i) for i in range(MAX_FILES)}}), 422, f"over {MAX_FILES} members"),  # noqa: E501
    "nested zip": (lambda _: zip_of({**GOOD, "cat/more.zip": zip_of(GOOD)}), 422, "nested archive"),
    "nested tar.gz named like an image": (lambda _: zip_of({**GOOD, "cat/3.png": tar_of(list(GOOD.items()), "w:gz")}), 422, "nested gzip archive"),  # noqa: E501
    "a gzip of a zip": (lambda _: gzip.compress(zip_of(GOOD)), 422, "holds a nested zip archive"),
    "a text file": (lambda _: zip_of({**GOOD, "cat/notes.txt": b"hello"}), 422, "not a PNG or JPEG image"),  # noqa: E501
    "a script named .png": (lambda _: zip_of({**GOOD, "cat/run.png": b"#!/bin/sh\nrm -rf /\n"}), 422, "its bytes are not a PNG or JPEG"),  # noqa: E501
    "PNG declaring 100000 x 100000": (lambda _: zip_of({**GOOD, "cat/big.png": _png_declaring(100_000, 100_000)}), 422, "decompression bomb"),  # noqa: E501
    "PNG declaring 6000 x 6000": (lambda _: zip_of({**GOOD, "cat/big.png": _png_declaring(6000, 6000)}), 422, "6000x6000 pixels"),  # noqa: E501
    "JPEG declaring 65000 x 65000": (lambda _: zip_of({**GOOD, "cat/big.jpg": _jpeg_declaring(65_000)}), 422, "decompression bomb"),  # noqa: E501
    "a truncated PNG": (lambda _: zip_of({**GOOD, "cat/cut.png": image(3)[:-30]}), 422, "corrupt image"),  # noqa: E501
    "a truncated zip": (lambda _: zip_of(GOOD)[:-200], 422, "corrupt or truncated"),
    "a tar cut in a member": (lambda _: tar_of(list(GOOD.items()))[:612], 422, "corrupt or truncated"),  # noqa: E501
    "a tar cut between members": (lambda _: _tar_cut_at_a_member(), 422, "no end-of-archive marker"),  # noqa: E501
    "an encrypted member": (lambda _: _patch_zip(zip_of(GOOD), "cat/1.png", {8: 1}, {6: 1}), 422, "encrypted"),  # noqa: E501
    "zip: NUL in a name": (lambda _: zip_of({**GOOD, "cat/a\x01b.png": image(0)}).replace(b"a\x01b", b"a\x00b"), 422, "control character"),  # noqa: E501
    "tar: a newline in a name": (lambda _: tar_of([*GOOD.items(), ("cat/a\nb.png", image(0))]), 422, "control character"),  # noqa: E501
    "duplicate names": (lambda _: zip_of([*GOOD.items(), ("cat/0.png", image(5))]), 422, "appears twice"),  # noqa: E501
    "names equal but for case": (lambda _: zip_of({**GOOD, "Cat/0.png": image(5)}), 422, "differ only in case"),  # noqa: E501
    "an empty zip": (lambda _: zip_of({}), 422, "no images"),
    "only junk": (lambda _: zip_of({"__MACOSX/._a.png": b"x", ".DS_Store": b"x"}), 422, "no images"),  # noqa: E501
    "one class": (lambda _: zip_of({"cat/0.png": image(0), "cat/1.png": image(1)}), 422, "at least two class folders, found 1"),  # noqa: E501
    "a class without images": (lambda _: zip_of({**GOOD, "emu/": b""}), 422, "class folder 'emu' holds no images"),  # noqa: E501
    "test classes unlike train's": (
        lambda _: zip_of({**{f"train/{k}": v for k, v in GOOD.items()}, "test/cat/0.png": image(0), "test/emu/0.png": image(1)}),  # noqa: E501
        422, "test classes differ from train classes: missing ['dog'], extra ['emu']",
    ),
    "train/ without test/": (lambda _: zip_of({f"train/{k}": v for k, v in GOOD.items()}), 422, "give train/ and test/ (or val/)"),  # noqa: E501
    "test/ without train/": (lambda _: zip_of({f"ds/test/{k}": v for k, v in GOOD.items()}), 422, "give train/ and test/ (or val/)"),  # noqa: E501
    "one image per class": (lambda _: zip_of({"cat/0.png": image(0), "dog/0.png": image(1)}), 422, "too few images for a test split"),  # noqa: E501
    "an image beside the classes": (lambda _: zip_of({**GOOD, "loose.png": image(0)}), 422, "not inside a class folder"),  # noqa: E501
    "a hidden folder": (lambda _: zip_of({**GOOD, "cat/.git/0.png": image(0)}), 422, "hidden"),
    "7z": (lambda _: b"7z\xbc\xaf\x27\x1c" + bytes(100), 422, "unknown archive format (it looks like 7z)"),  # noqa: E501
    "not an archive": (lambda _: image(0), 422, "unknown archive format"),
    "over max_dataset_mb, streamed": (lambda _: b"PK\x03\x04" + bytes((LIMIT_MB << 20) + 10), 413, "max_dataset_mb"),  # noqa: E501
    "over max_dataset_mb, by its length": (lambda _: bytes(3 * LIMIT_MB << 20), 413, "max_dataset_mb"),  # noqa: E501
}  # fmt: skip


def test_the_corpus_is_large_and_its_good_part_is_accepted(env: Env) -> None:
    assert len(HOSTILE) >= 15
    response = env.client.post("/v1/datasets", files={"file": ("good.zip", zip_of(GOOD))})
    assert response.status_code == 201, response.text
    assert env.client.delete(f"/v1/datasets/{response.json()['id']}").status_code == 204


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_archive_is_refused_and_leaves_nothing(case: str, env: Env) -> None:
    make, status, words = HOSTILE[case]
    content = make(env.sentinel)
    assert status == 413 or len(content) < LIMIT_MB << 20  # refused for what it is, not its size
    before = _tree(env)

    files = {"file": ("data.zip", content, "application/octet-stream")}
    response = env.client.post("/v1/datasets", files=files)

    assert response.status_code == status, response.text
    assert words in response.text, response.text
    if status == 422:
        assert response.json()["detail"][0]["loc"] == ["body", "file"], response.text
    assert env.client.get("/v1/datasets").json()["total"] == 0
    assert stored(env.settings) == []
    assert _tree(env) == before
    assert env.sentinel.read_bytes() == b"untouched"


def test_a_tar_header_with_megabytes_of_metadata_is_refused_unread(tmp_path: Path) -> None:
    """A GNU long name is read whole by tarfile: the archive reader refuses to (no HTTP)."""
    archive = tmp_path / "long.tar"
    archive.write_bytes(tar_of([("cat/" + "a" * (5 << 20) + ".png", image(0))]))
    with (
        pytest.raises(ArchiveRefused, match="metadata"),
        open_archive(archive, ArchiveLimits(), tmp_path / "scratch.tar"),
    ):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.tar"]
