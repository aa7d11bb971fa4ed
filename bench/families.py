"""Network families on real 3-channel images: structural check, profile build, one job.

For every zoo network (and any ``--arch`` given), on Fashion-MNIST written as
3-channel 32x32 PNG class folders (``tests/imagefolders.py``):

- ``check_ms``: the fail-early structural check from scratch (build the
  network, ``workers.compress.structure.check``: forward at the data's shape,
  profile, pruning groups), median of 5;
- ``profile_ms``: the ModelProfile build alone, median of 5;
- one local job at flops_ratio 0.5 (``run_local``), its phase times and wall
  time, and the exported network re-measured (``workers.verify``).

Usage:
    python bench/families.py [--per-class 100] [--trials 8] [--json bench/results/families.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.local import local_settings, run_local
from core.spec import JobSpec
from tests.imagefolders import write_fashion_mnist
from workers.compress import profiling, structure
from workers.nets import zoo
from workers.verify import verify

SHAPE = (3, 32, 32)


def _median_ms(fn: Any, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(arch: str, out: Path, trials: int) -> dict[str, Any]:
    """Static costs and one job of ``arch``."""
    model = zoo.build(arch, in_channels=3, num_classes=10, input_size=32)
    row: dict[str, Any] = {
        "arch": arch,
        "check_ms": _median_ms(
            lambda: structure.check(
                zoo.build(arch, in_channels=3, num_classes=10, input_size=32),
                input_shape=SHAPE,
                num_classes=10,
                arch=arch,
            )
        ),
        "profile_ms": _median_ms(
            lambda: profiling.build_profile(model, arch=arch, input_shape=SHAPE, num_classes=10)
        ),
    }
    spec = JobSpec.model_validate(
        {
            "name": f"bench-{arch}",
            "model": {"arch": arch, "pretrain_epochs": 2},
            "dataset": {"name": "imagefolder", "path": "fmnist", "channels": 3},
            "target": {"flops_ratio": 0.5},
            "search": {"n_trials": trials},
            "final": {"finetune_epochs": 1},
        }
    )
    start = time.perf_counter()
    job = run_local(spec, out, progress=False)
    row["job_s"] = time.perf_counter() - start
    if job["status"] != "done":
        return {**row, "status": job["status"], "error": job["error"]}
    result = job["result"]
    checks = verify(out, settings=local_settings(out, "cpu"))
    return {
        **row,
        "status": "done",
        **{k: result["timings"][k] for k in ("prepare_s", "search_s", "ladder_s", "finalize_s")},
        "baseline_accuracy": result["baseline"]["accuracy"],
        "accuracy": result["best"]["accuracy"],
        "flops_ratio": result["best"]["flops_ratio"],
        "verified": all(c.ok for c in checks),
    }


def table(rows: list[dict[str, Any]]) -> str:
    cols = (
        *("arch", "check_ms", "profile_ms", "job_s", "prepare_s", "search_s", "ladder_s"),
        *("finalize_s", "baseline_accuracy", "accuracy", "flops_ratio", "verified"),
    )
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for r in rows:
        cells = [r.get(c, r.get("error", "")) for c in cols]
        lines.append(" | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="default: every zoo network")
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/families.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        write_fashion_mnist(data_dir / "fmnist", per_class=args.per_class, split_layout=True)
        os.environ["PRUNESEARCH_DATA_DIR"] = str(data_dir)
        rows = [measure(arch, Path(tmp) / arch, args.trials) for arch in (args.arch or zoo.ARCHS)]
    print(table(rows))
    meta = {"machine": platform.node(), "cpus": os.cpu_count(), "argv": sys.argv[1:]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
