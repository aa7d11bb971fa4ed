"""Errors of the search package; every one derives from :class:`SearchError`."""

from __future__ import annotations


class SearchError(Exception):
    """Base class of everything the search side raises on purpose."""


class ProfileError(SearchError):
    """A ModelProfile is malformed or used with the wrong number of groups."""


class InfeasibleBudget(SearchError):
    """No ratio vector within the search bounds meets the budget."""


class UnknownSampler(SearchError):
    """A sampler name that the search side does not provide."""
