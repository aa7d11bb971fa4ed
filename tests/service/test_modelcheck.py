"""Submissions whose network does not fit the dataset are 422 at ``model.arch``, and create nothing.

Through the real API (both database backends, a real Redis), which asks
``python -m workers.compress.structure`` in a real subprocess. The mismatching
network is a real installed plugin (``cifarlenet``: a classic LeNet whose
classifier needs 32x32 inputs), on ``sys.path`` for this process's spec
validation and on ``PYTHONPATH`` for the subprocess.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from core.errors import InvalidInput
from core.settings import Settings
from core.spec import JobSpec
from service.modelcheck import check_job_model, model_refusals, spec_classes
from tests.service.conftest import keyed_client
from tests.workers.test_structure import PLUGIN, install_cifar_plugin


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    site = tmp_path / "site"
    name = install_cifar_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    paths = [str(site), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    yield name
    sys.modules.pop(PLUGIN, None)


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, redis_url=redis_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with keyed_client(settings) as c:
        yield c


def _spec(arch: str, **dataset: Any) -> dict[str, Any]:
    return {
        "name": "shape",
        "model": {"arch": arch, "pretrain_epochs": 0},
        "dataset": {"name": "synthetic", **dataset},
        "target": {"flops_ratio": 0.5},
        "search": {"n_trials": 2},
    }


def _nothing_created(client: TestClient, redis_url: str) -> bool:
    totals = client.get("/v1/jobs").json()["total"], client.get("/v1/batches").json()["total"]
    redis = Redis.from_url(redis_url)
    try:
        return totals == (0, 0) and not list(redis.scan_iter("rq:*"))
    finally:
        redis.close()


def test_a_network_that_does_not_fit_the_images_is_422_at_model_arch(
    plugin: str, client: TestClient, redis_url: str
) -> None:
    refused = client.post("/v1/jobs", json=_spec(plugin))  # synthetic: 1x28x28
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "model", "arch"]
    assert "forward fails on input (1, 28, 28)" in error["msg"]
    assert "1x256 and 400x120" in error["msg"] and "dataset.input_size" in error["msg"]
    assert _nothing_created(client, redis_url)

    # At the size the network was made for, the same network is accepted.
    assert client.post("/v1/jobs", json=_spec(plugin, input_size=32)).status_code == 201


def test_a_zoo_network_at_a_size_it_refuses_is_422(client: TestClient, redis_url: str) -> None:
    refused = client.post("/v1/jobs", json=_spec("lenet5", input_size=16))
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "model", "arch"] and "input_size >= 28" in error["msg"]
    assert _nothing_created(client, redis_url)


def test_a_batch_with_one_bad_cell_names_the_cell_and_creates_nothing(
    plugin: str, client: TestClient, redis_url: str
) -> None:
    good = _spec("lenet5")
    jobs = [good, good, _spec(plugin), good]
    refused = client.post("/v1/batches", json={"name": "b", "jobs": jobs})
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "jobs", "2", "model", "arch"]
    assert "(1, 28, 28)" in error["msg"]
    assert _nothing_created(client, redis_url)

    jobs[2] = _spec(plugin, input_size=32)
    assert client.post("/v1/batches", json={"name": "b", "jobs": jobs}).status_code == 201


def test_verdicts_are_cached_per_network_and_shape(plugin: str) -> None:
    # Sizes no other test asks for, so the first call runs the subprocess.
    specs = [JobSpec.model_validate(_spec(plugin, input_size=size)) for size in (33, 30, 33)]
    start = time.perf_counter()
    refusals = model_refusals(specs, num_classes=[spec_classes(s) for s in specs])
    first = time.perf_counter() - start
    assert refusals[0] is None and refusals[2] is None
    assert refusals[1] is not None and "(1, 30, 30)" in refusals[1]

    start = time.perf_counter()
    with pytest.raises(InvalidInput, match="forward fails") as info:
        check_job_model(specs[1], num_classes=10)
    assert info.value.field == "model.arch"
    check_job_model(specs[0], num_classes=10)
    assert time.perf_counter() - start < min(0.5, first / 2)  # no subprocess: the cache


def test_imagefolder_classes_are_unknown_to_the_api() -> None:
    assert spec_classes(JobSpec.model_validate(_spec("lenet5"))) == 10
    folder = _spec("lenet5", name="imagefolder", path="cats")
    assert spec_classes(JobSpec.model_validate(folder)) is None


def test_a_burst_of_identical_submissions_runs_one_subprocess(
    plugin: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = JobSpec.model_validate(_spec(plugin, input_size=31))  # a size no other test asks for
    errors: list[str] = []

    def submit() -> None:
        try:
            check_job_model(spec, num_classes=10)
        except InvalidInput as exc:
            errors.append(exc.message)

    caplog.set_level(logging.INFO, logger="service.modelcheck")
    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 4 and len(set(errors)) == 1 and "(1, 31, 31)" in errors[0]
    assert sum("structure check of" in r.getMessage() for r in caplog.records) == 1
