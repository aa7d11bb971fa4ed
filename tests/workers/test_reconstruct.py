"""Least-squares reconstruction brings a pruned network back towards the unpruned one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from workers.compress.profiling import channel_groups
from workers.compress.prune import apply_kept, prune
from workers.compress.reconstruct import reconstruct
from workers.errors import PruneError
from workers.nets import data, train, zoo

EXAMPLE = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def synthetic() -> data.DataSplits:
    return data.load("synthetic", seed=0, val_fraction=0.1)


def _calibrated(arch: str, split: data.Split) -> nn.Module:
    """A random network whose BN statistics fit the data (so activations are realistic)."""
    torch.manual_seed(0)
    model = zoo.build(arch, in_channels=1, num_classes=10, input_size=28)
    train.adaptive_bn(model, split, calib_batches=2, batch_size=64)
    return model


def _logit_error(model: nn.Module, reference: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        want = reference.eval()(x)
        return float((model.eval()(x) - want).norm() / want.norm())


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["resnet20", "vgg11s", "lenet5"])
def test_reconstruction_lowers_every_layer_error_and_the_logit_error(
    arch: str, synthetic: data.DataSplits
) -> None:
    reference = _calibrated(arch, synthetic.train).eval()
    pruned = copy.deepcopy(reference)
    _, groups = channel_groups(pruned, EXAMPLE)
    kept = prune(pruned, [g.channels // 2 for g in groups], example_inputs=EXAMPLE)
    ref_state = {k: v.clone() for k, v in reference.state_dict().items()}
    pruned_before = _weights(pruned)
    held_out = next(synthetic.val.batches(100, shuffle=False, generator=None))[0]
    error_before = _logit_error(pruned, reference, held_out)
    pruned.train()
    pruned.get_submodule("fc").eval()  # a mixed mode must come back as it was

    batches = train.calibration_batches(synthetic.train, 3, batch_size=64)
    fits = reconstruct(pruned, reference, kept, batches, max_rows=4000)

    assert pruned.training and not pruned.get_submodule("fc").training
    assert not reference.training
    # Every conv/linear but the stem lost input channels and is refitted, in forward order.
    layers = [n for n, m in reference.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert [f.name for f in fits] == layers[1:]
    assert all(f.error_after <= f.error_before for f in fits)
    refitted = [f for f in fits if not f.note]
    assert len(refitted) >= len(fits) - 1
    assert all(f.error_after < f.error_before for f in refitted)
    assert sum(f.error_after for f in fits) < 0.9 * sum(f.error_before for f in fits)
    # Measured on images the fit never saw.
    assert _logit_error(pruned, reference, held_out) < 0.8 * error_before
    # Same architecture, new weights where fitted, reference untouched, modes restored.
    after = _weights(pruned)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in pruned_before.items()}
    assert not torch.equal(after["fc.weight"], pruned_before["fc.weight"])
    for k, v in reference.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert all(p.requires_grad and p.grad is None for p in pruned.parameters())


def test_a_removed_duplicate_channel_is_recovered_exactly() -> None:
    """LeNet's first conv gets channel 5 = 2 x channel 0 (conv + BN scale), then loses it.

    ReLU and max-pooling commute with a positive scale, so conv2's missing input
    is exactly twice an input it still has: least squares must find that.
    """
    torch.manual_seed(0)
    reference = zoo.build("lenet5", in_channels=1, num_classes=10, input_size=28).eval()
    conv, bn = reference.get_submodule("features.0"), reference.get_submodule("features.1")
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None
    with torch.no_grad():
        mean.uniform_(-0.2, 0.2)
        var.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
        conv.weight[5] = conv.weight[0]
        mean[5], var[5] = mean[0], var[0]
        bn.weight[5], bn.bias[5] = 2 * bn.weight[0], 2 * bn.bias[0]
    _, groups = channel_groups(reference, EXAMPLE)
    kept = {g.name: list(range(g.channels)) for g in groups}
    kept["features.0"] = [0, 1, 2, 3, 4]
    pruned = copy.deepcopy(reference)
    apply_kept(pruned, kept, EXAMPLE)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 1, 28, 28, generator=gen), torch.zeros(32)) for _ in range(2)]
    fresh = torch.randn(64, 1, 28, 28, generator=gen)
    assert _logit_error(pruned, reference, fresh) > 0.05

    fits = reconstruct(pruned, reference, kept, batches)

    assert [f.name for f in fits] == ["features.4"]
    assert fits[0].error_before > 0.05
    assert fits[0].error_after < 1e-3
    assert _logit_error(pruned, reference, fresh) < 1e-3


class _Separable(nn.Module):
    """conv -> depthwise conv -> pointwise conv -> fc: the depthwise conv cannot be refitted."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True)
        self.pw = nn.Conv2d(8, 6, 1, bias=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pw(self.relu(self.dw(self.relu(self.conv(x)))))
        return self.fc(self.pool(x).flatten(1))


def test_depthwise_convolutions_are_skipped_with_a_reason() -> None:
    torch.manual_seed(0)
    reference = _Separable().eval()
    pruned = copy.deepcopy(reference)
    example = torch.zeros(1, 1, 12, 12)
    _, groups = channel_groups(pruned, example)
    kept = prune(pruned, [g.channels // 2 for g in groups], example_inputs=example)
    depthwise = pruned.dw.weight.detach().clone()
    batches = [(torch.randn(16, 1, 12, 12), torch.zeros(16))]

    fits = {f.name: f for f in reconstruct(pruned, reference, kept, batches)}

    assert set(fits) == {"dw", "pw", "fc"}
    assert "grouped" in fits["dw"].note
    assert fits["dw"].error_after == fits["dw"].error_before
    assert torch.equal(pruned.dw.weight, depthwise)
    assert fits["pw"].note == "" and fits["pw"].error_after < fits["pw"].error_before


def test_mismatched_inputs_are_rejected() -> None:
    torch.manual_seed(0)
    reference = zoo.build("lenet5", in_channels=1, num_classes=10, input_size=28).eval()
    _, groups = channel_groups(reference, EXAMPLE)
    half = {g.name: list(range(g.channels // 2)) for g in groups}
    batches = [(torch.randn(4, 1, 28, 28), torch.zeros(4))]
    with pytest.raises(PruneError, match="recipe"):  # the network was never pruned
        reconstruct(copy.deepcopy(reference), reference, half, batches)
    with pytest.raises(PruneError, match="nope"):
        reconstruct(copy.deepcopy(reference), reference, {"nope": [0]}, batches)
    with pytest.raises(ValueError):
        reconstruct(copy.deepcopy(reference), reference, half, [])
