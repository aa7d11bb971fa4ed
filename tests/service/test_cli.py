"""The CLI refuses a bad JobSpec with a message naming the field, before doing anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import load_spec, main


def test_bad_spec_names_the_field(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\ntarget: {flops_ratio: 1.5}\nsearch: {n_trials: 0}\n")
    with pytest.raises(SystemExit) as err:
        load_spec(spec)
    message = str(err.value)
    assert "target.flops_ratio" in message and "search.n_trials" in message


def test_search_with_bad_spec_creates_no_output(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\ntarget: {flops_ratio: 0.5}\nmodel: {arch: resnet9000}\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"model\.arch"):
        main(["search", str(spec), "--out", str(out)])
    assert not out.exists()


def test_unreadable_spec(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
