"""The check every ``**fields`` repository function makes before it writes.

``update_job``, ``add_candidate`` and ``finish_candidate`` take column
values as keyword arguments; the rule for which names are allowed is the
same for every table, so it lives here once and each table's module passes
its own set of settable columns.
"""

from __future__ import annotations

from typing import Any


def check_fields(fields: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    """Reject unknown names: setattr would otherwise quietly set a plain attribute.

    Args:
        fields: The keyword arguments a caller passed.
        allowed: The columns that may be set this way.
        what: The model's name, for the message.

    Raises:
        TypeError: A name in ``fields`` is not in ``allowed``.
    """
    unknown = set(fields) - allowed
    if unknown:
        raise TypeError(f"{what} has no settable field(s) {sorted(unknown)}")
