"""Every compression option of the JobSpec, end to end through the local mode.

Each test runs a tiny real job (LeNet-5 or resnet20 on the synthetic set)
with one option switched on and checks the evidence that the option did its
work, not only that the job finished: mask recomputations, reconstruction
errors, decomposed layers in the exported recipe, the stored triage report
and the narrowed bounds, the FLOPs-aware penalty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cli.local import local_settings, run_local
from core.db import repo
from core.db.models import Candidate, CandidateStatus
from core.db.session import session_factory, session_scope
from core.spec import JobSpec
from tests.integration.conftest import tiny_spec
from workers import export
from workers.verify import verify


def _spec(name: str, n_trials: int = 4, **sections: dict[str, Any]) -> JobSpec:
    data = tiny_spec(name, n_trials=n_trials).model_dump(mode="json")
    for key, values in sections.items():
        data[key] = {**data.get(key, {}), **values} if isinstance(data.get(key), dict) else values
    return JobSpec.model_validate(data)


def _run(spec: JobSpec, out: Path) -> tuple[dict[str, Any], list[Candidate], dict[str, Any]]:
    job = run_local(spec, out, progress=False)
    assert job["status"] == "done", job["error"]
    checks = verify(out, settings=local_settings(out, "cpu"))
    assert all(c.ok for c in checks), checks
    with session_scope(session_factory(local_settings(out, "cpu").database_url)) as s:
        cands = repo.list_candidates(s, job["id"], limit=100, offset=0)
        s.expunge_all()
    return job, cands, json.loads((out / "result.json").read_text())


@pytest.mark.parametrize(
    "search",
    [
        {"criterion": "bn_scale"},
        {"criterion": "taylor", "criterion_batches": 2},
        {"criterion": "similarity", "fold": True, "criterion_batches": 2},
        {"criterion": "discriminant", "push_steps": 3, "criterion_batches": 2},
    ],
    ids=["bn_scale", "taylor", "similarity-fold", "discriminant-push"],
)
def test_each_criterion_runs_a_job(tmp_path: Path, search: dict[str, Any]) -> None:
    spec = _spec(f"crit-{search['criterion']}", n_trials=3, search=search)
    _, cands, result = _run(spec, tmp_path)
    assert result["best"]["criterion"] == search["criterion"]
    assert all(c.status != CandidateStatus.failed for c in cands), [c.error for c in cands]
    if "push_steps" in search:
        assert all(c.timings["push_s"] > 0 for c in cands if c.status == "complete")


def test_dynamic_masks_recompute_during_trial_and_final_finetunes(tmp_path: Path) -> None:
    spec = _spec(
        "dynamic",
        n_trials=2,
        search={"masking": "dynamic", "mask_every": 2},
        scoring={"mode": "finetune", "finetune_steps": 6},
    )
    _, cands, result = _run(spec, tmp_path)
    complete = [c for c in cands if c.status == CandidateStatus.complete]
    assert complete and all(c.timings["mask_updates"] == 4 for c in complete)  # 1 + 6 // 2
    assert result["best"]["masking"] == "dynamic"
    assert result["best"]["notes"]["mask_updates"] > 1


def test_distillation_in_trial_and_final_finetunes(tmp_path: Path) -> None:
    spec = _spec(
        "distill",
        n_trials=2,
        scoring={"mode": "finetune", "finetune_steps": 4, "distill": True},
        final={"finetune_epochs": 0.1, "distill": True},
        distillation={"temperature": 2.0, "weight": 0.7},
    )
    _, _, result = _run(spec, tmp_path)
    assert result["best"]["distill"] is True
    assert result["spec"]["distillation"] == {"temperature": 2.0, "weight": 0.7}


def test_reconstruction_lowers_the_layer_errors(tmp_path: Path) -> None:
    spec = _spec("reconstruct", n_trials=2, search={"reconstruct": True, "criterion_batches": 2})
    _, cands, result = _run(spec, tmp_path)
    for c in cands:
        if c.status == CandidateStatus.complete:
            assert c.timings["reconstruct_error_after"] < c.timings["reconstruct_error_before"]
    fits = result["best"]["notes"]["reconstruct"]
    assert fits and all(f["error_after"] <= f["error_before"] + 1e-6 for f in fits)


@pytest.mark.parametrize("operator", ["lowrank", "mixed"])
def test_lowrank_operators_export_decomposed_networks(tmp_path: Path, operator: str) -> None:
    spec = _spec(f"op-{operator}", n_trials=3, search={"operator": operator})
    _, cands, result = _run(spec, tmp_path)
    best = result["best"]
    assert best["operator"] == operator
    assert best["lowrank"], "the chosen network decomposes no layer"
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["lowrank"] == best["lowrank"]
    model = export.load(tmp_path)  # restructured from the recipe, no pickle
    modules = dict(model.named_modules())
    for name, plan in best["lowrank"].items():  # each decomposed layer is now two convs
        first, second = modules[name]
        width = plan["rank"] * plan["slices"]
        assert first.weight.shape[0] == width == second.weight.shape[1]
    assert best["flops"] <= 0.5 * result["baseline"]["flops"] * 1.01
    # The first trial is the ALDS allocation the study was seeded with.
    assert cands[0].trial_number == 0 and cands[0].status == CandidateStatus.complete


def test_triage_report_is_stored_written_and_narrows_the_space(tmp_path: Path) -> None:
    spec = _spec(
        "triage",
        n_trials=3,
        model={"arch": "vgg11s", "pretrain_epochs": 1},
        triage={"enabled": True, "ratios": [0.3, 0.7], "block_steps": 2, "seed_trials": 1},
        final={"finetune_epochs": 0.05},
    )
    job, cands, _ = _run(spec, tmp_path)
    report = json.loads((tmp_path / "sensitivity.json").read_text())
    with session_scope(session_factory(local_settings(tmp_path, "cpu").database_url)) as s:
        assert repo.get_job(s, job["id"]).triage == report
    assert len(report["curves"]) == 8 and all(len(c) == 2 for c in report["curves"].values())
    assert [b["block"] for b in report["blocks"]] == [
        "features.8-13",
        "features.15-20",
        "features.22-27",
    ]
    assert set(report["findings"]) >= {"block_independence", "finetune_recovers"}
    if report["bounds"] is not None:
        for c in cands:
            for ratio, (lo, hi) in zip(c.proposed, report["bounds"], strict=True):
                assert lo - 1e-9 <= ratio <= hi + 1e-9
    # The first trial is the triage seed, clipped into the (narrowed) bounds.
    bounds = report["bounds"] or [(spec.search.min_ratio, 1.0)] * len(report["curves"])
    seed = [min(max(r, lo), hi) for r, (lo, hi) in zip(report["seeds"][0], bounds, strict=True)]
    assert cands[0].proposed == pytest.approx(seed)


def test_without_repair_the_flops_aware_objective_penalises(tmp_path: Path) -> None:
    spec = _spec("penalty", n_trials=6, search={"repair": False, "flops_lambda": 2.0})
    _, cands, _ = _run(spec, tmp_path)
    over = [c for c in cands if c.status == CandidateStatus.complete and c.flops > 0]
    result = json.loads((tmp_path / "result.json").read_text())
    base = result["baseline"]["profile_flops"]
    for c in over:
        fill = c.flops / (0.5 * base)
        assert c.score == pytest.approx(c.accuracy - 2.0 * max(0.0, fill - 1.0))
    assert any(c.flops > 0.5 * base for c in over), "no proposal went over the budget"
    assert result["best"]["flops"] <= 0.5 * result["baseline"]["flops"]  # chosen within it
