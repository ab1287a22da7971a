"""pytest-aifactory: AI Factory benchmarks as pytest suites."""

from __future__ import annotations

__version__ = "0.1.0"
