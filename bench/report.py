"""Markdown tables for the benchmark scripts (what docs/benchmarks.md shows)."""

from __future__ import annotations

from typing import Any


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """A titled Markdown table, first column left-aligned, the rest right-aligned."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
