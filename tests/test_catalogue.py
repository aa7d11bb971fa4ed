"""Every registry of implementations matches the catalogue (search/catalogue.py).

The catalogue names the methods and says what each can do; the registries
hold the code. A name without code, code without a name, or a capability the
code does not honour fails here rather than in a user's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from core.spec import JobSpec
from search import SearchSpace, catalogue
from search.samplers import REGISTRY as SAMPLER_REGISTRY
from search.samplers import directions, make_sampler, shares_one_ratio
from workers.compress import criteria
from workers.compress.profiling import build_profile, channel_groups
from workers.errors import PruneError
from workers.nets import zoo
from workers.steps.allocation import ALLOCATORS

SHAPE = (1, 28, 28)


def _names(entries: Mapping[str, Any], capability: str) -> set[str]:
    return {name for name, info in entries.items() if getattr(info, capability)}


def test_every_sampler_has_exactly_one_implementation() -> None:
    allocators = _names(catalogue.SAMPLERS, "allocator")
    assert set(ALLOCATORS) == allocators
    assert set(SAMPLER_REGISTRY) == set(catalogue.SAMPLERS) - allocators


@pytest.mark.parametrize("name", list(catalogue.SAMPLERS))
def test_each_sampler_honours_its_capabilities(name: str) -> None:
    info = catalogue.sampler(name)
    assert len(directions(name)) == info.objectives
    assert shares_one_ratio(name) == info.one_ratio
    assert make_sampler(name, seed=0, n_trials=8) is not None
    for operator in _names(catalogue.OPERATORS, "decomposes"):
        spec = {"name": "x", "target": {"flops_ratio": 0.5}}
        spec["search"] = {"sampler": name, "operator": operator}
        if info.needs_channels:
            with pytest.raises(ValidationError, match="allocates channels"):
                JobSpec.model_validate(spec)
        else:
            JobSpec.model_validate(spec)


def test_every_criterion_has_an_importance_and_its_options() -> None:
    assert set(criteria.REGISTRY) == set(catalogue.CRITERIA)
    assert set(criteria.FOLDERS) == _names(catalogue.CRITERIA, "folds")
    assert set(criteria.PUSHERS) == _names(catalogue.CRITERIA, "pushes")
    assert _names(catalogue.CRITERIA, "needs_data") == criteria.DATA_CRITERIA


@pytest.mark.parametrize("name", list(catalogue.CRITERIA))
def test_each_criterion_scores_every_channel_and_asks_for_data_when_it_needs_it(
    name: str,
) -> None:
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1, input_size=28).eval()
    example = torch.randn(4, *SHAPE)
    _, groups = channel_groups(model, example)
    batches = [(torch.randn(8, *SHAPE), torch.arange(8) % 10)]
    if catalogue.criterion(name).needs_data:
        with pytest.raises(PruneError, match="needs calibration batches"):
            criteria.importance(model, groups, name)
    scores = criteria.importance(model, groups, name, batches)
    assert [len(s) for s in scores] == [g.channels for g in groups]


@pytest.mark.parametrize("name", list(catalogue.OPERATORS))
def test_each_operator_searches_the_variables_it_says(name: str) -> None:
    model = zoo.build("lenet5", num_classes=10, in_channels=1, input_size=28)
    profile = build_profile(model, arch="lenet5", input_shape=SHAPE, num_classes=10)
    info = catalogue.operator(name)
    space = SearchSpace(profile, operator=name)
    groups = len(profile.groups)
    searched = set(space.searched)
    assert bool(searched & set(range(groups))) == info.prunes
    assert bool(searched - set(range(groups))) == info.decomposes


def test_the_spec_offers_exactly_the_catalogue() -> None:
    schema = JobSpec.model_json_schema()["$defs"]["SearchSpec"]["properties"]
    assert schema["sampler"]["enum"] == list(catalogue.SAMPLERS)
    assert schema["criterion"]["enum"] == list(catalogue.CRITERIA)
    assert schema["operator"]["enum"] == list(catalogue.OPERATORS)
