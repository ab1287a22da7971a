"""What a benchmark test adds to pytest's JUnit XML (`--junitxml`).

CI servers read JUnit XML: they show a failed test with its message (the broken objective,
named with its value and bound) and keep a test's properties beside its verdict. Each
objective's value, bound and verdict and the run that measured them travel as properties, so a
pipeline's test view says how close every level came, not only which one failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_aifactory.report.compare import format_value

if TYPE_CHECKING:
    from pytest_aifactory.results import CaseResult


def junit_properties(result: CaseResult, run_id: str | None) -> list[tuple[str, str]]:
    """(`aifactory.run`, id), (`aifactory.level`, label), then per objective
    (`slo.<client>.<metric>[.<statistic>]`, "412.3 ms (max 1000): pass")."""
    properties = [("aifactory.run", run_id)] if run_id else []
    properties.append(("aifactory.level", result.case.label))
    for outcome in result.outcomes:
        entry = outcome.to_dict()
        value = "no value" if entry["value"] is None else format_value(entry["value"])
        unit = f" {entry['unit']}" if entry["unit"] and entry["value"] is not None else ""
        verdict = "pass" if entry["passed"] else "fail"
        properties.append(
            (
                f"slo.{entry['client']}.{entry['key']}",
                f"{value}{unit} ({entry['bound']} {entry['limit']:g}): {verdict}",
            )
        )
    return properties
