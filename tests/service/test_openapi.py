"""The published OpenAPI document declares every status an operation can answer, with its body.

A client generated from the document (and schemathesis' status-code check) relies on it: a 401,
404, 429 or 503 that is not declared is a surprise to both. The common replies follow from the
operation itself (a key, a path id, parameters or a body); the rest are each route's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from service.api.app import create_app

DOCUMENT = create_app(Settings(home=Path("unused"))).openapi()
OPERATIONS = [
    (method.upper(), path, operation)
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
]
ERROR = "#/components/schemas/ErrorPublic"
INVALID = "#/components/schemas/HTTPValidationError"
# What only some routes answer: a conflict with the object's state, Redis down (503), the
# submission quotas (429 on every keyed route anyway), an upload too large, a replayed submission.
OWN: dict[tuple[str, str], set[int]] = {
    ("POST", "/v1/jobs"): {200, 409, 503},
    ("POST", "/v1/jobs/{job_id}/cancel"): {409, 503},
    ("DELETE", "/v1/jobs/{job_id}"): {409, 503},
    ("POST", "/v1/batches"): {503},
    ("POST", "/v1/batches/{batch_id}/cancel"): {409, 503},
    ("DELETE", "/v1/batches/{batch_id}"): {409, 503},
    ("POST", "/v1/weights"): {413},
    ("DELETE", "/v1/weights/{upload_id}"): {409},
    ("POST", "/v1/datasets"): {413},
    ("DELETE", "/v1/datasets/{dataset_id}"): {409},
    ("GET", "/readyz"): {503},
}


def _expected(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    codes = {400} | OWN.get((method, path), set())  # 400: a NUL in the URL or a header
    if operation.get("security"):
        codes |= {401, 429}  # no valid key; the key's rate limit (and quotas)
    if "{" in path:
        codes.add(404)  # no such object of the caller's
    if operation.get("parameters") or operation.get("requestBody"):
        codes.add(422)
    return codes


@pytest.mark.parametrize(
    ("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
def test_every_status_an_operation_answers_is_declared_with_its_body(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    declared = {int(code) for code in operation["responses"]}
    missing = _expected(method, path, operation) - declared
    assert not missing, f"{method} {path} does not declare {sorted(missing)}"
    for code, reply in operation["responses"].items():
        if int(code) < 400 or (method, path, int(code)) == ("GET", "/readyz", 503):
            continue
        schema = reply["content"]["application/json"]["schema"]
        assert schema == {"$ref": INVALID if code == "422" else ERROR}, (method, path, code)
        assert reply["description"], (method, path, code)


def test_the_error_bodies_are_published() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert schemas["ErrorPublic"]["required"] == ["detail"]
    assert schemas["ErrorPublic"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" in schemas and "ValidationError" in schemas


def test_keyed_routes_are_all_under_v1_and_say_so() -> None:
    """The rule above finds the keyed routes by their ``security``: every /v1 route has it."""
    assert all(bool(op.get("security")) == p.startswith("/v1/") for _, p, op in OPERATIONS)
    assert len(OPERATIONS) >= 26
