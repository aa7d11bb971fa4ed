"""Schemathesis over the published OpenAPI document: no server error, no undeclared status.

In-process through schemathesis' ASGI transport, in keys mode with a real key, on a real Redis
(its own database number, flushed before and after) and on each database backend: SQLite, and
PostgreSQL (our tables and the Optuna storage in two fresh databases, dropped afterwards).
Every operation gets schema-valid and schema-violating requests, bounded, with random ids and
with the ids of real objects. Checks: no server error, and every reply conforms to the document
(its status is one the operation declares, and its body, content type and headers are as
declared).

By default the requests are derandomized (the same ones every run: what CI runs). ``make fuzz``
(``PRUNESEARCH_FUZZ=1``, ``PRUNESEARCH_FUZZ_EXAMPLES`` per operation, mode and kind of id,
default 50) draws new ones every run from a new seed; a failure names the seed, and
``PRUNESEARCH_FUZZ_SEED`` repeats it.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from redis import Redis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from core.db import uploads as uploads_repo
from core.db.session import session_factory
from core.settings import Settings
from core.spec import SearchSpec
from service.api.app import create_app
from service.batches import BatchCreate
from service.datasets import add_dataset
from tests.imagefolders import write_digits
from tests.postgres import BACKENDS, databases
from tests.service.conftest import add_key

# Not the other service tests' database: this module's jobs stay queued in it. The two
# backends' module fixtures run one after the other, each flushing it before and after.
REDIS_DB = 12
FUZZ = os.environ.get("PRUNESEARCH_FUZZ", "") not in ("", "0")
# Per operation, generation mode and kind of id.
MAX_EXAMPLES = int(os.environ.get("PRUNESEARCH_FUZZ_EXAMPLES", "50")) if FUZZ else 25
FUZZ_SEED = int(os.environ.get("PRUNESEARCH_FUZZ_SEED") or random.randrange(2**32))
# Not schemathesis' 10 s: the first job on a new architecture waits for a cold model check
# (service.modelcheck: a subprocess that imports torch), 15-30 s on the busy 2-core VM.
REQUEST_TIMEOUT_S = 120
MAX_TRIALS = 3  # a generated job may ask for 10 000 trials: each is a queued task
MAX_JOBS = 2
# No server error; every status, body, content type and header as the document declares them.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]
_BATCH = BatchCreate.model_json_schema()
BATCH_JOBS = _BATCH["properties"]["jobs"]["anyOf"][0]["maxItems"]
GRID_VALUES = _BATCH["properties"]["grid"]["anyOf"][0]["additionalProperties"]["maxItems"]
TRIALS = SearchSpec.model_json_schema()["properties"]["n_trials"]["maximum"]
SPEC: dict[str, Any] = {
    "name": "schemathesis",
    "model": {"arch": "lenet5", "pretrain_epochs": 0},
    "dataset": {"name": "synthetic"},
    "target": {"flops_ratio": 0.5},
    "search": {"n_trials": 2},
}
# The operations, read from an app that is never started (collection needs them by name).
OPERATIONS = [
    (method.upper(), path)
    for path, methods in create_app(Settings(home=Path("unused"))).openapi()["paths"].items()
    for method in methods
]


@dataclass(frozen=True)
class Api:
    backend: str
    schema: Any
    headers: dict[str, str]
    ids: dict[str, str]  # path parameter -> one of the key owner's real objects


@pytest.fixture(scope="module", params=BACKENDS)
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_base_url: str
) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("schemathesis")
    with databases(request.param, home) as dbs:
        yield from _api(request.param, home, dbs.database_url, dbs.optuna_url, redis_base_url)


def _api(
    backend: str, home: Path, database_url: str, optuna_url: str, redis_base_url: str
) -> Iterator[Api]:
    redis_url = f"{redis_base_url}/{REDIS_DB}"
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    settings = Settings(
        home=home,
        database_url=database_url,
        optuna_url=optuna_url,
        redis_url=redis_url,
        auth="keys",
        rate_limit=0,
        max_upload_mb=1,
    )
    app = create_app(settings)
    with TestClient(app) as client:  # migrates; alice's objects exist before any case runs
        headers = add_key(settings.database_url, "alice")
        ids = _objects(client, headers, settings)
    try:
        yield Api(backend, schemathesis.openapi.from_asgi("/openapi.json", app), headers, ids)
    finally:
        with contextlib.suppress(Exception):
            asgi.shutdown_lifespans()  # the app schemathesis started (and its reconciler)
        redis.flushdb()
        redis.close()


def _objects(client: TestClient, headers: dict[str, str], settings: Settings) -> dict[str, str]:
    job = client.post("/v1/jobs", json=SPEC, headers=headers)
    batch = client.post("/v1/batches", json={"name": "b", "jobs": [SPEC]}, headers=headers)
    assert job.status_code == batch.status_code == 201, (job.text, batch.text)
    upload_id = "cd" * 16
    settings.weights_path(upload_id).parent.mkdir(parents=True, exist_ok=True)
    settings.weights_path(upload_id).write_bytes(b"weights")
    with session_factory(settings.database_url)() as s:
        uploads_repo.create_upload(
            s, upload_id=upload_id, owner="alice", arch="lenet5",
            arch_kwargs={"in_channels": 1, "num_classes": 10, "input_size": 28},
            filename="w.safetensors", size=7, sha256="0" * 64, tensors=10,
        )  # fmt: skip
        images = settings.artifacts / "source-images"
        write_digits(images, per_class=2)
        archive = Path(shutil.make_archive(str(settings.artifacts / "source"), "zip", images))
        dataset_id = add_dataset(s, settings, owner="alice", source=archive).id
    (settings.job_dir(job.json()["id"]) / "result.json").write_text("{}")
    return {
        "dataset_id": dataset_id,
        "job_id": job.json()["id"],
        "batch_id": batch.json()["id"],
        "upload_id": upload_id,
        "name": "result.json",
    }


def _fewer(value: Any, keep: int, most: int) -> Any:
    """``value`` cut to ``keep`` when it is a count or list within its valid ``most``."""
    if isinstance(value, list) and keep < len(value) <= most:
        return value[:keep]
    if isinstance(value, int) and not isinstance(value, bool) and keep < value <= most:
        return keep
    return value


def _bounded(body: Any) -> Any:
    """The same request with at most MAX_JOBS specs of at most MAX_TRIALS trials each.

    Only values inside their bounds are cut, so a valid request stays valid and an invalid
    one stays invalid: a generated batch may otherwise queue 200 jobs of 10 000 trials.
    """
    if not isinstance(body, dict):
        return body
    specs: list[Any] = [body, body.get("base")]
    if isinstance(body.get("jobs"), list):
        body["jobs"] = _fewer(body["jobs"], MAX_JOBS, BATCH_JOBS)
        specs += body["jobs"]
    if isinstance(body.get("grid"), dict):
        grid = {k: _fewer(v, MAX_JOBS, GRID_VALUES) for k, v in body["grid"].items()}
        if isinstance(grid.get("search.n_trials"), list):
            grid["search.n_trials"] = [
                _fewer(v, MAX_TRIALS, TRIALS) for v in grid["search.n_trials"]
            ]
        body["grid"] = grid
    for spec in specs:
        search = spec.get("search") if isinstance(spec, dict) else None
        if isinstance(search, dict) and "n_trials" in search:
            search["n_trials"] = _fewer(search["n_trials"], MAX_TRIALS, TRIALS)
    return body


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_generated_request_is_a_server_error_or_undeclared(
    api: Api, method: str, path: str, request: pytest.FixtureRequest
) -> None:
    operation = api.schema[path][method]
    names = re.findall(r"\{(\w+)\}", path)
    rounds: list[tuple[GenerationMode, dict[str, str] | None]] = [(GenerationMode.POSITIVE, None)]
    if {"parameters", "requestBody"} & set(operation.definition.raw):  # something to break
        rounds.append((GenerationMode.NEGATIVE, None))
    if names:  # and once more on real objects, so routes get past their 404
        rounds.append((GenerationMode.POSITIVE, {n: api.ids[n] for n in names}))
    statuses: list[int] = []

    for mode, path_parameters in rounds:
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

        @hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            case.body = _bounded(case.body)
            response = case.call(headers=api.headers, timeout=REQUEST_TIMEOUT_S)
            statuses.append(response.status_code)
            case.validate_response(response, checks=CHECKS)

        if FUZZ:  # an explicit seed takes precedence over derandomize
            run = seed(FUZZ_SEED)(run)
        try:
            run()
        except BaseException as exc:
            if FUZZ:
                exc.add_note(f"fuzz run: PRUNESEARCH_FUZZ_SEED={FUZZ_SEED} repeats it")
            raise

    seeded = f" (PRUNESEARCH_FUZZ_SEED={FUZZ_SEED})" if FUZZ else ""
    print(f"\n{method} {path}: {len(statuses)} cases{seeded}")  # `make fuzz` shows them (-s)
    assert statuses, "no request was sent"
    # The key was accepted: these requests reached the routes rather than stopping at 401.
    assert any(code != 401 for code in statuses), sorted(set(statuses))
