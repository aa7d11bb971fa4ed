"""Check an exported result against what it claims, from the files alone.

``prunesearch verify DIR`` is what a sceptical user runs on a result folder:
rebuild the network with :func:`workers.export.load` (no pickle), count its
FLOPs and parameters, re-measure its test accuracy on the job's dataset, and
compare with ``result.json`` and the job's budget. ``make demo`` ends with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings
from core.spec import JobSpec
from workers import export
from workers.nets import measure, train
from workers.steps.context import load_splits

ACCURACY_TOLERANCE = 0.001  # 0.1 point
BUDGET_SLACK = 1.01


@dataclass(frozen=True)
class Check:
    name: str
    claimed: float
    measured: float
    limit: str
    ok: bool


def verify(out: Path, *, device: str = "cpu", settings: Settings | None = None) -> list[Check]:
    """Re-measure the exported network in ``out``; one :class:`Check` per claim."""
    settings = settings or Settings()
    result = json.loads((out / "result.json").read_text())
    spec = JobSpec.model_validate(result["spec"])
    best, base = result["best"], result["baseline"]
    model = export.load(out, device=device)
    splits = load_splits(spec, settings, device)
    shape = (splits.in_channels, splits.size, splits.size)
    flops, params = measure.count(model, shape, device=device)
    accuracy = train.evaluate(model, splits.test, batch_size=512, device=device)
    checks = [
        Check(
            "test accuracy",
            best["accuracy"],
            accuracy,
            "within 0.1 point",
            abs(accuracy - best["accuracy"]) <= ACCURACY_TOLERANCE,
        ),
        Check("FLOPs", best["flops"], flops, "equal", abs(flops - best["flops"]) < 0.5),
        Check("params", best["params"], params, "equal", abs(params - best["params"]) < 0.5),
    ]
    for key, ratio in (("flops", spec.target.flops_ratio), ("params", spec.target.params_ratio)):
        if ratio is not None:
            limit = ratio * base[key] * BUDGET_SLACK
            measured = flops if key == "flops" else params
            checks.append(
                Check(
                    f"{key} budget",
                    limit,
                    measured,
                    f"<= {ratio} x baseline x 1.01",
                    measured <= limit,
                )
            )
    return checks


def report(checks: list[Check]) -> str:
    """The checks as a table."""
    lines = [f"{'check':16} {'claimed':>16} {'measured':>16}  {'rule':28} ok"]
    for c in checks:
        fmt = ",.4f" if c.name == "test accuracy" else ",.0f"
        lines.append(
            f"{c.name:16} {c.claimed:>16{fmt}} {c.measured:>16{fmt}}  {c.limit:28} "
            f"{'yes' if c.ok else 'NO'}"
        )
    return "\n".join(lines)
