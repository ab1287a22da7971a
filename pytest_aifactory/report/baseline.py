"""A finished session's run against its baseline: the regression gate of `--compare` and
`--fail-on-regression`, and what the terminal and the pytest-html summary say of it.

Apart from `report.compare` (runs side by side, for any caller) because only this gate also
writes the comparison page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_aifactory.report.compare import (
    CompareError,
    Comparison,
    Judgement,
    Regression,
    RunView,
    compare_runs,
    default_metrics,
    find_previous,
    format_comparison,
    judge_metrics,
    load_run,
    parse_tolerances,
    read_run_folder,
    unchecked_metrics,
)
from pytest_aifactory.report.noise import DEFAULT_CONFIDENCE

LAST = "last"
RECIPE_TOLERANCES = "recipe"
"""`--fail-on-regression=recipe`: the recipe's own `regression.tolerances`, nothing added."""


def merged_tolerances(spec: str, own: Mapping[str, float], recipe: str) -> dict[str, float]:
    """The gate's tolerances: the recipe's (`own`) with SPEC's added, SPEC winning where both
    name a metric; `recipe` alone takes the recipe's. `CompareError` says what is wrong."""
    if spec.strip() == RECIPE_TOLERANCES:
        if not own:
            raise CompareError(
                f"'recipe' names the regression.tolerances of {recipe}, and it has none"
            )
        return dict(own)
    return {**own, **parse_tolerances(spec)}


@dataclass
class RunCheck:
    """What comparing a session's run with its baseline found (for the terminal and reports)."""

    run: RunView
    baseline: RunView | None
    comparison: Comparison | None = None
    tolerances: dict[str, float] | None = None
    found: list[Regression] = field(default_factory=list)
    judged: list[Judgement] = field(default_factory=list)
    """Every metric with a tolerance, regressed or not, and why."""
    unchecked: list[str] = field(default_factory=list)
    html: Path | None = None
    note: str = ""
    """Why nothing was compared (no earlier run), or what went wrong writing the page."""

    @property
    def failed(self) -> bool:
        return bool(self.found)


def check_run(
    run_root: Path,
    baseline: str | RunView = LAST,
    tolerances: Mapping[str, float] | None = None,
    write_html: bool = True,
    confidence: float = DEFAULT_CONFIDENCE,
) -> RunCheck:
    """Compares a finished run with `baseline` (`last`: the latest earlier complete run of the
    same recipe in the same folder that verifies) and, given tolerances, lists its regressions.
    Without a baseline it says so in `note` and finds no regression: a first run has nothing to
    lose. Later runs refused as baselines (planted, edited, unsigned) are named in `note`."""
    run = read_run_folder(run_root)
    refused: list[str] = []
    if baseline == LAST:
        found = find_previous(run)
        base, refused = found.run, found.refused
    else:
        base = load_run(baseline) if isinstance(baseline, str) else baseline
    refusals = "".join(f"\nnot a baseline: {reason}" for reason in refused)
    if base is None:
        note = (
            f"no earlier complete run of recipe '{run.recipe}' in {run.root.parent} that "
            f"verifies: nothing to compare with{refusals}"
        )
        return RunCheck(run, None, tolerances=dict(tolerances or {}) or None, note=note)
    metrics = default_metrics([base, run])
    metrics.extend(key for key in tolerances or {} if key not in metrics)
    comparison = compare_runs([base, run], metrics)
    check = RunCheck(
        run,
        base,
        comparison,
        tolerances=dict(tolerances) if tolerances else None,
        note=refusals.strip(),
    )
    if tolerances:
        check.judged = judge_metrics(comparison, tolerances, confidence)
        check.found = [j.regression for j in check.judged if j.counts]
        check.unchecked = unchecked_metrics(comparison, tolerances)
    if write_html:
        # deferred: the comparison page draws with altair, slow to import at pytest's start
        from pytest_aifactory.report.compare_html import default_html_path, write_comparison_html

        try:
            check.html = write_comparison_html(
                comparison, default_html_path(comparison), check.found, check.tolerances
            )
        except (OSError, ValueError) as err:
            check.note = "\n".join(
                filter(None, [check.note, f"comparison page not written: {err}"])
            )
    return check


@dataclass
class BaselineCheck:
    """A session's `--compare` / `--fail-on-regression`: checked before the run (a bad spec or
    an unknown run stops the session at once), done once the run is saved."""

    baseline: RunView | str = LAST
    tolerances: dict[str, float] | None = None
    result: RunCheck | None = None
    error: str = ""
    confidence: float = DEFAULT_CONFIDENCE

    def run(self, run_root: Path) -> RunCheck | None:
        """Never raises: a run that cannot be compared is said in `error`, not a crash at the
        end of a long benchmark."""
        try:
            self.result = check_run(
                run_root, self.baseline, self.tolerances, confidence=self.confidence
            )
        except CompareError as err:
            self.error = str(err)
        return self.result

    @property
    def failed(self) -> bool:
        return self.result is not None and self.result.failed

    def report_lines(self) -> list[tuple[str, bool]]:
        """What the terminal summary shows: (line, is it bad news)."""
        if self.error:
            return [(f"comparison failed: {self.error}", True)]
        result = self.result
        if result is None:
            return []
        lines: list[tuple[str, bool]] = []
        if result.comparison is not None:
            lines.extend((line, False) for line in format_comparison(result.comparison).split("\n"))
        if result.html is not None:
            lines.append((f"comparison page: {result.html}", False))
        if result.note:
            lines.extend(
                (line, line.startswith("not a baseline")) for line in result.note.split("\n")
            )
        if result.tolerances is None or result.comparison is None:
            return lines
        lines.extend((f"not checked (no test has it): {m}", False) for m in result.unchecked)
        lines.extend((f"gate: {j.describe()}", j.counts) for j in result.judged)
        spec = ", ".join(f"{k}:{v * 100:g}%" for k, v in result.tolerances.items())
        if not result.found:
            lines.append((f"no regression beyond the tolerances ({spec})", False))
            return lines
        names = ", ".join(dict.fromkeys(r.metric for r in result.found))
        lines.append(
            (f"REGRESSION: {len(result.found)} value(s) worse than tolerated: {names}", True)
        )
        lines.extend((f"  {r.describe()}", True) for r in result.found)
        return lines
