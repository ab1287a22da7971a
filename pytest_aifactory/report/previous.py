"""The report's comparison with the previous run of the same recipe.

The first question after a benchmark is whether it got better or worse than last time; the
page answers it without a `--compare` or a gate being set up, against the latest earlier
complete run of the recipe saved beside this one that verifies as this user's (as
`--compare=last` chooses it).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_aifactory.report.compare import CompareError, RunView, compare_runs, find_previous
from pytest_aifactory.report.compare_html import comparison_table

SECTION_ID = "previous-run"


def previous_section(run_root: Path, summary: Mapping[str, Any], report_name: str) -> str:
    """The section's HTML, or "" when no earlier run of the recipe is saved beside this one
    (or the folder cannot be read: the report does not depend on other runs). A later folder
    refused as the previous run (planted, edited, unsigned) is named with the reason."""
    current = RunView(root=Path(run_root).resolve(), summary=dict(summary))
    e = html.escape
    try:
        found = find_previous(current)
    except OSError:
        return ""
    refused = "".join(f"<li>not compared with: {e(reason)}</li>" for reason in found.refused)
    refused_list = f"<ul class='muted'>{refused}</ul>" if refused else ""
    previous = found.run
    if previous is None:
        if not refused:
            return ""
        return (
            f'<section id="{SECTION_ID}"><h2>Compared with the previous run</h2>'
            f"<p>No earlier run of this recipe verifies.</p>{refused_list}</section>"
        )
    try:
        comparison = compare_runs([previous, current])
    except CompareError:
        return ""
    link = f"../{previous.root.name}/{report_name}"
    intro = (
        f"<p>A: the previous run of this recipe, <a href='{e(link)}'>{e(previous.run_id)}</a> "
        f"(started {e(previous.started_at)}, {e(previous.verdict or 'no verdict')}); "
        "B: this run. Green is better and red worse, in each metric's own direction.</p>"
    )
    missing = "".join(f"<li>{e(line)}</li>" for line in comparison.missing)
    body = comparison_table(comparison) if comparison.rows else "<p>No test in common.</p>"
    return (
        f'<section id="{SECTION_ID}"><h2>Compared with the previous run</h2>{intro}{body}'
        + (f"<ul class='muted'>{missing}</ul>" if missing else "")
        + refused_list
        + "</section>"
    )
