"""Every zoo network builds, runs and can be rebuilt from what it remembers."""

from __future__ import annotations

import pytest
import torch

from workers.errors import UnknownArchitecture
from workers.nets import zoo


@pytest.mark.parametrize("arch", zoo.ARCHS)
@pytest.mark.parametrize(("shape", "classes"), [((1, 28, 28), 10), ((3, 32, 32), 7)])
def test_builds_and_runs(arch: str, shape: tuple[int, int, int], classes: int) -> None:
    model = zoo.build(arch, in_channels=shape[0], num_classes=classes, input_size=shape[1])
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes)
    _, classifier = zoo.classifier_of(model)
    assert isinstance(classifier, torch.nn.Linear)
    assert classifier.out_features == classes
    assert model.arch == arch
    assert model.arch_kwargs == {
        "in_channels": shape[0],
        "num_classes": classes,
        "input_size": shape[1],
    }
    rebuilt = zoo.build(arch, **model.arch_kwargs)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_unknown_architecture() -> None:
    with pytest.raises(UnknownArchitecture, match="resnet20"):
        zoo.build("alexnet", in_channels=1, num_classes=10, input_size=28)


def test_rejects_small_inputs() -> None:
    with pytest.raises(ValueError):
        zoo.build("lenet5", in_channels=1, num_classes=10, input_size=16)
