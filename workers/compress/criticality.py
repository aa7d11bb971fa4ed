"""Block criticality (Deep Net Triage): collapse each block, fine-tune, and judge the findings.

The structural half of a job's triage report (:mod:`workers.compress.triage`
holds the sensitivity curves): every block of :func:`workers.compress.blocks.blocks`
is collapsed, scored, and fine-tuned with and without distillation
(:func:`block_criticality`); :func:`triage_findings` re-measures the paper's
three findings on the resulting :class:`BlockReport` list. Scoring and
training are injected (``Score``, ``Finetune``), as in the rest of triage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.compress.blocks import blocks, collapse

# Accuracy of a network (e.g. adaptive BN, then validation accuracy).
Score = Callable[[nn.Module], float]
# (model, steps, teacher or None) -> [(step, validation accuracy)] at a few
# checkpoints including the last; trains the model in place.
Finetune = Callable[[nn.Module, int, nn.Module | None], list[tuple[int, float]]]
ModelFactory = Callable[[], nn.Module]


@dataclass(frozen=True)
class BlockReport:
    """What collapsing one block costs, and how training recovers from it.

    Attributes:
        block: Block name (see :func:`blocks`).
        params_before: Parameters of the parent network.
        params_after: Parameters with the block collapsed.
        accuracy_collapsed: Score right after collapsing, before any training.
        finetune: ``(step, accuracy)`` checkpoints of the plain fine-tune of
            the whole network, the last one being the final accuracy.
        distill: The same for the fine-tune distilled from the parent.
    """

    block: str
    params_before: int
    params_after: int
    accuracy_collapsed: float
    finetune: tuple[tuple[int, float], ...]
    distill: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        # Accept lists (from a Finetune or JSON) but store immutable, sorted tuples.
        object.__setattr__(self, "finetune", _checkpoints(self.finetune, "finetune"))
        object.__setattr__(self, "distill", _checkpoints(self.distill, "distill"))

    @property
    def final_finetune(self) -> float:
        return self.finetune[-1][1]

    @property
    def final_distill(self) -> float:
        return self.distill[-1][1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (checkpoints as ``[step, accuracy]`` lists)."""
        return {
            "block": self.block,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "accuracy_collapsed": self.accuracy_collapsed,
            "finetune": [[s, a] for s, a in self.finetune],
            "distill": [[s, a] for s, a in self.distill],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockReport:
        return cls(
            block=str(data["block"]),
            params_before=int(data["params_before"]),
            params_after=int(data["params_after"]),
            accuracy_collapsed=float(data["accuracy_collapsed"]),
            finetune=_checkpoints(data["finetune"], "finetune"),
            distill=_checkpoints(data["distill"], "distill"),
        )


def block_criticality(
    make_model: ModelFactory,
    score: Score,
    finetune: Finetune,
    *,
    steps: int,
    teacher_factory: ModelFactory | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    on_report: Callable[[BlockReport], None] | None = None,
) -> list[BlockReport]:
    """Collapse every block in turn; score it, fine-tune it plainly and with distillation.

    Each of the three measurements of a block (score, plain fine-tune,
    distilled fine-tune) gets its own fresh network from ``make_model``,
    collapsed with the same seed, so both fine-tunes start from identical
    weights and neither sees BN statistics the score changed.

    Args:
        make_model: Builds a fresh copy of the trained parent network.
        score: Accuracy of a network right after collapsing.
        finetune: Trains a network for ``steps`` steps (distilling from the
            teacher when one is given) and returns its checkpoints.
        steps: Fine-tune budget per run.
        teacher_factory: Builds the teacher; defaults to ``make_model`` (the
            parent). A fresh teacher per block, handed over in eval mode.
        names: Blocks to measure (default: all of :func:`blocks`, in order).
        seed: Seeds the collapsed layer's initialisation.
        on_report: Called with each block's report as soon as it is done.

    Raises:
        ValueError: ``steps`` < 1, an unknown block name, or a fine-tune that
            returned no checkpoint.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    parent = make_model()
    available = blocks(parent)
    params_before = _param_count(parent)
    del parent
    chosen = list(available if names is None else names)
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise ValueError(f"unknown blocks {unknown}; the network has {available}")

    def collapsed(name: str) -> nn.Module:
        model = make_model()
        collapse(model, name, generator=torch.Generator().manual_seed(seed))
        return model

    reports: list[BlockReport] = []
    for name in chosen:
        model = collapsed(name)
        params_after = _param_count(model)
        accuracy = float(score(model))
        del model
        plain = finetune(collapsed(name), steps, None)
        teacher = (teacher_factory or make_model)().eval()
        distilled = finetune(collapsed(name), steps, teacher)
        del teacher
        ft, kd = _checkpoints(plain, "finetune"), _checkpoints(distilled, "distill")
        report = BlockReport(name, params_before, params_after, accuracy, ft, kd)
        reports.append(report)
        if on_report is not None:
            on_report(report)
    return reports


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _checkpoints(points: Iterable[Sequence[float]], what: str) -> tuple[tuple[int, float], ...]:
    clean = tuple(sorted((int(p[0]), float(p[1])) for p in points))
    if not clean:
        raise ValueError(f"the {what} run returned no checkpoint")
    return clean


def triage_findings(
    parent_accuracy: float,
    reports: Sequence[BlockReport],
    *,
    spread_threshold: float = 0.01,
    recovery_threshold: float = 0.01,
    cap_tolerance: float = 0.005,
) -> dict[str, Any]:
    """The paper's three findings, measured on ``reports``, each with its verdict.

    Accuracies and thresholds share one unit: with accuracies in ``[0, 1]``
    the defaults are 1 point (spread, recovery) and half a point (cap).

    1. ``block_independence``: the spread (max - min) of the final plain
       fine-tune accuracy across blocks is below ``spread_threshold``. Needs
       at least two blocks to hold.
    2. ``finetune_recovers``: the mean final plain fine-tune accuracy is at
       least ``parent_accuracy - recovery_threshold``.
    3. ``distillation``: ``speeds_convergence`` when the distilled accuracy
       at the first checkpoint beats the plain one (means over blocks), and ``caps_at_parent``
       when the mean final distilled accuracy is at most ``parent_accuracy +
       cap_tolerance``; ``holds`` when both do.

    Raises:
        ValueError: No reports.
    """
    if not reports:
        raise ValueError("triage findings need at least one block report")
    p = float(parent_accuracy)
    finals = [r.final_finetune for r in reports]
    low = min(reports, key=lambda r: r.final_finetune)
    high = max(reports, key=lambda r: r.final_finetune)
    spread = high.final_finetune - low.final_finetune
    mean_final = _mean(finals)

    # Both runs of a block come from one Finetune, so their first checkpoints coincide.
    early_ft = [r.finetune[0][1] for r in reports]
    early_kd = [r.distill[0][1] for r in reports]
    early_steps = {r.finetune[0][0] for r in reports} | {r.distill[0][0] for r in reports}
    speedup = _mean(early_kd) - _mean(early_ft)
    kd_finals = [r.final_distill for r in reports]
    mean_kd = _mean(kd_finals)
    speeds = speedup > 0.0
    caps = mean_kd <= p + cap_tolerance

    return {
        "parent_accuracy": p,
        "blocks": len(reports),
        "block_independence": {
            "spread": spread,
            "threshold": spread_threshold,
            "lowest": {"block": low.block, "accuracy": low.final_finetune},
            "highest": {"block": high.block, "accuracy": high.final_finetune},
            "holds": len(reports) >= 2 and spread < spread_threshold,
        },
        "finetune_recovers": {
            "mean_final_accuracy": mean_final,
            "gap_to_parent": mean_final - p,
            "threshold": recovery_threshold,
            "holds": mean_final >= p - recovery_threshold,
        },
        "distillation": {
            "first_checkpoint_steps": sorted(early_steps),
            "first_checkpoint_finetune": _mean(early_ft),
            "first_checkpoint_distill": _mean(early_kd),
            "speedup": speedup,
            "speedup_threshold": 0.0,
            "speeds_convergence": speeds,
            "mean_final_distill": mean_kd,
            "max_final_distill": max(kd_finals),
            "cap_tolerance": cap_tolerance,
            "caps_at_parent": caps,
            "holds": speeds and caps,
        },
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
