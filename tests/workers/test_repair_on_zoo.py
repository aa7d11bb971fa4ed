"""Budget repair on the real zoo profiles: within 1% under the limit.

The search-side tests use a hand-made toy profile; these check the promise
on the networks users actually prune, whose coupled residual groups make the
cost of one channel step uneven.
"""

from __future__ import annotations

import numpy as np
import pytest

from search import Budget, SearchSpace, repair
from workers.compress.profiling import build_profile
from workers.nets import zoo


@pytest.mark.parametrize("arch", zoo.ARCHS)
@pytest.mark.parametrize("target", [0.5, 0.25])
def test_repair_lands_within_one_percent(arch: str, target: float) -> None:
    model = zoo.build(arch, in_channels=1, num_classes=10, input_size=28)
    profile = build_profile(model, arch=arch, input_shape=(1, 28, 28), num_classes=10)
    space = SearchSpace(profile, min_ratio=0.1)
    rng = np.random.default_rng(0)
    limit = target * profile.base_flops
    for _ in range(40):
        fixed = repair(space, rng.uniform(0.1, 1.0, size=space.size), Budget(flops_ratio=target))
        used = fixed.flops / profile.base_flops
        assert used <= target
        # Maximal: no group can take one more channel without breaking the budget.
        for g, (n, c) in enumerate(zip(fixed.counts, profile.channels, strict=True)):
            more = list(fixed.counts)
            more[g] = n + 1
            assert n == c or profile.flops(more) > limit, (arch, g)
        if arch != "lenet5":
            # LeNet-5's first layer has 6 channels: one of them is 13% of the
            # network's FLOPs, so 1% is out of reach there by construction.
            assert used >= target * 0.99, (arch, used)
