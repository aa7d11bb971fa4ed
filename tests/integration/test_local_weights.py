"""A job that starts from the user's own weights, end to end in local mode.

The uploaded network is trained here, outside prunesearch, saved with
safetensors and registered through ``service.uploads`` (the same checks as
``POST /v1/weights``); the job must take it as its baseline untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from cli.local import local_settings, run_local
from cli.main import main
from core.db import repo
from core.db.session import migrate, session_factory
from core.spec import JobSpec
from service.uploads import add_upload
from tests.integration.conftest import tiny_spec
from workers.nets import train, zoo
from workers.steps.context import load_splits


def _with_weights(spec: JobSpec, upload_id: str) -> JobSpec:
    # pretrain_epochs stays 2: with weights given, it must not be used.
    assert spec.model.pretrain_epochs > 0
    return spec.model_copy(update={"model": spec.model.model_copy(update={"weights": upload_id})})


def _upload(out: Path, source: Path, num_classes: int) -> str:
    settings = local_settings(out, "cpu")
    migrate(settings.database_url)
    with session_factory(settings.database_url)() as s:
        row = add_upload(
            s,
            settings,
            owner="local",
            source=source,
            arch="lenet5",
            in_channels=1,
            num_classes=num_classes,
            input_size=28,
        )
        return row.id


def test_a_job_from_uploaded_weights_skips_pretraining(tmp_path: Path) -> None:
    base = tiny_spec("from-upload", n_trials=3)
    out = tmp_path / "out"
    splits = load_splits(base, local_settings(out, "cpu"), "cpu")
    torch.manual_seed(7)
    mine = zoo.build(
        "lenet5", in_channels=splits.in_channels, num_classes=splits.num_classes, input_size=28
    )
    train.fit(mine, splits.train, epochs=1, seed=7)
    accuracy = train.evaluate(mine, splits.test)
    state = {k: v.detach().contiguous() for k, v in mine.state_dict().items()}
    source = tmp_path / "mine.safetensors"
    save_file(state, str(source))
    spec = _with_weights(base, _upload(out, source, splits.num_classes))

    job = run_local(spec, out, progress=False)

    assert job["status"] == "done", job["error"]
    assert job["baseline"]["accuracy"] == accuracy
    result = json.loads((out / "result.json").read_text())
    assert result["baseline"]["accuracy"] == accuracy
    assert result["spec"]["model"]["weights"] == spec.model.weights
    # Not one step of pretraining: the job's baseline is the uploaded tensors, bit for bit.
    baseline = load_file(
        str(local_settings(out, "cpu").job_dir(job["id"]) / "baseline.safetensors")
    )
    assert baseline.keys() == state.keys()
    assert all(torch.equal(baseline[k], state[k]) for k in state)


def test_weights_for_other_classes_fail_the_job_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "out"
    torch.manual_seed(0)
    other = zoo.build("lenet5", in_channels=1, num_classes=7, input_size=28)
    source = tmp_path / "seven.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(source))
    spec = _with_weights(tiny_spec("wrong-classes", n_trials=2), _upload(out, source, 7))

    job = run_local(spec, out, progress=False)

    assert job["status"] == "failed"
    assert "uploaded weights" in job["error"] and "num_classes=10" in job["error"]
    assert "fc.weight" in job["error"]


def _saved(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return state


def test_search_with_weights_starts_from_the_file(tmp_path: Path) -> None:
    """``prunesearch search spec.yaml --weights FILE``: the file is the baseline, bit for bit."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec("cli-weights", n_trials=2).model_dump()))
    torch.manual_seed(3)
    state = _saved(
        zoo.build("lenet5", in_channels=1, num_classes=10, input_size=28), tmp_path / "w.st"
    )
    out = tmp_path / "out"

    assert (
        main(
            [
                "search",
                str(spec_file),
                "--out",
                str(out),
                "--weights",
                str(tmp_path / "w.st"),
                "--quiet",
            ]
        )
        == 0
    )

    result = json.loads((out / "result.json").read_text())
    assert result["spec"]["model"]["weights"] is not None
    job_dir = local_settings(out, "cpu").job_dir(result["job_id"])
    baseline = load_file(str(job_dir / "baseline.safetensors"))
    assert all(torch.equal(baseline[k], state[k]) for k in state)


def test_search_with_weights_of_another_shape_is_refused_before_any_job(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec("cli-bad-weights", n_trials=2).model_dump()))
    _saved(zoo.build("lenet5", in_channels=1, num_classes=7, input_size=28), tmp_path / "w7.st")
    out = tmp_path / "out"

    with pytest.raises(SystemExit, match=r"--weights .*w7\.st: .*fc"):
        main(["search", str(spec_file), "--out", str(out), "--weights", str(tmp_path / "w7.st")])
    with pytest.raises(SystemExit, match="no such file"):
        main(["search", str(spec_file), "--out", str(out), "--weights", str(tmp_path / "none")])
    with session_factory(local_settings(out, "cpu").database_url)() as s:
        assert repo.list_jobs(s, limit=10, offset=0) == []
