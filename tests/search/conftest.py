"""A hand-written profile of a small conv chain, so search tests need no torch."""

from __future__ import annotations

import pytest

from search.profile import Group, ModelProfile, Term


def chain_profile() -> ModelProfile:
    """conv(1->a) conv(a->b) conv(b->c) conv(c->d) linear(d->10) on 28x28 maps."""
    hw = 28 * 28
    channels = (16, 32, 64, 64)
    flops = [Term(9.0 * hw, (0,))]
    params = [Term(9.0 + 1.0, (0,))]
    for g in range(1, 4):
        flops.append(Term(9.0 * hw / (4 ** (g - 1)), (g - 1, g)))
        params.append(Term(9.0, (g - 1, g)))
        params.append(Term(1.0, (g,)))
    flops.append(Term(10.0, (3,)))
    params += [Term(10.0, (3,)), Term(10.0)]
    groups = tuple(Group(f"conv{g}", c, (f"conv{g}", f"bn{g}")) for g, c in enumerate(channels))
    return ModelProfile(
        arch="chain",
        input_shape=(1, 28, 28),
        num_classes=10,
        groups=groups,
        flops_terms=tuple(flops),
        params_terms=tuple(params),
    )


@pytest.fixture
def profile() -> ModelProfile:
    return chain_profile()
