"""``/v1/datasets``: an image archive is checked, unpacked, owner-scoped and named by jobs.

Real PNG and JPEG images (scikit-learn's digits, upscaled), real Redis, the
real app on SQLite; the repository on both database backends. The hostile
archives are in ``test_hostile_archives.py``.
"""

from __future__ import annotations

import functools
import io
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_digits
from sqlalchemy.orm import Session

from core.db import datasets as repo
from core.db import repo as jobs_repo
from core.db.session import session_factory
from core.errors import Conflict, DatasetNotFound, InvalidInput
from core.settings import Settings
from core.spec import JobSpec
from service import datasets
from tests.service.conftest import keyed_client

SPEC: dict[str, Any] = {
    "name": "own-images",
    "model": {"arch": "lenet5", "pretrain_epochs": 0},
    "target": {"flops_ratio": 0.5},
    "search": {"n_trials": 2},
}


@functools.cache
def _digits() -> np.ndarray:
    return load_digits().images


def image(i: int = 0, *, fmt: str = "PNG", mode: str = "RGB", side: int = 32) -> bytes:
    """A real image file: digit ``i`` of scikit-learn's set, upscaled to ``side`` pixels."""
    pixels = (_digits()[i % len(_digits())] * 255 / 16).astype(np.uint8)
    picture = Image.fromarray(pixels).resize((side, side)).convert(mode)
    buf = io.BytesIO()
    picture.save(buf, fmt)
    return buf.getvalue()


def zip_of(members: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    """A zip of ``members`` (a name ending in / is a folder); duplicate names are kept."""
    buf = io.BytesIO()
    items = members.items() if isinstance(members, dict) else members
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
        warnings.simplefilter("ignore")  # "Duplicate name": the point of some archives
        for name, data in items:
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return buf.getvalue()


def tar_of(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> bytes:
    """A tar (``w:gz``: gzipped) of regular files given as (name, bytes), or of TarInfos."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tf:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
                continue
            info = tarfile.TarInfo(member[0])
            info.size = len(member[1])
            tf.addfile(info, io.BytesIO(member[1]))
    return buf.getvalue()


def split_tree(top: str = "digits") -> dict[str, bytes]:
    """train/ and test/ of three classes in one top folder, with Finder's and Explorer's junk."""
    tree = {
        f"{top}/{split}/{label}/{k}.png": image(label + 10 * k)
        for split, n in (("train", 3), ("test", 2))
        for label in range(3)
        for k in range(n)
    }
    tree[f"{top}/train/2/grey.jpg"] = image(7, fmt="JPEG", mode="L")
    tree["__MACOSX/digits/train/0/._0.png"] = b"\x00\x05\x16\x07 AppleDouble"
    tree[f"{top}/.DS_Store"] = b"\x00\x00\x00\x01Bud1"
    tree[f"{top}/train/1/Thumbs.db"] = b"\xd0\xcf\x11\xe0"
    return tree


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'db' / 'prunesearch.db'}",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        max_dataset_mb=2,
    )


@pytest.fixture
def alice(settings: Settings) -> Iterator[TestClient]:
    with keyed_client(settings, "alice") as client:
        yield client


def upload(client: TestClient, content: bytes, filename: str = "digits.zip", **data: str) -> Any:
    files = {"file": (filename, content, "application/octet-stream")}
    return client.post("/v1/datasets", files=files, data=data)


def stored(settings: Settings) -> list[str]:
    """Every path under the datasets folder, hidden partial files and folders included."""
    folder = settings.artifacts / "datasets"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.is_dir() else []


def imagefolder(**dataset: str) -> dict[str, Any]:
    return {**SPEC, "dataset": {"name": "imagefolder", **dataset}}


# --- accepted -----------------------------------------------------------------------------


def test_an_archive_is_unpacked_listed_used_by_a_job_and_deleted(
    alice: TestClient, settings: Settings
) -> None:
    content = zip_of(split_tree())
    response = upload(alice, content, name="my digits")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "my digits" and body["filename"] == "digits.zip"
    assert body["classes"] == ["0", "1", "2"]
    assert body["images"] == {"test": 6, "train": 10}
    assert body["channels"] == [1, 3]  # the grey JPEG and the RGB PNGs
    assert body["archive_bytes"] == len(content)
    folder = settings.dataset_upload_dir(body["id"])
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert len(files) == 16 and "train/2/grey.jpg" in files and "test/0/0.png" in files
    assert (folder / "train" / "0" / "0.png").read_bytes() == image(0)
    assert body["bytes"] == sum((folder / f).stat().st_size for f in files)
    assert stored(settings)[0] == body["id"]  # no partial file or folder beside it

    page = alice.get("/v1/datasets").json()
    assert page["total"] == 1 and [d["id"] for d in page["items"]] == [body["id"]]
    assert alice.get(f"/v1/datasets/{body['id']}").json() == body

    job = alice.post("/v1/jobs", json=imagefolder(upload=body["id"]))
    assert job.status_code == 201, job.text
    refused = alice.delete(f"/v1/datasets/{body['id']}")
    assert refused.status_code == 409 and job.json()["id"] in refused.text
    assert folder.is_dir()

    # An ended job is deleted with its artifacts, never with the dataset it read.
    assert alice.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 200
    assert alice.delete(f"/v1/jobs/{job.json()['id']}").status_code == 204
    assert folder.is_dir() and alice.get(f"/v1/datasets/{body['id']}").status_code == 200

    assert alice.delete(f"/v1/datasets/{body['id']}").status_code == 204
    assert not folder.exists() and stored(settings) == []
    assert alice.get(f"/v1/datasets/{body['id']}").status_code == 404
    assert alice.delete(f"/v1/datasets/{body['id']}").status_code == 404


@pytest.mark.parametrize(
    ("filename", "make"),
    [
        ("flat.tar", lambda: tar_of([(f"./{c}/{k}.jpg", image(k, fmt="JPEG")) for c in "ab" for k in range(3)])),  # noqa: E501
        ("flat.tgz", lambda: tar_of([(f"top/{c}/{k}.png", image(k)) for c in "ab" for k in range(3)], "w:gz")),  # noqa: E501
        ("flat.zip", lambda: zip_of({f"{c}/{k}.PNG": image(k, mode="L") for c in "ab" for k in range(3)})),  # noqa: E501
    ],
)  # fmt: skip
def test_tar_tgz_and_zip_of_a_flat_tree_are_accepted(
    alice: TestClient, settings: Settings, filename: str, make: Any
) -> None:
    response = upload(alice, make(), filename)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["classes"] == ["a", "b"] and body["images"] == {"all": 6}
    assert body["name"] == filename.split(".")[0]
    folder = settings.dataset_upload_dir(body["id"])
    assert sorted(p.name for p in folder.iterdir()) == ["a", "b"]  # the top folder is dropped
    assert stored(settings)[0] == body["id"] and len(stored(settings)) == 9


def test_datasets_are_the_owners(alice: TestClient, settings: Settings) -> None:
    dataset_id = upload(alice, zip_of(split_tree())).json()["id"]
    spec = imagefolder(upload=dataset_id)
    with keyed_client(settings, "bob") as bob:
        assert bob.get(f"/v1/datasets/{dataset_id}").status_code == 404
        assert bob.delete(f"/v1/datasets/{dataset_id}").status_code == 404
        assert bob.get("/v1/datasets").json()["total"] == 0
        job = bob.post("/v1/jobs", json=spec)
        batch = bob.post("/v1/batches", json={"name": "b", "jobs": [SPEC, spec]})
        totals = bob.get("/v1/jobs").json()["total"], bob.get("/v1/batches").json()["total"]
    assert job.status_code == 422, job.text
    assert job.json()["detail"][0]["loc"] == ["body", "dataset", "upload"]
    assert "POST /v1/datasets" in job.text
    assert batch.status_code == 422, batch.text
    assert batch.json()["detail"][0]["loc"] == ["body", "jobs", "1", "dataset", "upload"]
    assert totals == (0, 0)
    unknown = alice.post("/v1/jobs", json=imagefolder(upload="0" * 32))
    assert unknown.status_code == 422 and "no dataset" in unknown.text
    assert alice.get(f"/v1/datasets/{dataset_id}").status_code == 200


def test_a_form_with_several_problems_names_each_and_keeps_nothing(
    alice: TestClient, settings: Settings
) -> None:
    cases: list[tuple[dict[str, Any], set[str]]] = [
        (
            {"data": {"name": "x" * 101}, "files": {"colour": ("c", b"red")}},
            {"name", "colour", "file"},
        ),
        ({"data": {"name": "a\x01b"}, "files": {"file": ("d.zip", b"PK")}}, {"name"}),
        ({"files": {"file": ("d.zip", b"PK"), "other": ("x", b"x")}}, {"other"}),
        ({"json": {"file": "d.zip"}}, {"file"}),  # not a form
        ({"data": {"name": "d"}}, {"file"}),  # a form without a file
    ]
    for kwargs, fields in cases:
        response = alice.post("/v1/datasets", **kwargs)
        assert response.status_code == 422, response.text
        assert {e["loc"][-1] for e in response.json()["detail"]} == fields, response.text
    assert stored(settings) == [] and alice.get("/v1/datasets").json()["total"] == 0


# --- jobs naming a folder of the data directory -------------------------------------------


def _folder(root: Path, classes: list[str], split: str = "") -> None:
    for label in classes:
        (root / split / label).mkdir(parents=True, exist_ok=True)
        (root / split / label / "0.png").write_bytes(image(0))


def test_a_job_may_name_a_folder_of_the_data_directory(
    alice: TestClient, settings: Settings, tmp_path: Path
) -> None:
    assert settings.data_dir is not None
    _folder(settings.data_dir / "pets", ["cat", "dog", "emu"], "train")
    _folder(settings.data_dir / "one", ["cat"])
    _folder(tmp_path / "outside", ["cat", "dog"])
    (settings.data_dir / "escape").symlink_to(tmp_path / "outside")
    (settings.data_dir / "plain.png").write_bytes(image(0))

    assert alice.post("/v1/jobs", json=imagefolder(path="pets")).status_code == 201
    for path, words in [
        ("missing", "no folder 'missing'"),
        ("plain.png", "no folder"),
        ("one", "at least two class folders"),
        ("escape", "leads out of the data directory"),
        ("pets/train/cat", "found 0"),
    ]:
        response = alice.post("/v1/jobs", json=imagefolder(path=path))
        assert response.status_code == 422, (path, response.text)
        error = response.json()["detail"][0]
        assert error["loc"] == ["body", "dataset", "path"] and words in error["msg"], error
        if words.startswith("no folder"):
            assert "PRUNESEARCH_DATA_DIR sets the data directory" in error["msg"]
    grid = {"name": "b", "base": imagefolder(path="one"), "grid": {"seed": [0, 1]}}
    batch = alice.post("/v1/batches", json=grid)
    assert batch.json()["detail"][0]["loc"] == ["body", "base", "dataset", "path"]
    assert alice.get("/v1/jobs").json()["total"] == 1


def test_dataset_classes_counts_the_classes_of_every_kind_of_dataset(
    settings: Settings, tmp_path: Path
) -> None:
    from core.db.session import migrate

    migrate(settings.database_url)
    archive = tmp_path / "digits.zip"
    archive.write_bytes(zip_of(split_tree()))
    assert settings.data_dir is not None
    _folder(settings.data_dir / "pets", ["cat", "dog"])
    with session_factory(settings.database_url)() as s:
        row = datasets.add_dataset(s, settings, owner="alice", source=archive)
        assert row.name == "digits" and row.images == {"test": 6, "train": 10}

        def classes(owner: str, **dataset: Any) -> int | None:
            spec = JobSpec.model_validate({**SPEC, "dataset": dataset})
            return datasets.dataset_classes(s, owner, spec, settings)

        assert classes("alice", name="imagefolder", upload=row.id) == 3
        assert classes("alice", name="imagefolder", path="pets") == 2
        assert classes("alice", name="synthetic") is None
        with pytest.raises(InvalidInput, match="no dataset") as info:
            classes("bob", name="imagefolder", upload=row.id)
        assert info.value.field == "dataset.upload"
        unset = settings.model_copy(update={"data_dir": None})
        spec = JobSpec.model_validate({**SPEC, "dataset": {"name": "imagefolder", "path": "pets"}})
        with pytest.raises(InvalidInput, match="PRUNESEARCH_DATA_DIR"):
            datasets.dataset_classes(s, "alice", spec, unset)


# --- the repository, on both backends -----------------------------------------------------


def test_the_repository_scopes_datasets_to_their_owner(session: Session) -> None:
    common: dict[str, Any] = {"filename": "d.zip", "classes": ["a", "b"], "channels": [3]}
    for i, owner in enumerate(["alice", "alice", "bob"]):
        repo.create_dataset(
            session, dataset_id=f"{i:032x}", owner=owner, name=f"d{i}", images={"all": 4},
            size=10, archive_size=5, sha256="0" * 64, **common,
        )  # fmt: skip
    assert repo.count_datasets(session, "alice") == 2 and repo.count_datasets(session, "eve") == 0
    assert [d.id for d in repo.list_datasets(session, "alice", limit=10, offset=0)] == [
        f"{1:032x}",
        f"{0:032x}",
    ]
    assert repo.get_dataset(session, f"{2:032x}", "bob").classes == ["a", "b"]
    with pytest.raises(DatasetNotFound):
        repo.get_dataset(session, f"{2:032x}", "alice")

    spec = JobSpec.model_validate(
        {**SPEC, "dataset": {"name": "imagefolder", "upload": f"{0:032x}"}}
    )
    job = jobs_repo.create_job(session, spec, "interactive", owner="alice")
    assert repo.jobs_using(session, "alice", f"{0:032x}") == [job.id]
    assert repo.jobs_using(session, "alice", f"{1:032x}") == []
    assert repo.jobs_using(session, "bob", f"{0:032x}") == []
    repo.delete_dataset(session, f"{1:032x}")
    assert repo.count_datasets(session, "alice") == 1


def test_delete_dataset_refuses_while_a_job_reads_it(settings: Settings, tmp_path: Path) -> None:
    from core.db.models import JobStatus
    from core.db.session import migrate

    migrate(settings.database_url)
    archive = tmp_path / "d.tar"
    archive.write_bytes(tar_of([(f"{c}/{k}.png", image(k)) for c in "ab" for k in range(2)]))
    with session_factory(settings.database_url)() as s:
        row = datasets.add_dataset(s, settings, owner="alice", source=archive, name="ab")
        spec = JobSpec.model_validate(imagefolder(upload=row.id))
        job = jobs_repo.create_job(s, spec, "interactive", owner="alice")
        with pytest.raises(Conflict, match=job.id):
            datasets.delete_dataset(s, settings, row)
        jobs_repo.transition(s, job.id, JobStatus.failed, allowed_from={JobStatus.queued})
        datasets.delete_dataset(s, settings, row)
        assert repo.count_datasets(s, "alice") == 0
    assert stored(settings) == []


def test_what_is_unpacked_is_what_the_workers_read(settings: Settings, tmp_path: Path) -> None:
    from core.db.session import migrate
    from workers.nets.imagefolder import scan

    migrate(settings.database_url)
    flat = {f"top/{c}/{k}.png": image(k) for c in ("b", "a") for k in range(5)}
    with session_factory(settings.database_url)() as s:
        for name, tree in [("split.zip", split_tree()), ("flat.zip", flat)]:
            (tmp_path / name).write_bytes(zip_of(tree))
            row = datasets.add_dataset(s, settings, owner="alice", source=tmp_path / name)
            listing = scan(settings.dataset_upload_dir(row.id))
            assert list(listing.classes) == row.classes, name
            assert len(listing.train) + len(listing.test) == sum(row.images.values()), name
            if "train" in row.images:
                assert (len(listing.train), len(listing.test)) == (10, 6)
