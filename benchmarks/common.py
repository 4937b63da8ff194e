"""Helpers shared by the benchmark scripts (run them as `python benchmarks/NAME.py`, which puts this folder on
the import path)."""

from __future__ import annotations


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of `rows` (missing cells empty, floats to 3 decimals)."""

    def fmt(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
