"""The report's comparison with the previous run of the same recipe.

The first question after a benchmark is whether it got better or worse than last time; the
page answers it without a `--compare` or a gate being set up, against the latest earlier
complete run of the recipe saved beside this one (as `--compare=last` chooses it).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_aifactory.report.compare import CompareError, RunView, compare_runs, previous_run
from pytest_aifactory.report.compare_html import comparison_table

SECTION_ID = "previous-run"


def previous_section(run_root: Path, summary: Mapping[str, Any], report_name: str) -> str:
    """The section's HTML, or "" when no earlier run of the recipe is saved beside this one
    (or the folder cannot be read: the report does not depend on other runs)."""
    current = RunView(root=Path(run_root).resolve(), summary=dict(summary))
    try:
        previous = previous_run(current)
        if previous is None:
            return ""
        comparison = compare_runs([previous, current])
    except (OSError, CompareError):
        return ""
    e = html.escape
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
        + "</section>"
    )
