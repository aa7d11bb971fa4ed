"""Shared pieces of the end-to-end tests: a real Redis and a tiny JobSpec."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.spec import JobSpec
from tests.support import redis_server


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis (the local one, or a redis-server started for the session)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


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
