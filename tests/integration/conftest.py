"""Shared pieces of the end-to-end tests: a real Redis, both database backends, a tiny JobSpec.

``dbs`` runs a test once on SQLite (the files the settings default to under the stack's
home) and once on PostgreSQL (a new database for our tables and another for the Optuna
storage, dropped afterwards; ``tests.postgres`` starts the server or fails naming what is
missing). ``SQLITE_ONLY`` keeps a test to SQLite: the stacks are minutes each, so only
the representative ones run on both (docs/reliability.md says which).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.spec import JobSpec
from tests.postgres import BACKENDS, Databases, databases
from tests.support import redis_server

# Direct parametrization shadows the ``backend`` fixture: the test runs on SQLite only.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis (the local one, or a redis-server started for the session)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of the test's stack: ``sqlite`` or ``postgresql``."""
    return str(request.param)


@pytest.fixture
def dbs(backend: str, tmp_path: Path) -> Iterator[Databases]:
    """The stack's two databases (ours and Optuna's) on ``backend``; its home is
    ``tmp_path / "home"``. Their settings are ``dbs.env()``."""
    with databases(backend, tmp_path / "home") as found:
        yield found


def tiny_spec(name: str, n_trials: int = 8, sampler: str = "tpe", criterion: str = "l1") -> JobSpec:
    """A job that runs in seconds: LeNet-5 on the synthetic set."""
    return JobSpec.model_validate(
        {
            "name": name,
            "model": {"arch": "lenet5", "pretrain_epochs": 2},
            "dataset": {"name": "synthetic"},
            "target": {"flops_ratio": 0.5},
            "search": {
                "sampler": sampler,
                "n_trials": n_trials,
                "min_ratio": 0.2,
                "criterion": criterion,
            },
            "scoring": {"calib_batches": 2},
            "final": {"finetune_epochs": 1},
        }
    )
