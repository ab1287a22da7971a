"""SIGINT/SIGTERM in a load process: handled by its event loop, so a signal ends the load
cleanly (what was measured is written) instead of killing it mid-write."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_stop_signals(handler: Callable[[], None]) -> dict[int, Any]:
    """Route the stop signals to `handler` on the running loop; returns the handlers they
    replaced (for `restore_signals`). Outside the main thread nothing is installed: the caller
    keeps its own handling."""
    loop = asyncio.get_running_loop()
    saved: dict[int, Any] = {}
    for sig in STOP_SIGNALS:
        try:
            previous = signal.getsignal(sig)
            loop.add_signal_handler(sig, handler)
        except (ValueError, RuntimeError, NotImplementedError):
            continue
        saved[sig] = previous
    return saved


def restore_signals(saved: dict[int, Any]) -> None:
    loop = asyncio.get_running_loop()
    for sig, previous in saved.items():
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)
    saved.clear()
