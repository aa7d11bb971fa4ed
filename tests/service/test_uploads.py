"""``/v1/weights``: uploads are checked completely, owner-scoped, and a refusal leaves nothing.

Real Redis and both database backends, through the real app; the expected
state_dict comes from the real ``python -m workers.nets.signature`` subprocess.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as st_save

from core.db import repo
from core.db import uploads as uploads_repo
from core.db.session import session_factory
from core.errors import InvalidInput
from core.settings import Settings
from core.spec import JobSpec
from service.api.app import create_app
from service.safetensors_header import HeaderError, TensorInfo, read_header
from service.uploads import (
    ZOO_MIN_INPUT_SIZE,
    add_upload,
    check_job_weights,
    expected_tensors,
)
from tests.service.conftest import keyed_client
from workers.nets import zoo

LIMIT_MB = 1
ARGS = {"arch": "lenet5", "in_channels": "1", "num_classes": "10", "input_size": "28"}


def _state(**shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A real LeNet-5 state_dict (1 channel, 10 classes), with some tensors replaced."""
    torch.manual_seed(0)
    model = zoo.build("lenet5", in_channels=1, num_classes=10, input_size=28)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    state.update({name: torch.zeros(shape) for name, shape in shapes.items()})
    return state


def _raw(header: Any, data: bytes, length: int | None = None) -> bytes:
    """A hand-made safetensors file (to break it in ways the library never would)."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _text(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


class _Evil:
    """Unpickling this writes ``path``: what a malicious "weights" file would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def _torch_save(obj: Any, *, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.safetensors", st_save(_state()))
    return buf.getvalue()


@pytest.fixture
def settings(tmp_path: Path, db_url: str, redis_url: str) -> Settings:
    return Settings(
        home=tmp_path / "home", database_url=db_url, redis_url=redis_url, max_upload_mb=LIMIT_MB
    )


@pytest.fixture
def alice(settings: Settings) -> Iterator[TestClient]:
    with keyed_client(settings, "alice") as client:
        yield client


def _post(client: TestClient, content: bytes, **fields: str | None) -> Any:
    data = {k: v for k, v in {**ARGS, **fields}.items() if v is not None}
    files = {"file": ("my-net.safetensors", content, "application/octet-stream")}
    return client.post("/v1/weights", data=data, files=files)


def _stored(settings: Settings) -> tuple[int, list[str]]:
    """Rows of any owner, and every file in the uploads folder (partial ones included)."""
    with session_factory(settings.database_url)() as s:
        rows = sum(uploads_repo.count_uploads(s, o) for o in ("alice", "bob", "local"))
    folder = settings.artifacts / "uploads"
    return rows, sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --- accepted -----------------------------------------------------------------------------


def test_a_real_state_dict_is_stored_listed_and_deleted(
    alice: TestClient, settings: Settings
) -> None:
    content = st_save(_state(), metadata={"note": "trained elsewhere"})
    response = _post(alice, content)

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id",
        "arch",
        "arch_kwargs",
        "filename",
        "size",
        "sha256",
        "tensors",
        "created_at",
    }
    assert body["arch"] == "lenet5"
    assert body["arch_kwargs"] == {"in_channels": 1, "num_classes": 10, "input_size": 28}
    assert body["filename"] == "my-net.safetensors"
    assert body["size"] == len(content)
    assert body["tensors"] == len(_state())
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    path = settings.weights_path(body["id"])
    assert path.read_bytes() == content
    assert _stored(settings) == (1, [path.name])

    page = alice.get("/v1/weights").json()
    assert page["total"] == 1 and [u["id"] for u in page["items"]] == [body["id"]]
    assert alice.get(f"/v1/weights/{body['id']}").json() == body

    assert alice.delete(f"/v1/weights/{body['id']}").status_code == 204
    assert _stored(settings) == (0, [])
    assert alice.get(f"/v1/weights/{body['id']}").status_code == 404
    assert alice.delete(f"/v1/weights/{body['id']}").status_code == 404


def test_half_precision_weights_fit_a_float_network(alice: TestClient) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in _state().items()}
    assert _post(alice, st_save(state)).status_code == 201


# --- refused: 4xx naming the field, nothing stored ---------------------------------------

F32x2 = {"dtype": "F32", "shape": [2]}
REFUSED: dict[str, tuple[Any, dict[str, str], int, str, str]] = {
    # name: (content or a maker, form fields, status, field, words in the message)
    "pickle.dumps": (pickle.dumps(_state()), {}, 422, "file", "pickle"),
    "torch.save": (lambda: _torch_save(_state()), {}, 422, "file", "zip"),
    "legacy torch.save": (lambda: _torch_save(_state(), legacy=True), {}, 422, "file", "pickle"),
    "zip": (_zip, {}, 422, "file", "zip"),
    "empty": (b"", {}, 422, "file", "truncated"),
    "truncated": (lambda: st_save(_state())[:-10], {}, 422, "file", "truncated"),
    "offsets past the end": (
        _raw({"a": {**F32x2, "data_offsets": [0, 8]}}, b"\0" * 4),
        {},
        422,
        "file",
        "truncated",
    ),
    "overlapping offsets": (
        _raw(
            {"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [4, 12]}},
            b"\0" * 12,
        ),
        {},
        422,
        "file",
        "overlaps",
    ),
    "offsets that disagree with the shape": (
        _raw({"a": {**F32x2, "data_offsets": [0, 4]}}, b"\0" * 4),
        {},
        422,
        "file",
        "needs 8",
    ),
    "huge header length": (_raw({}, b"", length=2**62), {}, 422, "file", "header length"),
    "header not JSON": (_text(b"{oops"), {}, 422, "file", "JSON"),
    "duplicate tensor names": (
        _text(
            b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},'
            b'"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
        ),
        {},
        422,
        "file",
        "twice",
    ),
    "wrong shape": (
        lambda: st_save(_state(**{"fc.weight": (5, 84)})),
        {},
        422,
        "file",
        "fc.weight has shape [5, 84], expected [10, 84]",
    ),
    "missing tensor": (
        lambda: st_save({k: v for k, v in _state().items() if k != "fc.bias"}),
        {},
        422,
        "file",
        "missing fc.bias",
    ),
    "extra tensor": (
        lambda: st_save(_state(**{"extra.weight": (3,)})),
        {},
        422,
        "file",
        "unexpected extra.weight",
    ),
    "integer where floats belong": (
        lambda: st_save({**_state(), "fc.bias": torch.zeros(10, dtype=torch.int32)}),
        {},
        422,
        "file",
        "floating",
    ),
    "other classes": (lambda: st_save(_state()), {"num_classes": "7"}, 422, "file", "fc.weight"),
    "unknown arch": (lambda: st_save(_state()), {"arch": "alexnet"}, 422, "arch", "alexnet"),
    "torchvision not installed": (
        lambda: st_save(_state()),
        {"arch": "torchvision:resnet18"},
        422,
        "arch",
        "torchvision",
    ),
    "input too small for the zoo": (
        lambda: st_save(_state()),
        {"input_size": "16"},
        422,
        "input_size",
        str(ZOO_MIN_INPUT_SIZE),
    ),
    "channels not a number": (
        lambda: st_save(_state()),
        {"in_channels": "one"},
        422,
        "in_channels",
        "integer",
    ),
    "missing arch": (lambda: st_save(_state()), {"arch": None}, 422, "arch", "required"),
    "unexpected field": (lambda: st_save(_state()), {"colour": "red"}, 422, "colour", "unexpected"),
    "over the limit, streamed": (
        b"\0" * (LIMIT_MB * 1024 * 1024 + 1000),
        {},
        413,
        "file",
        "limit",
    ),
    "over the limit, by its length": (
        b"\0" * (3 * LIMIT_MB * 1024 * 1024),
        {},
        413,
        "file",
        "limit",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_upload_names_the_field_and_leaves_nothing(
    case: str, alice: TestClient, settings: Settings
) -> None:
    content, fields, status, field, words = REFUSED[case]
    response = _post(alice, content() if callable(content) else content, **fields)

    assert response.status_code == status, response.text
    assert field in response.text and words in response.text, response.text
    if status == 422:
        assert any(e["loc"] == ["body", field] for e in response.json()["detail"]), response.text
    assert _stored(settings) == (0, [])


def test_a_body_that_is_not_a_form_or_has_no_file_is_422(
    alice: TestClient, settings: Settings
) -> None:
    as_json = alice.post("/v1/weights", json=ARGS)
    no_file = alice.post("/v1/weights", data=ARGS, files={"other": ("x", b"x")})
    only_fields = alice.post("/v1/weights", data=ARGS, files={})
    for response in (as_json, no_file, only_fields):
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][-1] in ("file", "other"), response.text
    assert _stored(settings) == (0, [])


def test_a_malicious_pickle_is_never_unpickled(
    tmp_path: Path, alice: TestClient, settings: Settings
) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control)))  # the payload does work when unpickled
    assert control.read_text() == "pwned"

    sentinel = tmp_path / "sentinel"
    for payload in (pickle.dumps(_Evil(sentinel)), _torch_save(_Evil(sentinel))):
        response = _post(alice, payload)
        assert response.status_code == 422, response.text
    assert not sentinel.exists()
    assert _stored(settings) == (0, [])


# --- owners -------------------------------------------------------------------------------


def test_uploads_are_the_owners_and_need_a_key(alice: TestClient, settings: Settings) -> None:
    upload_id = _post(alice, st_save(_state())).json()["id"]
    with keyed_client(settings, "bob") as bob:
        assert bob.get(f"/v1/weights/{upload_id}").status_code == 404
        assert bob.delete(f"/v1/weights/{upload_id}").status_code == 404
        assert bob.get("/v1/weights").json()["total"] == 0
    with TestClient(create_app(settings)) as anonymous:
        for method, path in [
            ("GET", "/v1/weights"),
            ("GET", f"/v1/weights/{upload_id}"),
            ("DELETE", f"/v1/weights/{upload_id}"),
        ]:
            assert anonymous.request(method, path).status_code == 401, (method, path)
        refused = anonymous.post(
            "/v1/weights", data=ARGS, files={"file": ("x.safetensors", st_save(_state()))}
        )
        assert refused.status_code == 401
    assert _stored(settings)[0] == 1
    assert alice.get(f"/v1/weights/{upload_id}").status_code == 200


def test_an_upload_used_by_an_unfinished_job_cannot_be_deleted(
    alice: TestClient, settings: Settings
) -> None:
    from core.db.models import JobStatus

    upload_id = _post(alice, st_save(_state())).json()["id"]
    spec = JobSpec.model_validate(
        {
            "name": "from-upload",
            "model": {"arch": "lenet5", "weights": upload_id},
            "dataset": {"name": "synthetic"},
            "target": {"flops_ratio": 0.5},
        }
    )
    with session_factory(settings.database_url)() as s:
        job_id = repo.create_job(s, spec, "interactive", owner="alice").id

    response = alice.delete(f"/v1/weights/{upload_id}")
    assert response.status_code == 409 and job_id in response.text
    with session_factory(settings.database_url)() as s:
        repo.transition(s, job_id, JobStatus.cancelled, allowed_from={JobStatus.queued})
    assert alice.delete(f"/v1/weights/{upload_id}").status_code == 204


def test_check_job_weights_wants_the_owners_upload_of_the_same_arch(
    settings: Settings, tmp_path: Path
) -> None:
    from core.db.session import migrate

    migrate(settings.database_url)
    source = tmp_path / "lenet.safetensors"
    source.write_bytes(st_save(_state()))
    with session_factory(settings.database_url)() as s:
        upload = add_upload(
            s, settings, owner="alice", source=source, arch="lenet5", **_shape_args()
        )

        def spec(arch: str, weights: str | None) -> JobSpec:
            model = {"arch": arch, "weights": weights}
            return JobSpec.model_validate(
                {"name": "j", "model": model, "target": {"flops_ratio": 0.5}}
            )

        check_job_weights(s, "alice", spec("lenet5", upload.id))
        check_job_weights(s, "bob", spec("lenet5", None))
        for owner, arch, weights, words in [
            ("bob", "lenet5", upload.id, "no upload"),
            ("alice", "lenet5", "0" * 32, "no upload"),
            ("alice", "resnet20", upload.id, "lenet5 weights, not resnet20"),
        ]:
            with pytest.raises(InvalidInput, match=words) as info:
                check_job_weights(s, owner, spec(arch, weights))
            assert info.value.field == "model.weights"
            assert str(info.value).startswith("model.weights: ")


def _shape_args() -> dict[str, int]:
    return {"in_channels": 1, "num_classes": 10, "input_size": 28}


# --- without a database -------------------------------------------------------------------


def test_jobspec_weights_must_look_like_an_upload_id() -> None:
    base = {"name": "j", "target": {"flops_ratio": 0.5}}
    ok = JobSpec.model_validate({**base, "model": {"arch": "lenet5", "weights": "a" * 32}})
    assert ok.model.weights == "a" * 32
    for bad in ("abc", "A" * 32, "../../etc/passwd"):
        with pytest.raises(ValueError, match="weights"):
            JobSpec.model_validate({**base, "model": {"weights": bad}})


def test_the_signature_subprocess_matches_a_real_state_dict() -> None:
    expected = expected_tensors("resnet20", 3, 7, 32)
    model = zoo.build("resnet20", in_channels=3, num_classes=7, input_size=32)
    assert list(expected) == list(model.state_dict())
    assert expected["fc.weight"] == TensorInfo("F32", (7, 64))
    assert expected["bn1.num_batches_tracked"] == TensorInfo("I64", ())
    assert ZOO_MIN_INPUT_SIZE == zoo.MIN_INPUT_SIZE


def test_read_header_accepts_what_safetensors_writes(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    state = {"a": torch.zeros(2, 3), "b": torch.zeros(0), "c": torch.ones(4, dtype=torch.int64)}
    path.write_bytes(st_save(state, metadata={"format": "pt"}))
    assert read_header(path) == {
        "a": TensorInfo("F32", (2, 3)),
        "b": TensorInfo("F32", (0,)),
        "c": TensorInfo("I64", (4,)),
    }


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (_raw({"a": {**F32x2, "data_offsets": [0, 8]}}, b"\0" * 12), "4 bytes after"),
        (_raw({"a": {**F32x2, "data_offsets": [4, 12]}}, b"\0" * 12), "unused bytes"),
        (_raw({"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "dtype"),
        (_raw({"a": {**F32x2, "data_offsets": [8, 0]}}, b"\0" * 8), "begin <= end"),
        (_raw({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b""), "shape"),
        (_raw({"a": {**F32x2, "data_offsets": [0, 8], "x": 1}}, b"\0" * 8), "exactly"),
        (_raw({"__metadata__": {"n": 1}}, b""), "__metadata__"),
        (_text(b"[1, 2]"), "JSON object"),
        (_text(b"\xff\xfe"), "UTF-8"),
        (b"\x01\0\0", "truncated"),
    ],
)
def test_read_header_refuses_malformed_files(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(HeaderError, match=words):
        read_header(path)


def test_a_header_length_that_starts_like_a_pickle_is_still_read(tmp_path: Path) -> None:
    header = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    path = tmp_path / "w.safetensors"
    path.write_bytes(_text(header.ljust(0x0580), b"\0" * 8))  # length bytes: 80 05 00 ...
    assert path.read_bytes()[:2] == b"\x80\x05"
    assert read_header(path) == {"a": TensorInfo("F32", (2,))}


def test_jobs_and_batches_naming_someone_elses_upload_are_422_and_create_nothing(
    alice: TestClient, settings: Settings
) -> None:
    upload_id = _post(alice, st_save(_state())).json()["id"]
    spec = {"name": "j", "model": {"arch": "lenet5", "weights": upload_id}}
    spec |= {"dataset": {"name": "synthetic"}, "target": {"flops_ratio": 0.5}}
    with keyed_client(settings, "bob") as bob:
        job = bob.post("/v1/jobs", json=spec)
        batch = bob.post("/v1/batches", json={"name": "b", "jobs": [spec, spec]})
        wrong_arch = alice.post(
            "/v1/jobs", json={**spec, "model": {**spec["model"], "arch": "resnet20"}}
        )
        totals = bob.get("/v1/jobs").json()["total"], bob.get("/v1/batches").json()["total"]
    assert job.status_code == 422 and job.json()["detail"][0]["loc"] == ["body", "model", "weights"]
    assert batch.status_code == 422
    assert batch.json()["detail"][0]["loc"] == ["body", "jobs", "0", "model", "weights"]
    assert wrong_arch.status_code == 422 and "not resnet20" in wrong_arch.text
    assert totals == (0, 0) and alice.get("/v1/jobs").json()["total"] == 0
    assert alice.post("/v1/jobs", json=spec).status_code == 201
