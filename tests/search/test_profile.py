from __future__ import annotations

from dataclasses import replace

import pytest

from search.errors import ProfileError
from search.profile import ModelProfile, RankSlot, Term, factorisation, kept_channels


@pytest.mark.parametrize(
    ("ratio", "channels", "round_to", "expected"),
    [
        (1.0, 16, 1, 16),
        (0.5, 16, 1, 8),
        (0.01, 16, 1, 1),  # never zero
        (0.01, 16, 4, 4),  # at least one multiple
        (0.5, 16, 4, 8),
        (0.6, 16, 4, 8),  # 9.6 -> nearest multiple of 4
        (1.0, 3, 8, 3),  # group smaller than round_to stays whole at 1.0
        (0.5, 3, 8, 2),
    ],
)
def test_kept_channels(ratio: float, channels: int, round_to: int, expected: int) -> None:
    assert kept_channels(ratio, channels, round_to) == expected


def test_base_cost_is_the_polynomial_at_full_width(profile: ModelProfile) -> None:
    hw = 28 * 28
    expected = 9 * hw * 16 + 9 * hw * 16 * 32 + 9 * hw / 4 * 32 * 64 + 9 * hw / 16 * 64 * 64
    assert profile.base_flops == pytest.approx(expected + 10 * 64)


def test_halving_every_group_quarters_the_bilinear_terms(profile: ModelProfile) -> None:
    half = tuple(c // 2 for c in profile.channels)
    bilinear = sum(
        t.coef * profile.channels[t.groups[0]] * profile.channels[t.groups[1]]
        for t in profile.flops_terms
        if len(t.groups) == 2
    )
    linear = sum(
        t.coef * profile.channels[t.groups[0]] for t in profile.flops_terms if len(t.groups) == 1
    )
    assert profile.flops(half) == pytest.approx(bilinear / 4 + linear / 2)


def test_json_round_trip(profile: ModelProfile) -> None:
    again = ModelProfile.from_json(profile.to_json())
    assert again == profile


def test_rejects_other_versions_and_bad_terms(profile: ModelProfile) -> None:
    data = profile.to_dict()
    data["version"] = 99
    with pytest.raises(ProfileError, match="version"):
        ModelProfile.from_dict(data)
    with pytest.raises(ProfileError, match="outside"):
        ModelProfile(
            arch="x",
            input_shape=(1, 28, 28),
            num_classes=2,
            groups=profile.groups,
            flops_terms=(Term(1.0, (7,)),),
            params_terms=(),
        )
    with pytest.raises(ProfileError, match="expected 4"):
        profile.flops((1, 2))


def _with_ranks(profile: ModelProfile) -> ModelProfile:
    """The chain profile plus rank slots for conv1 (a->b) and conv3 (c->d)."""
    hw = 28 * 28
    slots = (
        RankSlot("conv1", 16, 32, 32, in_group=0, out_group=1, kernel=9, positions=hw),
        RankSlot("conv3", 64, 64, 64, in_group=2, out_group=3, kernel=9, positions=hw // 16),
    )
    return replace(profile, ranks=slots)


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "slices", "rank", "expected"),
    [
        (16, 16, 9, 1, 14, (14, 1)),  # 14 * (144 + 16) < 2304
        (16, 16, 9, 1, 15, None),  # at or above break-even: stays whole
        (16, 16, 9, 2, 7, (7, 2)),
        (15, 16, 9, 2, 7, (7, 1)),  # slices must divide the inputs
        (16, 4, 9, 1, 20, None),  # capped at full rank 4: never cheaper
        (400, 120, 1, 1, 50, (50, 1)),
    ],
)
def test_factorisation_rule(
    c_in: int, c_out: int, kernel: int, slices: int, rank: int, expected: tuple[int, int] | None
) -> None:
    assert factorisation(c_in, c_out, kernel, slices, rank) == expected


def test_rank_slots_change_costs_only_where_decomposed(profile: ModelProfile) -> None:
    ranked = _with_ranks(profile)
    hw = 28 * 28
    assert ranked.sizes == (*profile.channels, 32, 64)
    assert ranked.base_flops == profile.base_flops
    assert ranked.flops((*profile.channels, 32, 64)) == profile.base_flops
    # conv1 at rank 4: 9*16*32 MACs per position become 4 * (9*16 + 32).
    values = (16, 32, 64, 64, 4, 64)
    saved = 9 * 16 * 32 - 4 * (9 * 16 + 32)
    assert ranked.flops(values) == profile.base_flops - saved * hw
    assert ranked.params(values) == profile.base_params - saved
    assert ranked.decomposition(values) == {"conv1": (4, 1)}
    # Pruning conv1's output to 8 channels caps its rank at 8 and shrinks both sides.
    pruned = (16, 8, 64, 64, 20, 64)
    assert ranked.decomposition(pruned) == {}
    assert ranked.flops(pruned) == profile.flops((16, 8, 64, 64))
    small = (16, 8, 64, 64, 2, 64)
    assert ranked.flops(small) == profile.flops((16, 8, 64, 64)) - hw * (
        9 * 16 * 8 - 2 * (9 * 16 + 8)
    )
    with pytest.raises(ProfileError, match="expected 4 or 6"):
        ranked.flops((1, 2, 3))


def test_version_1_profiles_still_load(profile: ModelProfile) -> None:
    ranked = _with_ranks(profile)
    assert ModelProfile.from_json(ranked.to_json()) == ranked
    old = profile.to_dict()
    old["version"] = 1
    del old["ranks"]
    assert ModelProfile.from_dict(old) == profile
    with pytest.raises(ProfileError, match="outside"):
        replace(profile, ranks=(RankSlot("x", 4, 4, 4, in_group=9),))
