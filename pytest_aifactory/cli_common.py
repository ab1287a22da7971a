"""What every `aifactory` command group shares: the type its register function receives and
how a command reports a user's mistake (one line on stderr, never a traceback)."""

from __future__ import annotations

import sys
from typing import Any

Subcommands = Any
"""argparse's `_SubParsersAction`, which argparse keeps private."""


def print_error(message: str) -> None:
    print(f"aifactory: {message}", file=sys.stderr)
