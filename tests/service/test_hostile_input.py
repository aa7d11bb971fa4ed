"""Bad input and strangers: every published constraint is enforced and a refusal creates nothing;
every ``/v1`` route wants a key; another owner's objects do not exist; hostile uploads are refused.

The refused values are derived from the published OpenAPI document (the pydantic models and the
route signatures behind it), not listed by hand: a field that gains a bound is tested by the next
run, and a constraint kind the walker below does not know fails the test until it learns it.
Real Redis and both database backends, through the real app.
"""

from __future__ import annotations

import functools
import io
import json
import math
import pickle
import re
import shutil
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db import keys, repo
from core.db import uploads as uploads_repo
from core.db.models import Batch, Job, JobStatus, Upload
from core.db.session import session_factory
from core.settings import Settings
from core.spec import JobSpec
from service.api.app import create_app
from service.api.deps import get_owner
from service.batches import BatchCreate
from service.datasets import add_dataset
from service.uploads import UploadArgs
from tests.imagefolders import write_digits
from tests.service.conftest import add_key
from tests.service.test_uploads import ARGS, _Evil, _raw, _state, _stored, _text

SPEC: dict[str, Any] = {
    "name": "hostile-lenet",
    "model": {"arch": "lenet5", "pretrain_epochs": 0},
    "dataset": {"name": "synthetic", "mean": [0.5], "std": [0.25]},
    "target": {"flops_ratio": 0.5},
    "search": {"n_trials": 2},
}
FILE = b"not checked: every case breaks a form field first"
# A valid body per request schema (by component name or media type); each case breaks one thing.
VALID_BODIES: dict[str, list[dict[str, Any]]] = {
    "JobSpec": [SPEC],
    "BatchCreate": [
        {"name": "nightly", "jobs": [SPEC]},
        {"name": "nightly", "base": SPEC, "grid": {"search.sampler": ["tpe", "random"]}},
    ],
    "multipart/form-data": [{**ARGS, "file": FILE}],
}
UNKNOWN = "zz_not_a_field"
MISSING: Any = object()
CONSTRAINTS = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength"}
    | {"pattern", "enum", "const", "minItems", "maxItems", "minProperties", "maxProperties"}
    | {"required", "additionalProperties"}
)
ANNOTATIONS = frozenset(
    {"type", "title", "description", "default", "examples", "$ref", "anyOf", "properties", "items"}
)
OFF_PATTERN = ("", "-", "a b", "../etc/passwd", "\u00e9", "x" * 33, "a\nb")


# --- the walker --------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One refused value: ``value`` is the whole (body or parameter) with one thing broken."""

    loc: tuple[str | int, ...]
    rule: str
    value: Any


class Walker:
    """Yields, for every constraint of a JSON schema, one value that breaks only it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components: dict[str, Any] = document["components"]["schemas"]
        self.unknown: list[str] = []  # constraints this walker cannot break (the test fails)
        self.skipped: set[tuple[str | int, ...]] = set()  # subtrees absent from the valid body
        self.unbounded: list[str] = []  # numbers without both bounds (DESIGN: bounds everywhere)
        self.operation = ""  # named in the lists above

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def walk(
        self, schema: dict[str, Any], current: Any, loc: tuple[str | int, ...]
    ) -> Iterator[Bad]:
        if current is MISSING:
            current = schema.get("default", MISSING)
        schema = self.resolve(schema)
        where = f"{self.operation} {'.'.join(map(str, loc)) or '(root)'}"
        strange = set(schema) - CONSTRAINTS - ANNOTATIONS - {"format"}
        if strange or schema.get("format", "binary") != "binary":
            self.unknown.append(f"{where}: {sorted(strange) or schema['format']}")
        if "anyOf" in schema:
            branches = [b for b in schema["anyOf"] if self.resolve(b).get("type") != "null"]
            if len(branches) != 1:
                self.unknown.append(f"{where}: anyOf with {len(branches)} non-null branches")
                return
            yield from self.walk(branches[0], current, loc)
            return
        kind = schema.get("type")
        if "enum" in schema or "const" in schema:
            allowed = schema.get("enum", [schema.get("const")])
            if all(isinstance(v, int) and not isinstance(v, bool) for v in allowed):
                yield Bad(loc, "enum", max(allowed) + 1)
            elif not all(isinstance(v, str) for v in allowed):
                self.unknown.append(f"{where}: an enum of mixed types")
            else:
                yield Bad(loc, "enum", "not-" + "-".join(allowed)[:40])
        if kind == "object":
            yield from self._object(schema, current, loc)
        elif kind == "array":
            yield from self._array(schema, current, loc)
        elif kind == "string":
            yield from self._string(schema, loc)
        elif kind in ("integer", "number"):
            yield from self._number(schema, kind, loc)

    def _object(
        self, schema: dict[str, Any], current: Any, loc: tuple[str | int, ...]
    ) -> Iterator[Bad]:
        if not isinstance(current, dict):
            self.skipped.add(loc)
            return
        for name, sub in schema.get("properties", {}).items():
            for bad in self.walk(sub, current.get(name, MISSING), (*loc, name)):
                yield Bad(bad.loc, bad.rule, {**current, name: bad.value})
        for name in schema.get("required", []):
            if name in current:
                rest = {k: v for k, v in current.items() if k != name}
                yield Bad((*loc, name), "required", rest)
        extra = schema.get("additionalProperties")
        if extra is False:
            yield Bad((*loc, UNKNOWN), "additionalProperties", {**current, UNKNOWN: 1})
        elif isinstance(extra, dict) and current:
            key, value = next(iter(current.items()))
            for bad in self.walk(extra, value, (*loc, key)):
                yield Bad(bad.loc, bad.rule, {**current, key: bad.value})
        if schema.get("minProperties", 0) > 0:
            yield Bad(
                loc, "minProperties", dict(list(current.items())[: schema["minProperties"] - 1])
            )
        if "maxProperties" in schema and current:
            more = {
                f"{UNKNOWN}{i}": next(iter(current.values()))
                for i in range(schema["maxProperties"])
            }
            yield Bad(loc, "maxProperties", {**current, **more})

    def _array(
        self, schema: dict[str, Any], current: Any, loc: tuple[str | int, ...]
    ) -> Iterator[Bad]:
        if not isinstance(current, list | tuple) or not current:
            self.skipped.add(loc)
            return
        current = list(current)
        for bad in self.walk(schema.get("items", {}), current[0], (*loc, 0)):
            yield Bad(bad.loc, bad.rule, [bad.value, *current[1:]])
        if schema.get("minItems", 0) > 0:
            yield Bad(loc, "minItems", current[: schema["minItems"] - 1])
        if "maxItems" in schema:
            yield Bad(
                loc, "maxItems", (current * (schema["maxItems"] + 1))[: schema["maxItems"] + 1]
            )

    def _string(self, schema: dict[str, Any], loc: tuple[str | int, ...]) -> Iterator[Bad]:
        low, high = schema.get("minLength", 0), schema.get("maxLength", math.inf)
        if low > 0:
            yield Bad(loc, "minLength", "a" * (low - 1))
        if high < math.inf:
            yield Bad(loc, "maxLength", "a" * (int(high) + 1))
        if "pattern" in schema:
            off = [
                s
                for s in OFF_PATTERN
                if low <= len(s) <= high and not re.search(schema["pattern"], s)
            ]
            if not off:
                where = f"{self.operation} {'.'.join(map(str, loc))}"
                self.unknown.append(f"{where}: no value breaks {schema['pattern']}")
            else:
                yield Bad(loc, "pattern", off[0])

    def _number(
        self, schema: dict[str, Any], kind: str, loc: tuple[str | int, ...]
    ) -> Iterator[Bad]:
        step = 1 if kind == "integer" else 0.5
        bounds = {"minimum": -step, "maximum": step, "exclusiveMinimum": 0, "exclusiveMaximum": 0}
        for rule, delta in bounds.items():
            if rule in schema:
                bound = schema[rule]
                yield Bad(loc, rule, int(bound) + delta if kind == "integer" else bound + delta)
        lower = "minimum" in schema or "exclusiveMinimum" in schema
        upper = "maximum" in schema or "exclusiveMaximum" in schema
        if not (lower and upper):
            self.unbounded.append(f"{self.operation} {'.'.join(map(str, loc))}")
        if kind == "number":
            for value in (math.nan, math.inf, -math.inf):
                yield Bad(loc, f"finite ({value})", value)


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    where: str  # body, query, header, path
    bad: Bad
    body: Any  # the operation's valid body (or the broken one when where == "body")
    media: str | None

    @property
    def name(self) -> str:
        field = ".".join(map(str, (self.where, *self.bad.loc)))
        return f"{self.method} {self.path} {field} {self.bad.rule}"


def _body_key(operation: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    content = operation.get("requestBody", {}).get("content", {})
    if not content:
        return None, None, {}
    (media, spec), *_ = content.items()
    schema = spec["schema"]
    return media, schema.get("$ref", "").rsplit("/", 1)[-1] or media, schema


def _cases(document: dict[str, Any], walker: Walker) -> list[Case]:
    cases: dict[str, Case] = {}
    missing_bodies = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            media, key, body_schema = _body_key(operation)
            walker.operation = f"{method.upper()} {path}"
            bodies = VALID_BODIES.get(key, []) if key else [None]
            if not bodies:
                missing_bodies.append(f"{method.upper()} {path} ({key})")
                continue
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                inner = walker.resolve(schema.get("anyOf", [schema])[0])
                sample = [walker.resolve(inner.get("items", {})).get("enum", ["x"])[0]]
                current = sample if inner.get("type") == "array" else MISSING
                for bad in walker.walk(schema, current, (parameter["name"],)):
                    case = Case(method.upper(), path, parameter["in"], bad, bodies[0], media)
                    cases.setdefault(case.name, case)
            for body in bodies if key else []:
                for bad in walker.walk(body_schema, body, ()):
                    case = Case(method.upper(), path, "body", bad, bad.value, media)
                    cases.setdefault(case.name, case)
    assert not missing_bodies, f"add a valid body to VALID_BODIES for {missing_bodies}"
    return list(cases.values())


def _send(client: TestClient, case: Case) -> httpx.Response:
    url = re.sub(r"\{\w+\}", "0" * 32, case.path)
    params: dict[str, Any] = {}
    headers: dict[str, str] = {}
    value = case.bad.value
    if case.where == "query":
        params[str(case.bad.loc[0])] = (
            [str(v) for v in value] if isinstance(value, list) else str(value)
        )
    elif case.where == "header":
        headers[str(case.bad.loc[0])] = str(value)
    elif case.where == "path":
        url = case.path.replace("{" + str(case.bad.loc[0]) + "}", str(value))
        url = re.sub(r"\{\w+\}", "0" * 32, url)
    return _request(client, case.method, url, case.body, case.media, params=params, headers=headers)


def _request(
    client: TestClient,
    method: str,
    url: str,
    body: Any,
    media: str | None,
    **kwargs: Any,
) -> httpx.Response:
    """``body`` as ``media``: JSON (NaN allowed, as a hostile client sends it), or a form."""
    headers = dict(kwargs.pop("headers", {}))
    if media == "application/json":
        headers["Content-Type"] = media
        content = json.dumps(body).encode()
        return client.request(method, url, content=content, headers=headers, **kwargs)
    if media == "multipart/form-data":
        fields = {k: str(v) for k, v in body.items() if k != "file"}
        files = {"file": ("w.safetensors", body["file"])} if "file" in body else None
        return client.request(method, url, data=fields, files=files, headers=headers, **kwargs)
    return client.request(method, url, headers=headers, **kwargs)


# --- fixtures and counts -----------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=db_url,
        redis_url=redis_url,
        auth="keys",
        rate_limit=0,
        max_upload_mb=2,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan: the schema is migrated
        yield app


def _client(app: FastAPI, owner: str | None) -> TestClient:
    """A client that reports a server error as a 500 (so a case names it) rather than raising."""
    client = TestClient(app, raise_server_exceptions=False)
    if owner is not None:
        client.headers.update(add_key(app.state.settings.database_url, owner))
    return client


@pytest.fixture
def alice(app: FastAPI) -> TestClient:
    return _client(app, "alice")


@functools.cache
def _redis(url: str) -> Redis:
    return Redis.from_url(url)


def _created(settings: Settings) -> dict[str, Any]:
    """Everything a request could have left behind: rows of any owner, queued tasks, files."""
    models = (Job, Batch, Upload)
    with session_factory(settings.database_url)() as s:
        counts = select(*(select(func.count()).select_from(m).scalar_subquery() for m in models))
        found: dict[str, Any] = dict(
            zip([m.__name__ for m in models], s.execute(counts).one(), strict=True)
        )
    found["rq keys"] = sum(1 for _ in _redis(settings.redis_url).scan_iter("rq:*"))
    folder = settings.artifacts / "uploads"
    found["upload files"] = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return found


NOTHING = {"Job": 0, "Batch": 0, "Upload": 0, "rq keys": 0, "upload files": []}


# --- every published constraint ----------------------------------------------------------


def test_the_valid_bodies_are_valid() -> None:
    """Each case breaks one thing of these, so the rest must pass on its own."""
    JobSpec.model_validate(SPEC)
    for batch in VALID_BODIES["BatchCreate"]:
        assert len(BatchCreate.model_validate(batch).specs()) >= 1
    UploadArgs.model_validate(ARGS)


def test_every_published_constraint_is_a_422_naming_the_field_and_creates_nothing(
    app: FastAPI, alice: TestClient, settings: Settings
) -> None:
    document = app.openapi()
    walker = Walker(document)
    cases = _cases(document, walker)

    assert not walker.unknown, f"teach the walker these constraints: {walker.unknown}"
    covered = {c.bad.loc[: len(s)] for c in cases if c.where == "body" for s in walker.skipped}
    assert walker.skipped <= covered, f"never walked: {walker.skipped - covered}"
    rules = {c.bad.rule.split(" ")[0] for c in cases}
    assert rules >= {"maximum", "exclusiveMinimum", "maxLength", "pattern", "enum", "maxItems"}
    fields = {c.bad.loc for c in cases if c.path == "/v1/jobs" and c.where == "body"}
    assert {("search", "n_trials"), ("model", "weights"), ("triage", "ratios", 0)} <= fields

    wrong = [f"{where}: a number without both bounds" for where in walker.unbounded]
    for case in cases:
        response = _send(alice, case)
        expected = (case.where, *map(str, case.bad.loc))
        locs = []
        if response.status_code == 422:
            locs = [tuple(map(str, e["loc"])) for e in response.json()["detail"]]
        if expected not in locs:
            wrong.append(f"{case.name}: {response.status_code} {response.text[:200]}")
        elif case.method == "POST" and _created(settings) != NOTHING:
            wrong.append(f"{case.name}: created {_created(settings)}")
    assert not wrong, f"{len(wrong)} of {len(cases)} cases:\n" + "\n".join(wrong)
    assert _created(settings) == NOTHING

    # The same bodies unbroken are accepted: the 422s above were the broken field's.
    assert alice.post("/v1/jobs", json=SPEC).status_code == 201
    for batch in VALID_BODIES["BatchCreate"]:
        assert alice.post("/v1/batches", json=batch).status_code == 201, batch


MALFORMED: dict[str, tuple[bytes, dict[str, str]]] = {
    "not JSON": (b"{name: x", {}),
    "a JSON array": (b"[1, 2]", {}),
    "empty": (b"", {}),
    "nested 100 000 deep": (b"[" * 100_000 + b"]" * 100_000, {}),
    "an integer of 5000 digits": (b'{"name": ' + b"9" * 5000 + b"}", {}),
    "not UTF-8": (b'{"name": "\xff\xfe"}', {}),
    "a form instead": (b"name=x", {"Content-Type": "application/x-www-form-urlencoded"}),
    "a gzip bomb": (b"", {"Content-Encoding": "gzip"}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_json_body_is_4xx_and_creates_nothing(
    case: str, alice: TestClient, settings: Settings
) -> None:
    content, headers = MALFORMED[case]
    if case == "a gzip bomb":
        content = _gzip(b'{"name": "', 256 << 20, b'"}')
    for path in ("/v1/jobs", "/v1/batches"):
        response = alice.post(
            path, content=content, headers={"Content-Type": "application/json", **headers}
        )
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:300])
    assert _created(settings) == NOTHING


# --- strangers ---------------------------------------------------------------------------

# Public by design: operations (health.py), the OpenAPI document and its viewers, and the
# dashboard's page and files (dashboard.py), which hold no data.
PUBLIC = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    | {"/", "/static/plotly.min.js", "/static/{name}"}
)


def _needs(dependant: Any, dependency: Callable[..., Any]) -> bool:
    return dependant is not None and any(
        d.call is dependency or _needs(d, dependency) for d in dependant.dependencies
    )


def _routes(app: FastAPI) -> list[tuple[str, str, bool]]:
    """(method, path template, asks get_owner) of every route the app serves.

    Included routers are flattened (FastAPI >= 0.16x keeps them nested in ``app.routes``); a
    route without methods (a mount) cannot be called by method, so it fails the test.
    """
    found = []
    for route in app.routes:
        nested = getattr(route, "effective_route_contexts", None)
        for flat in nested() if callable(nested) else [route]:
            path = str(getattr(flat, "path_format", None) or getattr(flat, "path", repr(flat)))
            methods: set[str] = getattr(flat, "methods", None) or set()
            assert methods, f"cannot check {path}: it has no methods"
            keyed = _needs(getattr(flat, "dependant", None), get_owner)
            found += [(method, path, keyed) for method in sorted(methods)]
    return found


@dataclass(frozen=True)
class AliceHas:
    job: str  # done, with a result, a triage report and every artifact file
    batch: str  # one queued job
    batch_job: str
    upload: str
    dataset: str

    def url(self, path: str) -> str:
        ids = {
            "job_id": self.job,
            "batch_id": self.batch,
            "upload_id": self.upload,
            "dataset_id": self.dataset,
        }
        ids["name"] = "result.json" if path.startswith("/v1/") else "app.js"
        unknown = set(re.findall(r"\{(\w+)\}", path)) - set(ids)
        assert not unknown, f"{path}: which of alice's objects goes in {unknown}?"
        return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


@pytest.fixture
def alice_has(alice: TestClient, settings: Settings) -> AliceHas:
    from service.api.routes.jobs import ARTIFACTS

    job = alice.post("/v1/jobs", json=SPEC).json()["id"]
    batch = alice.post("/v1/batches", json=VALID_BODIES["BatchCreate"][0]).json()
    with session_factory(settings.database_url)() as s:
        for to, frm in [
            (JobStatus.preparing, JobStatus.queued),
            (JobStatus.searching, JobStatus.preparing),
            (JobStatus.finalizing, JobStatus.searching),
            (JobStatus.done, JobStatus.finalizing),
        ]:
            repo.transition(s, job, to, allowed_from={frm})
        repo.update_job(s, job, result={"best": {"accuracy": 0.9}}, triage={"curves": {}})
        upload = _upload_row(s, settings, "alice")
        dataset = _dataset_row(s, settings, "alice")
    for name in ARTIFACTS:
        (settings.job_dir(job) / name).write_bytes(b"{}")
    return AliceHas(job, batch["id"], batch["jobs"][0]["id"], upload, dataset)


def _dataset_row(session: Session, settings: Settings, owner: str) -> str:
    """A real uploaded image dataset (two digits per class), added as the CLI would."""
    root = settings.artifacts / "source-images"
    write_digits(root, per_class=2)
    archive = Path(shutil.make_archive(str(settings.artifacts / "source"), "zip", root))
    return add_dataset(session, settings, owner=owner, source=archive).id


def _upload_row(session: Session, settings: Settings, owner: str) -> str:
    upload_id = "ab" * 16
    settings.weights_path(upload_id).parent.mkdir(parents=True, exist_ok=True)
    settings.weights_path(upload_id).write_bytes(b"weights")
    kwargs = {"in_channels": 1, "num_classes": 10, "input_size": 28}
    uploads_repo.create_upload(
        session, upload_id=upload_id, owner=owner, arch="lenet5", arch_kwargs=kwargs,
        filename="w.safetensors", size=7, sha256="0" * 64, tensors=10,
    )  # fmt: skip
    return upload_id


def _valid_body(app: FastAPI, method: str, path: str) -> tuple[Any, str | None]:
    operation = app.openapi()["paths"].get(path, {}).get(method.lower(), {})
    media, key, _ = _body_key(operation)
    return (VALID_BODIES[key][0] if key else None), media


def test_every_route_but_the_public_ones_is_401_without_a_valid_key(
    app: FastAPI, alice: TestClient, alice_has: AliceHas, settings: Settings
) -> None:
    routes = _routes(app)
    assert {path for _, path, keyed in routes if not keyed} == PUBLIC
    with session_factory(settings.database_url)() as s:
        row, revoked = keys.create_key(s, "alice")
        keys.revoke_key(s, row.id)
    valid = alice.headers["Authorization"]
    stranger = _client(app, None)
    before = _created(settings)

    checked = 0
    for method, path, keyed in routes:
        url = alice_has.url(path)
        if not keyed:
            response = stranger.request(method, url)
            assert response.status_code == 200, (method, url, response.status_code)
            continue
        body, media = _valid_body(app, method, path)
        for auth in (None, "Bearer ps_wrong", valid + "x", "Basic YWxpY2U6eA==",
                     f"Bearer {revoked.plain}", valid.removeprefix("Bearer ")):  # fmt: skip
            headers = {} if auth is None else {"Authorization": auth}
            response = _request(stranger, method, url, body, media, headers=headers)
            assert response.status_code == 401, (method, url, auth, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 6 * 19  # every /v1 route, six ways
    assert _created(settings) == before
    assert alice.get(f"/v1/jobs/{alice_has.job}").json()["status"] == "done"
    assert alice.get(f"/v1/jobs/{alice_has.batch_job}").json()["status"] == "queued"


def test_another_owners_objects_are_404_on_every_per_object_route(
    app: FastAPI, alice: TestClient, alice_has: AliceHas, settings: Settings
) -> None:
    bob = _client(app, "bob")
    per_object = [(m, p) for m, p, keyed in _routes(app) if keyed and "{" in p]
    assert len(per_object) >= 13
    before = _created(settings)

    for method, path in per_object:
        body, media = _valid_body(app, method, path)
        response = _request(bob, method, alice_has.url(path), body, media)
        assert response.status_code == 404, (method, path, response.text)
        assert "not found" in response.json()["detail"], (method, path, response.text)
    for path in ("/v1/jobs", "/v1/batches", "/v1/weights"):
        assert bob.get(path).json()["total"] == 0, path

    # Nothing of alice's changed, and every object bob was refused is there for her.
    assert _created(settings) == before
    for method, path in per_object:
        if method == "GET":
            assert alice.get(alice_has.url(path)).status_code == 200, path
    assert alice.get(f"/v1/jobs/{alice_has.batch_job}").json()["status"] == "queued"


def test_nul_characters_are_refused_not_a_server_error(
    app: FastAPI, alice: TestClient, alice_has: AliceHas, settings: Settings
) -> None:
    """PostgreSQL text cannot hold NUL; a NUL from the client is its mistake, never a 500."""
    before = _created(settings)
    for method, path, keyed in _routes(app):
        if keyed and "{" in path and method != "DELETE":
            url = re.sub(r"\{\w+\}", "a%00b", path)
            response = alice.request(method, url)
            assert 400 <= response.status_code < 500, (method, url, response.status_code)
    candidates = f"/v1/jobs/{alice_has.job}/candidates"
    for params in ({"worker": "a\x00b"}, {"order": "\x00"}, {"status": "\x00"}):
        assert 400 <= alice.get(candidates, params=params).status_code < 500, params
    response = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "a\x00b"})
    assert 400 <= response.status_code < 500, response.text
    assert _created(settings) == before


# --- hostile uploads ---------------------------------------------------------------------


@functools.cache
def _gzip(head: bytes, zeros: int, tail: bytes, wbits: int = 31) -> bytes:
    """``head``, ``zeros`` zero bytes and ``tail``, gzip-compressed (about 1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out = [packer.compress(head)]
    chunk = bytes(1 << 20)
    for _ in range(zeros >> 20):
        out.append(packer.compress(chunk))
    out += [packer.compress(tail), packer.flush()]
    return b"".join(out)


BOUNDARY = "b0undary"


def _multipart(filename: str) -> tuple[bytes, bytes]:
    """A form of ARGS and a file part, by hand, as bytes before and after the file's content."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in ARGS.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return "".join(parts).encode(), f"\r\n--{BOUNDARY}--\r\n".encode()


@functools.cache
def _zip_bomb(size: int = 256 << 20) -> bytes:
    """A zip whose one member (named like weights) inflates to ``size`` bytes."""
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z,
        z.open("model.safetensors", "w", force_zip64=True) as member,
    ):
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            member.write(chunk)
    return buf.getvalue()


def _nested_zip_bomb() -> bytes:
    """Two levels: eight zip bombs in a zip (512 MiB once fully inflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(8):
            z.writestr(f"part{i}.zip", _zip_bomb(64 << 20))
    return buf.getvalue()


def _polyglot(sentinel: Path) -> bytes:
    """A well-formed safetensors file whose one U8 tensor is a malicious pickle."""
    evil = pickle.dumps(_Evil(sentinel))
    return _raw({"a": {"dtype": "U8", "shape": [len(evil)], "data_offsets": [0, len(evil)]}}, evil)


F32 = "F32"
HOSTILE: dict[str, Callable[[Path], bytes]] = {
    "zip bomb": lambda _: _zip_bomb(),
    "nested zip bomb": lambda _: _nested_zip_bomb(),
    "gzip bomb as the file": lambda _: _gzip(b"", 256 << 20, b""),
    "header length 2**63": lambda _: _raw({}, b"", length=2**63),
    "header length 2**64 - 1": lambda _: _raw({}, b"", length=2**64 - 1),
    "a tensor of 1 ZiB": lambda _: _raw(
        {"a": {"dtype": F32, "shape": [2**68], "data_offsets": [0, 2**70]}}, b"\0" * 8
    ),
    "offsets past 2**64": lambda _: _raw(
        {"a": {"dtype": "U8", "shape": [8], "data_offsets": [2**64, 2**64 + 8]}}, b"\0" * 8
    ),
    "two tensors on the same bytes": lambda _: _raw(
        {
            "a": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]},
        },
        b"\0" * 8,
    ),
    "a byte size that wraps to 0 mod 2**64": lambda _: _raw(
        {"a": {"dtype": F32, "shape": [2**62, 4], "data_offsets": [0, 0]}}, b""
    ),
    "a byte size past any machine word": lambda _: _raw(
        {"a": {"dtype": "F64", "shape": [2**32] * 64, "data_offsets": [0, 0]}}, b""
    ),
    "65 dimensions": lambda _: _raw(
        {"a": {"dtype": F32, "shape": [1] * 65, "data_offsets": [0, 4]}}, b"\0" * 4
    ),
    "an integer of 5000 digits": lambda _: _text(
        b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,0]}}'
    ),
    "nested 100 000 deep": lambda _: _text(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "pickle protocol 0": lambda sentinel: pickle.dumps(_Evil(sentinel), protocol=0),
    "pickle inside a valid safetensors file": _polyglot,
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_upload_is_refused_and_leaves_nothing(
    case: str, tmp_path: Path, alice: TestClient, settings: Settings
) -> None:
    sentinel = tmp_path / "sentinel"
    content = HOSTILE[case](sentinel)
    assert len(content) < settings.max_upload_mb << 20  # refused for what it is, not its size
    files = {"file": ("lenet5.safetensors", content, "application/octet-stream")}
    response = alice.post("/v1/weights", data=ARGS, files=files)

    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert any(e["loc"] == ["body", "file"] for e in response.json()["detail"]), response.text
    assert _stored(settings) == (0, [])
    assert not sentinel.exists()


def test_a_gzip_bomb_sent_with_content_encoding_is_refused_and_leaves_nothing(
    alice: TestClient, settings: Settings
) -> None:
    """The server does not inflate request bodies: the bytes are not a form, whatever they hold."""
    head, tail = _multipart("w.safetensors")
    bomb = _gzip(head, 512 << 20, tail)
    assert len(bomb) < settings.max_upload_mb << 20
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Encoding": "gzip",
    }
    response = alice.post("/v1/weights", content=bomb, headers=headers)

    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert _stored(settings) == (0, [])


def test_a_file_name_with_a_nul_is_stored_without_it(alice: TestClient, settings: Settings) -> None:
    from safetensors.torch import save as st_save

    head, tail = _multipart("le\x00net.safetensors")  # httpx would escape the NUL as %00
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    response = alice.post("/v1/weights", content=head + st_save(_state()) + tail, headers=headers)

    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "lenet.safetensors"
    assert _stored(settings)[0] == 1
