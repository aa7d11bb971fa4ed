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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from search.profile import kept_channels
from workers.compress.profiling import channel_groups
from workers.compress.prune import prune
from workers.nets.zoo import BasicBlock

# Accuracy of a network (e.g. adaptive BN, then validation accuracy).
Score = Callable[[nn.Module], float]
# (model, steps, teacher or None) -> [(step, validation accuracy)] at a few
# checkpoints including the last; trains the model in place.
Finetune = Callable[[nn.Module, int, nn.Module | None], list[tuple[int, float]]]
ModelFactory = Callable[[], nn.Module]

DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_RUN_MEMBERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)


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


@dataclass(frozen=True)
class _Block:
    """Where a collapsible block sits and what the replacing layer must look like."""

    name: str
    parent: nn.Module
    children: tuple[str, ...]  # the parent's children that make up the block, in order
    c_in: int
    c_out: int
    stride: int


class CollapsedBlock(nn.Module):
    """The single layer that replaces a block: 3x3 conv + BN + ReLU.

    The conv has no bias (the BN that follows has one), like the zoo's layers.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


def blocks(model: nn.Module) -> list[str]:
    """Names of the collapsible blocks of ``model``, in module order.

    The rule: a block is a stack of layers that one 3x3 conv can replace
    without changing the shapes the rest of the network sees.

    * Every zoo :class:`~workers.nets.zoo.BasicBlock` (ResNets), named by its
      module path (``layer2.0``); its shortcut goes with it.
    * Inside an ``nn.Sequential`` (VGG), every maximal run of at least two
      convs at one resolution: consecutive Conv2d / BatchNorm2d / ReLU
      children whose convs keep the spatial size (stride 1, "same" padding,
      no groups or dilation), with no pooling in between. Named
      ``<sequential>.<first>-<last>`` by the children's indices (inclusive),
      e.g. ``features.8-13`` for vgg11s's two 128-channel convs.

    LeNet-5 has none: its two convs are separated by pooling and its
    remaining layers are linear.
    """
    return [b.name for b in _find_blocks(model)]


def collapse(model: nn.Module, name: str, *, generator: torch.Generator | None = None) -> None:
    """Replace block ``name`` of ``model`` in place by one freshly initialised layer.

    The layer is ``Conv2d(c_in, c_out, 3, stride, padding=1)`` + BN + ReLU,
    where ``c_in``/``c_out`` are the block's input/output channels and
    ``stride`` its stride, so the network still runs with unchanged shapes.
    As in the paper the layer starts from scratch (Kaiming-normal conv, unit
    BN): the comparison is how well training recovers, not how much of the
    old block a projection could keep. Within a Sequential the block's other
    children become ``nn.Identity`` so every other module keeps its name (and
    its state-dict key). Nothing else of the network changes.

    Args:
        model: Network with the block (e.g. a fresh copy from the caller).
        name: One of :func:`blocks`.
        generator: Seeds the initialisation (drawn on the CPU, then moved to
            the block's device), so copies collapsed with equally seeded
            generators start identical.

    Raises:
        ValueError: ``name`` is not a collapsible block of ``model``.
    """
    found = {b.name: b for b in _find_blocks(model)}
    block = found.get(name)
    if block is None:
        raise ValueError(f"{name!r} is not a collapsible block; the network has {sorted(found)}")
    old = block.parent.get_submodule(block.children[0])
    reference = next(old.parameters())
    layer = CollapsedBlock(block.c_in, block.c_out, block.stride)
    nn.init.kaiming_normal_(
        layer.conv.weight, mode="fan_out", nonlinearity="relu", generator=generator
    )
    layer.to(device=reference.device, dtype=reference.dtype)
    layer.train(old.training)
    setattr(block.parent, block.children[0], layer)
    for child in block.children[1:]:
        setattr(block.parent, child, nn.Identity())


def _find_blocks(model: nn.Module) -> list[_Block]:
    found: list[_Block] = []
    inside: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(f"{prefix}.") for prefix in inside):
            continue
        if isinstance(module, BasicBlock):
            parent, _, child = path.rpartition(".")
            c_in, c_out = module.conv1.in_channels, module.conv2.out_channels
            stride = module.conv1.stride[0]
            found.append(_Block(path, model.get_submodule(parent), (child,), c_in, c_out, stride))
            inside.append(path)
        elif isinstance(module, nn.Sequential):
            found.extend(_runs(path, module))
    return found


def _runs(path: str, seq: nn.Sequential) -> list[_Block]:
    """Maximal runs of >= 2 same-resolution conv units among ``seq``'s children."""
    runs: list[list[int]] = [[]]
    children = list(seq)
    for i, child in enumerate(children):
        if isinstance(child, _RUN_MEMBERS) and _keeps_resolution(child):
            runs[-1].append(i)
        elif runs[-1]:
            runs.append([])
    found = []
    for run in runs:
        convs = [i for i in run if isinstance(children[i], nn.Conv2d)]
        if len(convs) < 2:
            continue
        members = run[run.index(convs[0]) :]
        first, last = children[convs[0]], children[convs[-1]]
        assert isinstance(first, nn.Conv2d) and isinstance(last, nn.Conv2d)
        name = ".".join(filter(None, (path, f"{members[0]}-{members[-1]}")))
        children_ = tuple(str(i) for i in members)
        found.append(_Block(name, seq, children_, first.in_channels, last.out_channels, 1))
    return found


def _keeps_resolution(module: nn.Module) -> bool:
    if not isinstance(module, nn.Conv2d):
        return True
    k_h, k_w = module.kernel_size
    same = k_h % 2 == 1 and k_w % 2 == 1 and module.padding == (k_h // 2, k_w // 2)
    return same and module.stride == (1, 1) and module.dilation == (1, 1) and module.groups == 1


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
