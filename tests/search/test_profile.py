from __future__ import annotations

import pytest

from search.errors import ProfileError
from search.profile import ModelProfile, Term, kept_channels


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
