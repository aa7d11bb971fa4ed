"""Deep Net Triage: one-group sensitivity curves, block collapse, criticality, findings."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.profile import kept_channels
from workers.compress.profiling import build_profile, channel_groups
from workers.compress.triage import (
    BlockReport,
    CollapsedBlock,
    Finetune,
    block_criticality,
    blocks,
    collapse,
    sensitivity_curves,
    triage_findings,
)
from workers.nets import data, train, zoo

SHAPE = (1, 28, 28)
RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


class TinyNet(nn.Module):
    """Two resolutions of two convs each: groups of 4, 8, 12 and 12 channels."""

    def __init__(self) -> None:
        super().__init__()

        def unit(c_in: int, c_out: int) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *unit(1, 4), *unit(4, 8), nn.MaxPool2d(2), *unit(8, 12), *unit(12, 12)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    return zoo.build("resnet20", in_channels=1, num_classes=10, input_size=28).eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer(model: nn.Module, name: str) -> CollapsedBlock:
    layer = model.get_submodule(name)
    assert isinstance(layer, CollapsedBlock)
    return layer


def _collapsed_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, CollapsedBlock)]


@pytest.fixture(scope="module")
def synthetic() -> data.DataSplits:
    return data.load("synthetic", seed=0, val_fraction=0.1)


# --------------------------------------------------------------------------- curves


@pytest.mark.parametrize(
    ("make", "ratios"), [(_tiny, RATIOS), (_resnet20, [0.25, 0.75])], ids=["tiny", "resnet20"]
)
def test_each_point_prunes_only_its_group_at_its_ratio(
    make: Callable[[], nn.Module], ratios: list[float]
) -> None:
    example = torch.zeros(1, *SHAPE)
    reference = make()
    profile = build_profile(reference, arch="test", input_shape=SHAPE, num_classes=10)
    _, groups = channel_groups(reference, example)
    calls: list[int] = []

    def score(model: nn.Module) -> float:
        calls.append(1)
        return float(_params(model))

    curves = sensitivity_curves(make, example, score, ratios=list(reversed(ratios)))

    assert list(curves) == [g.name for g in groups]
    full = list(profile.channels)
    distinct = 0
    for index, group in enumerate(groups):
        curve = curves[group.name]
        assert [r for r, _ in curve] == sorted(ratios)
        kept = [kept_channels(r, group.channels) for r in sorted(ratios)]
        distinct += len(set(kept))
        for n, (_, value) in zip(kept, curve, strict=True):
            counts = list(full)
            counts[index] = n
            assert value == profile.params(counts)  # this group at n channels, others whole
        if len(set(kept)) == len(kept):
            values = [v for _, v in curve]
            assert all(a < b for a, b in itertools.pairwise(values))
    assert len(calls) == distinct  # a repeated kept count reuses its score


def test_tiny_curves_have_nine_points_and_reuse_duplicate_counts() -> None:
    calls: list[int] = []

    def score(model: nn.Module) -> float:
        calls.append(1)
        return float(len(calls))

    curves = sensitivity_curves(_tiny, torch.zeros(1, *SHAPE), score)
    assert list(curves) == ["features.0", "features.3", "features.7", "features.10"]
    assert all(len(c) == 9 for c in curves.values())
    # 4 channels keep 1,1,1,2,2,2,3,3,4: four networks scored, the same score reused.
    assert [v for _, v in curves["features.0"]] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 4.0]
    assert len(calls) == 4 + 7 + 9 + 9


def test_curves_reject_bad_ratios() -> None:
    with pytest.raises(ValueError):
        sensitivity_curves(_tiny, torch.zeros(1, *SHAPE), lambda m: 0.0, ratios=[0.0, 0.5])


# --------------------------------------------------------------------------- blocks


def test_blocks_of_the_zoo() -> None:
    assert blocks(_resnet20()) == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    vgg = zoo.build("vgg11s", in_channels=1, num_classes=10, input_size=28)
    assert blocks(vgg) == ["features.8-13", "features.15-20", "features.22-27"]
    assert blocks(zoo.build("lenet5", in_channels=1, num_classes=10, input_size=28)) == []
    assert blocks(_tiny()) == ["features.0-5", "features.7-12"]


@pytest.mark.parametrize(
    ("name", "c_in", "c_out", "removed"),
    [("layer1.1", 16, 16, 2336), ("layer2.0", 16, 32, 9856), ("layer3.2", 64, 64, 36992)],
)
def test_collapse_resnet_block(name: str, c_in: int, c_out: int, removed: int) -> None:
    model = _resnet20()
    x = torch.randn(2, *SHAPE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = _params(model)
    block_params = _params(model.get_submodule(name))
    out_shape = model(x).shape

    collapse(model, name)

    # Two 3x3 convs + BNs (+ projection shortcut) become one 3x3 conv + BN.
    assert block_params - (c_in * c_out * 9 + 2 * c_out) == removed
    assert params - _params(model) == removed
    layer = model.get_submodule(name)
    assert isinstance(layer, CollapsedBlock)
    assert (layer.conv.in_channels, layer.conv.out_channels) == (c_in, c_out)
    assert model(x).shape == out_shape
    after = model.state_dict()
    prefix = f"{name}."
    assert {k for k in after if k.startswith(prefix)} == {
        f"{name}.conv.weight",
        *(f"{name}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")),
        f"{name}.bn.num_batches_tracked",
    }
    untouched = {k for k in before if not k.startswith(prefix)}
    assert untouched == {k for k in after if not k.startswith(prefix)}
    assert all(torch.equal(before[k], after[k]) for k in untouched)


def test_collapse_vgg_run_keeps_every_other_name() -> None:
    model = zoo.build("vgg11s", in_channels=1, num_classes=10, input_size=28).eval()
    x = torch.randn(2, *SHAPE)
    keys = set(model.state_dict())
    params = _params(model)
    out_shape = model(x).shape
    collapse(model, "features.15-20")
    assert model(x).shape == out_shape
    # 128->256 and 256->256 convs with their BNs become one 128->256 conv + BN.
    assert params - _params(model) == 256 * 256 * 9 + 2 * 256
    assert all(isinstance(model.get_submodule(f"features.{i}"), nn.Identity) for i in range(16, 21))
    changed = {k for k in keys if k.startswith(tuple(f"features.{i}." for i in range(15, 21)))}
    assert keys - changed <= set(model.state_dict())
    assert blocks(model) == ["features.8-13", "features.22-27"]


def test_collapse_is_seeded_keeps_mode_and_rejects_unknown_names() -> None:
    def weights(seed: int) -> Tensor:
        model = _resnet20().train()
        collapse(model, "layer2.1", generator=torch.Generator().manual_seed(seed))
        layer = model.get_submodule("layer2.1")
        assert layer.training
        assert isinstance(layer, CollapsedBlock)
        return layer.conv.weight.detach().clone()

    assert torch.equal(weights(3), weights(3))
    assert not torch.equal(weights(3), weights(4))
    with pytest.raises(ValueError, match="not a collapsible block"):
        collapse(_resnet20(), "layer4.0")


# --------------------------------------------------------------------------- criticality


def test_block_criticality_scores_and_finetunes_every_block() -> None:
    scored: list[list[str]] = []
    runs: list[dict[str, Any]] = []

    def score(model: nn.Module) -> float:
        scored.append(_collapsed_names(model))
        for m in model.modules():  # like adaptive BN: must not leak into the fine-tunes
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None
                m.running_mean.fill_(123.0)
        return 0.1 * len(scored)

    def finetune(
        model: nn.Module, steps: int, teacher: nn.Module | None
    ) -> list[tuple[int, float]]:
        (name,) = _collapsed_names(model)
        runs.append(
            {
                "block": name,
                "steps": steps,
                "teacher": teacher,
                "start": _layer(model, name).conv.weight.detach().clone(),
                "stale_bn": any(
                    bool(torch.all(torch.as_tensor(m.running_mean) == 123.0))
                    for m in model.modules()
                    if isinstance(m, nn.BatchNorm2d)
                ),
            }
        )
        bonus = 0.0 if teacher is None else 0.05
        return [(steps, 0.9 - bonus), (steps // 2, 0.5 + bonus)]  # unordered on purpose

    reported: list[BlockReport] = []
    reports = block_criticality(_resnet20, score, finetune, steps=40, on_report=reported.append)

    names = blocks(_resnet20())
    assert [r.block for r in reports] == names and reported == reports
    assert scored == [[n] for n in names]
    assert [(r["block"], r["teacher"] is None) for r in runs] == [
        (n, plain) for n in names for plain in (True, False)
    ]
    assert all(r["steps"] == 40 and not r["stale_bn"] for r in runs)
    for plain, distilled in zip(runs[::2], runs[1::2], strict=True):
        assert torch.equal(plain["start"], distilled["start"])
        teacher = distilled["teacher"]
        assert isinstance(teacher, nn.Module) and not teacher.training
        assert _collapsed_names(teacher) == []
    parent = _params(_resnet20())
    for i, report in enumerate(reports):
        assert report.params_before == parent
        assert report.params_after == parent - _params(_resnet20().get_submodule(report.block)) + (
            _params(CollapsedBlock(*_shape(report.block)))
        )
        assert report.accuracy_collapsed == pytest.approx(0.1 * (i + 1))
        assert report.finetune == ((20, 0.5), (40, 0.9))
        assert report.distill == ((20, 0.55), (40, 0.85))
        assert BlockReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def _shape(block: str) -> tuple[int, int, int]:
    conv1 = _resnet20().get_submodule(f"{block}.conv1")
    assert isinstance(conv1, nn.Conv2d)
    return conv1.in_channels, conv1.out_channels, conv1.stride[0]


def test_block_criticality_subset_teacher_and_errors() -> None:
    teachers: list[nn.Module] = []

    def finetune(
        model: nn.Module, steps: int, teacher: nn.Module | None
    ) -> list[tuple[int, float]]:
        if teacher is not None:
            teachers.append(teacher)
        return [(steps, 0.5)]

    reports = block_criticality(
        _resnet20, lambda m: 0.0, finetune, steps=5, names=["layer3.0"], teacher_factory=_tiny
    )
    assert [r.block for r in reports] == ["layer3.0"]
    assert len(teachers) == 1 and isinstance(teachers[0], TinyNet)
    with pytest.raises(ValueError, match="unknown blocks"):
        block_criticality(_resnet20, lambda m: 0.0, finetune, steps=5, names=["fc"])
    with pytest.raises(ValueError, match="no checkpoint"):
        block_criticality(_tiny, lambda m: 0.0, lambda m, s, t: [], steps=5)


def _kd_finetune(split: data.Split, val: data.Split) -> Finetune:
    """train.fit, with plain KD (T=4, half CE) when given a teacher; checkpoints at 1/4 and end."""

    def run(model: nn.Module, steps: int, teacher: nn.Module | None) -> list[tuple[int, float]]:
        def kd(logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
            assert teacher is not None
            with torch.no_grad():
                target = F.softmax(teacher(x) / 4.0, dim=1)
            soft = F.kl_div(F.log_softmax(logits / 4.0, dim=1), target, reduction="batchmean")
            return 0.5 * 16.0 * soft + 0.5 * F.cross_entropy(logits, y)

        points: list[tuple[int, float]] = []

        def check(step: int, _loss: float) -> None:
            if step in (steps // 4, steps):
                points.append((step, train.evaluate(model, val)))

        train.fit(
            model,
            split,
            steps=steps,
            batch_size=64,
            lr=0.05,
            seed=0,
            on_step=check,
            loss_fn=None if teacher is None else kd,
        )
        return points

    return run


def test_block_criticality_with_real_training(synthetic: data.DataSplits) -> None:
    parent = _tiny()
    train.fit(parent, synthetic.train, epochs=4, batch_size=64, seed=0)
    state = {k: v.clone() for k, v in parent.state_dict().items()}
    parent_accuracy = train.evaluate(parent, synthetic.val)

    def make() -> nn.Module:
        model = TinyNet()
        model.load_state_dict(state)
        return model.eval()

    def score(model: nn.Module) -> float:
        train.adaptive_bn(model, synthetic.train, calib_batches=2)
        return train.evaluate(model, synthetic.val)

    reports = block_criticality(make, score, _kd_finetune(synthetic.train, synthetic.val), steps=40)
    assert parent_accuracy > 0.5
    assert [r.block for r in reports] == ["features.0-5", "features.7-12"]
    for r in reports:
        assert r.params_after < r.params_before
        assert [s for s, _ in r.finetune] == [s for s, _ in r.distill] == [10, 40]
        assert r.accuracy_collapsed < parent_accuracy
        assert r.final_finetune > r.accuracy_collapsed
    findings = triage_findings(parent_accuracy, reports)
    assert findings["blocks"] == 2
    assert isinstance(findings["finetune_recovers"]["holds"], bool)
    json.dumps(findings)


# --------------------------------------------------------------------------- findings


def _report(block: str, ft: tuple[float, float], kd: tuple[float, float]) -> BlockReport:
    return BlockReport(
        block, 1000, 800, 0.1, ((10, ft[0]), (100, ft[1])), ((10, kd[0]), (100, kd[1]))
    )


def test_findings_that_hold() -> None:
    reports = [
        _report("a", (0.60, 0.905), (0.75, 0.895)),
        _report("b", (0.55, 0.900), (0.70, 0.890)),
        _report("c", (0.50, 0.898), (0.72, 0.900)),
    ]
    f = triage_findings(0.90, reports)
    assert f["block_independence"]["spread"] == pytest.approx(0.007)
    assert f["block_independence"]["holds"] is True
    assert f["block_independence"]["lowest"]["block"] == "c"
    assert f["finetune_recovers"]["mean_final_accuracy"] == pytest.approx(0.901)
    assert f["finetune_recovers"]["holds"] is True
    d = f["distillation"]
    assert d["first_checkpoint_steps"] == [10]
    assert d["speedup"] == pytest.approx(0.72333 - 0.55, abs=1e-4)
    assert d["speeds_convergence"] is True and d["caps_at_parent"] is True and d["holds"] is True


def test_findings_that_fail() -> None:
    reports = [
        _report("a", (0.60, 0.88), (0.50, 0.95)),
        _report("b", (0.55, 0.80), (0.50, 0.93)),
    ]
    f = triage_findings(0.90, reports)
    assert f["block_independence"]["spread"] == pytest.approx(0.08)
    assert f["block_independence"]["holds"] is False
    assert f["finetune_recovers"]["gap_to_parent"] == pytest.approx(-0.06)
    assert f["finetune_recovers"]["holds"] is False
    d = f["distillation"]
    assert d["speeds_convergence"] is False and d["caps_at_parent"] is False
    assert d["max_final_distill"] == pytest.approx(0.95) and d["holds"] is False
    # Faster but above the parent: the finding as a whole does not hold.
    faster = [_report("a", (0.40, 0.90), (0.60, 0.95))]
    d = triage_findings(0.90, faster, cap_tolerance=0.01)["distillation"]
    assert d["speeds_convergence"] is True and d["caps_at_parent"] is False and d["holds"] is False


def test_findings_edge_cases() -> None:
    one = triage_findings(0.9, [_report("a", (0.5, 0.9), (0.6, 0.9))])
    assert one["block_independence"]["spread"] == 0.0
    assert one["block_independence"]["holds"] is False  # one block says nothing
    assert one["finetune_recovers"]["holds"] is True
    with pytest.raises(ValueError):
        triage_findings(0.9, [])
