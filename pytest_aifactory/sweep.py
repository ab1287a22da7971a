"""Capacity search: the highest load level that meets every SLO, found by measuring.

The search itself is pure (it only decides the next level from the verdicts so far), so its
rules are tested without a server; the session runs each level as an ordinary measured step.

One load of a level near the capacity passes or fails by luck as often as not. So the level the
search ends on is measured again, up to `boundary_repeats` loads in all, and judged on its
intervals (`metrics/intervals.py`): it counts only if the whole interval of every objective's
figure meets the bound. A level that fails that is a failed level, and the search goes on below
it, measuring each new level `boundary_repeats` times from the start, until the capacity is a
confirmed level or there is none. The capacity is then bracketed by evidence: the confirmed
level that held, and the lowest level that did not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Sweep
    from pytest_aifactory.summary_shapes import SweepOutcome, SweepStepEntry


@dataclass(frozen=True)
class SweepStep:
    level: float
    passed: bool
    test_id: str = ""
    breaches: str = ""
    """Why the level failed (the broken objectives), empty when it passed."""
    repeats: int = 1
    """Loads of the level the verdict rests on."""
    confirmed: bool = False
    """Judged over `boundary_repeats` loads on its intervals: the verdict is not luck."""


@dataclass
class CapacitySearch:
    """Step up by `factor` until an SLO breaks or `max`, then bisect to `resolution`."""

    settings: Sweep
    steps: list[SweepStep] = field(default_factory=list)
    passed_at: float | None = None
    """Highest level measured to meet every SLO."""
    failed_at: float | None = None
    """Lowest level measured to break one (above `passed_at`)."""

    @property
    def whole(self) -> bool:
        return self.settings.over == "concurrency"

    def next_level(self) -> float | None:
        """The level to measure next; None when the search is over."""
        if not self.steps:
            return float(self.settings.start)
        if self.passed_at is None:
            return None  # the lowest level already breaks an SLO
        if self.failed_at is None:
            if self.passed_at >= self.settings.max:
                return None  # every level up to max met the SLOs
            up = min(self.passed_at * self.settings.factor, float(self.settings.max))
            if self.whole:
                up = max(float(math.ceil(up)), self.passed_at + 1)
            return min(up, float(self.settings.max))
        if self.failed_at - self.passed_at <= self.settings.step + 1e-9:
            return None
        middle = (self.passed_at + self.failed_at) / 2
        if self.whole:
            middle = float(math.floor(middle))
            if middle <= self.passed_at:
                return None
        return middle

    def record(self, step: SweepStep) -> None:
        """A level's verdict; a level measured again replaces its earlier verdict, and the
        bracket is worked out anew: the lowest level that failed, and the highest that passed
        below it."""
        levels = [s.level for s in self.steps]
        if step.level in levels:
            self.steps[levels.index(step.level)] = step
        else:
            self.steps.append(step)
        failed = [s.level for s in self.steps if not s.passed]
        self.failed_at = min(failed) if failed else None
        passed = [
            s.level
            for s in self.steps
            if s.passed and (self.failed_at is None or s.level < self.failed_at)
        ]
        self.passed_at = max(passed) if passed else None

    def unconfirmed_capacity(self) -> float | None:
        """The capacity, when its verdict still rests on fewer loads or weaker judgement than
        the boundary asks for: to be measured again."""
        if self.settings.boundary_repeats <= 1 or self.passed_at is None:
            return None
        step = next(s for s in self.steps if s.level == self.passed_at)
        return None if step.confirmed else self.passed_at

    @property
    def capacity(self) -> float | None:
        return self.passed_at

    def outcome(self) -> SweepOutcome:
        """The search's result as saved in the summary: the capacity and its evidence."""
        below_min = self.settings.min_capacity is not None and (
            self.capacity is None or self.capacity < self.settings.min_capacity
        )
        by_level = {s.level: s for s in self.steps}
        return {
            "over": self.settings.over,
            "capacity": self.capacity,
            "reached_max": self.failed_at is None and self.capacity is not None,
            "passed_at": _step_at(by_level, self.passed_at),
            "failed_at": _step_at(by_level, self.failed_at),
            "min_capacity": self.settings.min_capacity,
            "below_min_capacity": below_min,
            "boundary_repeats": self.settings.boundary_repeats,
            "capacity_range": [self.capacity, self.failed_at] if self.capacity else None,
            "steps": [_step(s) for s in self.steps],
        }


def _step_at(by_level: dict[float, SweepStep], level: float | None) -> SweepStepEntry | None:
    step = by_level.get(level) if level else None
    return _step(step) if step is not None else None


def _step(step: SweepStep) -> SweepStepEntry:
    return {
        "level": step.level,
        "passed": step.passed,
        "test_id": step.test_id,
        "breaches": step.breaches,
        "repeats": step.repeats,
        "confirmed": step.confirmed,
    }


def describe_outcome(client: str, outcome: SweepOutcome) -> str:
    """One line for the terminal and the test report."""
    over = outcome["over"]

    def level(value: float) -> str:
        return f"{over}={value:g}"

    capacity = outcome["capacity"]
    if capacity is None:
        if not outcome["steps"]:
            return f"{client}: no capacity, no level was measured"
        first = outcome["steps"][0]
        why = f": {first['breaches']}" if first["breaches"] else ""
        return f"{client}: no capacity, the lowest level {level(first['level'])} breaks an SLO{why}"
    text = f"{client}: capacity {level(capacity)}"
    failed = outcome["failed_at"]
    if outcome["reached_max"]:
        text += " (every level up to the sweep's max met the SLOs; the limit is higher)"
    elif failed is not None:
        held = outcome["passed_at"]
        over_repeats = ""
        if held is not None and held.get("confirmed"):
            over_repeats = f" over {held['repeats']} loads, judged on its intervals"
        text += f" ({level(capacity)} met every SLO{over_repeats}, {level(failed['level'])} did not"
        text += f": {failed['breaches']})" if failed["breaches"] else ")"
    if outcome["below_min_capacity"]:
        text += f"; below min_capacity {outcome['min_capacity']:g}"
    return text
