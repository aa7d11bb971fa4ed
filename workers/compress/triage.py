"""Deep Net Triage (Nowak & Corso, 2018): how critical is each part of a network?

Two measurements make up a job's ``triage: true`` report:

* **Sensitivity curves** (per channel group): prune one group alone to a few
  ratios and score the network (adaptive BN in practice). A flat curve means
  the group can be cut hard, so the curves narrow the search space.
* **Block criticality** (structural compression): collapse one block into a
  single freshly initialised conv layer, score it, then fine-tune it with and
  without distillation from the parent; :func:`triage_findings` re-measures
  the paper's three findings on the result.

Everything that trains or scores is injected (``Score``, ``Finetune``), so this
module decides *what* to measure and stays independent of device, data and
training recipe. A ``Score`` may change BatchNorm statistics, so every
measurement starts from a fresh network built by the caller's ``make_model``.

This module holds the sensitivity curves and re-exports the rest: the
blocks and their collapse come from :mod:`workers.compress.blocks`, block
criticality and the findings from :mod:`workers.compress.criticality`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from search.profile import kept_channels
from workers.compress.blocks import CollapsedBlock, blocks, collapse
from workers.compress.criticality import (
    BlockReport,
    Finetune,
    ModelFactory,
    Score,
    block_criticality,
    triage_findings,
)
from workers.compress.groups import channel_groups
from workers.compress.prune import prune

__all__ = [
    "DEFAULT_RATIOS",
    "BlockReport",
    "CollapsedBlock",
    "Finetune",
    "ModelFactory",
    "Score",
    "block_criticality",
    "blocks",
    "collapse",
    "sensitivity_curves",
    "triage_findings",
]

DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def sensitivity_curves(
    make_model: ModelFactory,
    example_inputs: Tensor,
    score: Score,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    criterion: str = "l1",
    round_to: int = 1,
    on_point: Callable[[str, float, float], None] | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """Score of the network with one group pruned, for every group and ratio.

    Each point prunes only its group, to ``kept_channels(ratio, channels,
    round_to)`` channels chosen by ``criterion``, and leaves every other group
    whole, so a curve shows that group's sensitivity alone. Points whose kept
    count repeats an earlier one of the same group (small groups at nearby
    ratios) reuse its score instead of pruning the same network again.

    Args:
        make_model: Builds a fresh, unpruned copy of the network (with its
            trained weights), on the device of ``example_inputs``.
        example_inputs: A batch the network accepts, for the dependency graph.
        score: Accuracy of a pruned network; it may change BN statistics.
        ratios: Keep ratios in ``(0, 1]``; the curve lists them ascending.
        criterion: Channel importance for :func:`workers.compress.prune.prune`.
        round_to: Channel multiple, as for the search (see ``kept_channels``).
        on_point: Called as ``on_point(group, ratio, score)`` after every
            point, to report progress (or raise to cancel).

    Returns:
        Group name (in :func:`~workers.compress.profiling.channel_groups` order) to
        ``[(ratio, score), ...]`` with ratios ascending.
    """
    points = sorted({float(r) for r in ratios})
    if not points or not all(0.0 < r <= 1.0 for r in points):
        raise ValueError(f"ratios must be a non-empty set of values in (0, 1], got {ratios}")
    if round_to < 1:
        raise ValueError(f"round_to must be positive, got {round_to}")
    _, groups = channel_groups(make_model(), example_inputs)
    full = [g.units for g in groups]
    curves: dict[str, list[tuple[float, float]]] = {}
    for index, group in enumerate(groups):
        by_count: dict[int, float] = {}
        curve: list[tuple[float, float]] = []
        for ratio in points:
            kept = kept_channels(ratio, group.units, round_to)
            if kept not in by_count:
                model = make_model()
                counts = list(full)
                counts[index] = kept
                prune(model, counts, example_inputs=example_inputs, criterion=criterion)
                by_count[kept] = float(score(model))
                del model
            curve.append((ratio, by_count[kept]))
            if on_point is not None:
                on_point(group.name, ratio, by_count[kept])
        curves[group.name] = curve
    return curves
