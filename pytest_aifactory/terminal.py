"""What the user sees while a benchmark runs: phases with elapsed time and one live line.

Writes go around pytest's output capture (as live logging does), and are silent with `-q`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

NON_TTY_EVERY_S = 10.0


class Terminal:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.quiet = config.get_verbosity() < 0
        self._live_shown = False
        self._last_plain = 0.0

    @property
    def _reporter(self) -> Any:
        return self.config.pluginmanager.get_plugin("terminalreporter")

    @contextlib.contextmanager
    def _uncaptured(self) -> Iterator[None]:
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if capman is None:
            yield
            return
        with capman.global_and_fixture_disabled():
            yield

    def line(self, text: str) -> None:
        """A lasting line, e.g. `llm: healthy after 1.2 s at 127.0.0.1:40123`."""
        reporter = self._reporter
        if self.quiet or reporter is None:
            return
        with self._uncaptured():
            if self._live_shown:
                reporter.write("\n")
                self._live_shown = False
            reporter.ensure_newline()
            reporter.write_line(f"  [aifactory] {text}")

    def live(self, text: str, final: bool = False) -> None:
        """A line rewritten in place on a terminal; on a pipe, one line every few seconds."""
        reporter = self._reporter
        if self.quiet or reporter is None:
            return
        with self._uncaptured():
            if getattr(reporter, "isatty", False):
                if not self._live_shown:
                    reporter.ensure_newline()
                reporter.rewrite(f"  [aifactory] {text}", erase=True)
                self._live_shown = True
                if final:
                    reporter.write("\n")
                    self._live_shown = False
                return
            now = time.monotonic()
            if final or now - self._last_plain >= NON_TTY_EVERY_S:
                self._last_plain = now
                reporter.ensure_newline()
                reporter.write_line(f"  [aifactory] {text}")
