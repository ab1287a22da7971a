"""Aligned plain-text tables for the command line: readable in a terminal, easy to grep."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

EMPTY = "-"


def cell(value: object) -> str:
    return EMPTY if value is None or value == "" else str(value)


def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    right: Collection[int] = (),
    gap: str = "  ",
) -> str:
    """Columns as wide as their widest cell, left-aligned but those in `right` (numbers);
    None or '' shows as '-' so every column holds a word (`awk '{print $3}'` works)."""
    table = [list(headers), *([cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = [
            text.rjust(width) if i in right else text.ljust(width)
            for i, (text, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(gap.join(cells).rstrip())
    return "\n".join(lines)
