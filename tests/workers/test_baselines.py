"""The baseline cache: a second job on the same model loads the baseline instead of training.

Two real local jobs (LeNet-5 on the synthetic set) share one
``PRUNESEARCH_BASELINE_CACHE``. The second runs with the baseline's training
made impossible, so it can only finish if the baseline came from the cache;
its baseline file is then byte-identical to the first job's, and so is every
candidate it scores.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch

from cli.local import local_settings, run_local
from core.db import repo
from core.db.models import Candidate
from core.db.session import session_factory, session_scope
from core.spec import JobSpec
from tests.integration.conftest import tiny_spec
from workers.steps import baselines
from workers.steps.context import BASELINE_FILE, JobContext


def _spec(name: str, **changes: Any) -> JobSpec:
    data = tiny_spec(name, n_trials=3).model_dump(mode="json")
    data["scoring"].update({"promote_top_k": 2, "promote_steps": 3})
    data["final"]["finetune_epochs"] = 0.25
    for key, values in changes.items():
        data[key] = {**data[key], **values} if isinstance(data.get(key), dict) else values
    return JobSpec.model_validate(data)


def _key(spec: JobSpec, device: str = "cpu") -> str:
    """The cache key of a job with ``spec`` (the key reads only the spec and the device)."""
    return baselines.cache_key(
        cast(JobContext, SimpleNamespace(spec=spec, device=torch.device(device)))
    )


def _run(spec: JobSpec, out: Path) -> tuple[dict[str, Any], list[Candidate]]:
    job = run_local(spec, out, progress=False)
    assert job["status"] == "done", job["error"]
    with session_scope(session_factory(local_settings(out, "cpu").database_url)) as s:
        cands = repo.list_candidates(s, job["id"], limit=100, offset=0)
        s.expunge_all()
    return job, cands


def test_second_job_loads_the_cached_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRUNESEARCH_BASELINE_CACHE", str(cache))
    first_spec = _spec("cache-a")
    key = _key(first_spec)
    trainings = []
    real_fit = baselines.candidate.fit

    def counting_fit(*args: Any, **kwargs: Any) -> None:
        trainings.append(kwargs)
        real_fit(*args, **kwargs)

    monkeypatch.setattr(baselines, "candidate", SimpleNamespace(fit=counting_fit))
    first, first_cands = _run(first_spec, tmp_path / "a")
    assert trainings == [{"epochs": 2}]  # the baseline was trained, once
    cached = cache / f"{key}.safetensors"
    assert cached.is_file()

    def no_training(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the baseline was trained again instead of loaded from the cache")

    # Only the baseline's training is made impossible: the ladder and the final
    # fine-tune of the second job still train (they use workers.steps.candidate.fit).
    monkeypatch.setattr(baselines, "candidate", SimpleNamespace(fit=no_training))
    second_spec = _spec("cache-b")
    assert _key(second_spec) == key  # the name is not part of the key
    second, second_cands = _run(second_spec, tmp_path / "b")

    files = [
        local_settings(tmp_path / d, "cpu").job_dir(job["id"]) / BASELINE_FILE
        for d, job in (("a", first), ("b", second))
    ]
    assert files[0].read_bytes() == files[1].read_bytes() == cached.read_bytes()
    assert second["baseline"]["accuracy"] == first["baseline"]["accuracy"]
    # The same baseline gives the same search: every candidate scores the same.
    assert [(c.key, c.score, c.accuracy) for c in second_cands] == [
        (c.key, c.score, c.accuracy) for c in first_cands
    ]


def test_cache_key_covers_what_determines_the_weights() -> None:
    spec = _spec("key")
    key = _key(spec)
    assert len(key) == 32
    assert _key(_spec("other-name")) == key
    # What the search, the scoring and the final fine-tune do is not part of it.
    assert _key(_spec("k", search={"sampler": "nsga2"}, final={"finetune_epochs": 3})) == key
    assert _key(_spec("k", target={"flops_ratio": 0.3})) == key
    # Everything that changes the trained weights is.
    changed = [
        _spec("k", seed=1),
        _spec("k", model={"pretrain_epochs": 3}),
        _spec("k", model={"arch": "vgg11s"}),
        _spec("k", dataset={"name": "digits"}),
        _spec("k", dataset={"val_fraction": 0.2}),
        _spec("k", dataset={"subset": 500}),
        _spec("k", train={"lr": 0.01}),
        _spec("k", train={"batch_size": 64}),
    ]
    keys = [_key(s) for s in changed] + [_key(spec, device="cuda")]
    assert key not in keys
    assert len(set(keys)) == len(keys)


def test_the_local_mode_reads_the_cache_setting_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PRUNESEARCH_BASELINE_CACHE", raising=False)
    assert local_settings(tmp_path, "cpu").baseline_cache is None
    monkeypatch.setenv("PRUNESEARCH_BASELINE_CACHE", str(tmp_path / "c"))
    assert local_settings(tmp_path, "cpu").baseline_cache == tmp_path / "c"
