"""Any CNN, any image dataset: each network family, end to end, on real 3-channel images.

For MobileNetV2 (depthwise), ResNeXt (grouped), DenseNet (concatenation),
RegNetY (grouped + SE) and a plugin network that exists only in this file
(depthwise, concatenation, a flatten head whose classifier is not ``fc``),
a job at flops_ratio 0.5 runs on Fashion-MNIST written as 3-channel 32x32
PNG class folders, then:

- the export is re-measured (``prunesearch verify``: the CLI, as a user runs it, for the
  plugin network; the same function in process for the families);
- the FLOPs counted on the exported network equal the ModelProfile's figure
  for the chosen candidate (what the search believed it was buying).

Locally: :func:`cli.local.run_local` on the folder given by path, all five. Through the
service: ``prunesearch serve`` and two ``prunesearch worker`` processes on a real Redis, the
data uploaded as a zip through ``POST /v1/datasets``, two jobs submitted at once: the plugin
network (a worker process must find the plugin by itself) and DenseNet (concatenation). The
other families take the same path through the service; running all five there too doubled
this file's time (212 s) and found nothing the local test does not. The jobs
are as small as still means something (two trials, one pretraining epoch,
no ladder) so that the suite stays inside the CI budget.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from cli.local import local_settings, run_local
from core.db import repo
from core.db.session import session_factory, session_scope
from core.settings import Settings
from core.spec import JobSpec
from tests.imagefolders import write_fashion_mnist
from tests.integration.test_service_e2e import create_key
from tests.support import free_port, install_plugin, stop_processes, wait_for_api
from workers.verify import report, verify

CLI = [sys.executable, "-m", "cli.main"]
ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 10  # 11: dashboard, 12: schemathesis, 13: service e2e
PLUGIN_ARCH = "testonlynet"
FAMILIES = ("mobilenetv2", "resnext", "densenet", "regnet")
THROUGH_THE_SERVICE = ("densenet", PLUGIN_ARCH)

PLUGIN = '''
import torch
from torch import nn


def _cbr(c_in, c_out, k=3, groups=1):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class TestOnlyNet(nn.Module):
    """Stem, a depthwise-separable branch concatenated with the stem, a flatten head."""

    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.stem = _cbr(in_channels, 16)
        self.dw = _cbr(16, 16, groups=16)
        self.pw = _cbr(16, 24, k=1)
        self.mix = _cbr(40, 32)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(32 * 4, num_classes)

    def forward(self, x):
        s = self.stem(x)
        y = torch.cat([s, self.pw(self.dw(s))], dim=1)
        return self.head(self.pool(self.mix(y)).flatten(1))


def build(*, in_channels, num_classes, input_size):
    return TestOnlyNet(in_channels, num_classes)
'''


def family_spec(arch: str, dataset: dict[str, Any]) -> dict[str, Any]:
    """Two trials at half the FLOPs, 3-channel 28x28 crops of the 32x32 images."""
    return {
        "name": f"family-{arch}",
        "model": {"arch": arch, "pretrain_epochs": 1},
        "dataset": {
            "name": "imagefolder",
            "channels": 3,
            "input_size": 28,
            "loader_workers": 0,
            **dataset,
        },
        "target": {"flops_ratio": 0.5},
        "search": {"n_trials": 2, "min_ratio": 0.2},
        "scoring": {"calib_batches": 1, "promote_top_k": 0},
        "final": {"finetune_epochs": 0.25},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The data directory with the image folder, and the plugin on ``PYTHONPATH``."""
    base = tmp_path_factory.mktemp("families")
    data_dir = base / "data"
    write_fashion_mnist(data_dir / "fmnist", per_class=10, split_layout=True)
    site = base / "site"
    install_plugin(site, "testonlynets", PLUGIN, {PLUGIN_ARCH: "testonlynets:build"})
    paths = [str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "PRUNESEARCH_DATA_DIR": str(data_dir),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        patch.setenv("PRUNESEARCH_DATA_DIR", str(data_dir))
        yield {"base": base, "data_dir": data_dir, "env": env}
    sys.modules.pop("testonlynets", None)


def verified(arch: str, out: Path, env: dict[str, str]) -> str:
    """The export in ``out`` re-measured: its table, or the test fails.

    The plugin network's, by ``prunesearch verify OUT`` as a user runs it (a process that
    finds the plugin on its own); the families' in this process, the same function without
    a cold start each.
    """
    if arch == PLUGIN_ARCH:
        done = subprocess.run(
            [*CLI, "verify", str(out)], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout
    checks = verify(out, settings=Settings(home=Path(env["PRUNESEARCH_HOME"])))
    assert all(c.ok for c in checks), report(checks)
    return report(checks)


def zipped(folder: Path) -> bytes:
    """The class folders as a zip archive, the way a user would upload them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for path in sorted(folder.rglob("*.png")):
            z.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def test_each_family_and_a_plugin_locally(world: dict[str, Any]) -> None:
    """``run_local`` on the folder by path: verified, counted FLOPs == profile FLOPs."""
    for arch in (*FAMILIES, PLUGIN_ARCH):
        out = world["base"] / "local" / arch
        spec = JobSpec.model_validate(family_spec(arch, {"path": "fmnist"}))
        job = run_local(spec, out, progress=False)
        assert job["status"] == "done", (arch, job["error"])

        table = verified(arch, out, {**world["env"], "PRUNESEARCH_HOME": str(out)})
        assert "NO" not in table.split(), table
        best = job["result"]["best"]
        factory = session_factory(local_settings(out, "cpu").database_url)
        with session_scope(factory) as s:
            chosen = {c.id: c for c in repo.list_candidates(s, job["id"], limit=10, offset=0)}
        assert best["flops"] == pytest.approx(chosen[best["candidate_id"]].flops, abs=0.5), arch
        assert best["flops"] <= 0.5 * job["result"]["baseline"]["flops"] * 1.01, arch


@pytest.fixture
def stack(world: dict[str, Any], redis_base: str) -> Iterator[tuple[str, httpx.Client, Path]]:
    """API and two workers, every process seeing the plugin and the data directory."""
    home = world["base"] / "home"
    redis_url = f"{redis_base}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    env = {**world["env"], "PRUNESEARCH_HOME": str(home), "PRUNESEARCH_REDIS_URL": redis_url}
    key = create_key(env, "families")
    port = free_port()
    logs = world["base"] / "logs"
    logs.mkdir()
    commands = [[*CLI, "serve", "--port", str(port)]] + [
        [*CLI, "worker", "--name", f"families-{os.getpid()}-w{i}", "--device", "cpu"]
        for i in range(2)
    ]
    procs = [
        subprocess.Popen(
            cmd, env=env, stdout=(logs / f"{i}.log").open("w"), stderr=subprocess.STDOUT
        )
        for i, cmd in enumerate(commands)
    ]
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"})
    try:
        wait_for_api(url, procs[0], (logs / "0.log").read_text)
        yield url, client, logs
    finally:
        client.close()
        stop_processes(procs)
        redis.Redis.from_url(redis_url).flushdb()


def test_each_family_and_a_plugin_through_the_service(
    world: dict[str, Any], stack: tuple[str, httpx.Client, Path]
) -> None:
    """Uploaded zip, two jobs at once on two workers: each verified, FLOPs as profiled."""
    _, api, logs = stack
    uploaded = api.post(
        "/v1/datasets",
        files={"file": ("fmnist.zip", zipped(world["data_dir"] / "fmnist"), "application/zip")},
    )
    assert uploaded.status_code == 201, uploaded.text
    dataset_id = uploaded.json()["id"]
    ids = {}
    for arch in THROUGH_THE_SERVICE:
        made = api.post("/v1/jobs", json=family_spec(arch, {"upload": dataset_id}))
        assert made.status_code == 201, made.text
        ids[arch] = made.json()["id"]

    deadline = time.monotonic() + 900
    pending = set(ids.values())
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            if api.get(f"/v1/jobs/{job_id}").json()["status"] in ("done", "failed", "cancelled"):
                pending.remove(job_id)
        time.sleep(1)
    home = world["base"] / "home"
    workers_seen = set()
    for arch, job_id in ids.items():
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] != "done":
            text = "\n".join(p.read_text() for p in logs.glob("*.log"))
            pytest.fail(f"{arch}: {job['status']} ({job.get('error')})\n{text[-4000:]}")
        best = api.get(f"/v1/jobs/{job_id}/result").json()["best"]
        cands = api.get(f"/v1/jobs/{job_id}/candidates").json()["items"]
        workers_seen |= {c["worker"] for c in cands}
        profiled = {c["id"]: c["flops"] for c in cands}[best["candidate_id"]]
        assert best["flops"] == pytest.approx(profiled, abs=0.5), arch
        out = home / "artifacts" / job_id
        table = verified(arch, out, {**world["env"], "PRUNESEARCH_HOME": str(home)})
        assert "NO" not in table.split(), (arch, table)
    assert len(workers_seen) == 2, workers_seen
