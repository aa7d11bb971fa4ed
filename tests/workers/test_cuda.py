"""On a GPU: a whole local job runs on CUDA and its export verifies there.

Skipped where torch sees no CUDA device (this needs the hardware, and CI has
none); ``bench/gpu_check.sh`` runs it first on a lent GPU machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli.local import local_settings, run_local
from core.spec import JobSpec
from workers import export
from workers.verify import verify

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_a_local_job_runs_and_verifies_on_cuda(tmp_path: Path) -> None:
    spec = JobSpec.model_validate(
        {
            "name": "cuda",
            "model": {"arch": "resnet20", "pretrain_epochs": 1},
            "dataset": {"name": "synthetic"},
            "target": {"flops_ratio": 0.5},
            "search": {"sampler": "tpe", "n_trials": 6, "criterion": "taylor"},
            "scoring": {"calib_batches": 2, "promote_top_k": 2, "promote_steps": 5},
            "final": {"finetune_epochs": 1},
        }
    )
    job = run_local(spec, tmp_path, device="cuda:0", progress=False)
    assert job["status"] == "done", job["error"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["device"] == "cuda:0"
    assert result["best"]["flops"] <= 0.5 * result["baseline"]["flops"] * 1.01
    checks = verify(tmp_path, device="cuda:0", settings=local_settings(tmp_path, "cuda:0"))
    assert all(c.ok for c in checks), checks
    model = export.load(tmp_path, device="cuda:0")
    assert next(model.parameters()).is_cuda
