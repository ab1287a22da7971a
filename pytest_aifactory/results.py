"""What one test measured and its verdict: made by the driver, read by every report writer.

Kept apart from the driver so that report writers (summary, JUnit properties, pytest-html
extras, a run rebuilt from its records) can use results without importing the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_aifactory.metrics import slo as slo_eval

if TYPE_CHECKING:
    import pandas as pd

    from pytest_aifactory.cases import LoadCase
    from pytest_aifactory.metrics.slo import SloOutcome


@dataclass
class CaseResult:
    """What one test measured, and its verdict."""

    test_id: str
    name: str
    case: LoadCase
    records: pd.DataFrame
    summary: dict[str, Any]
    outcomes: list[SloOutcome]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Said in the summary and the test output, but not failing the test (monitoring lost)."""
    sweep: dict[str, Any] | None = None
    """For a level measured by a capacity search: the sweep's test id, this step's index and
    (once the search is over) its outcome."""
    started_at: float = 0.0
    ended_at: float = 0.0
    error_hint: str = ""
    """The commonest error of the failed requests (redacted), for the failure message."""

    @property
    def passed(self) -> bool:
        return not self.notes and all(o.passed for o in self.outcomes)

    def failure_message(self) -> str:
        lines = list(self.notes)
        breaches = slo_eval.failure_message(self.case.client, self.case.label, self.outcomes)
        if breaches:
            lines.append(breaches)
        if self.error_hint:
            lines.append(self.error_hint)
        return "\n".join(lines)
