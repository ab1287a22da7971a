"""What every `aifactory` command group shares: the type its register function receives, how a
command reports a user's mistake (one line on stderr, never a traceback), and the parser of the
commands that hand the rest of their line to pytest (`submit`, `start`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

Subcommands = Any
"""argparse's `_SubParsersAction`, which argparse keeps private."""


def print_error(message: str) -> None:
    print(f"aifactory: {message}", file=sys.stderr)


class PytestArgsParser(argparse.ArgumentParser):
    """Everything after the first `--` is pytest's. (argparse alone matches the positional
    arguments before it reaches a `--` that follows an option, and then refuses what is
    after it.)"""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        given = list(sys.argv[1:] if args is None else args)
        tail: list[str] = []
        if "--" in given:
            cut = given.index("--")
            given, tail = given[:cut], given[cut + 1 :]
        parsed, extras = super().parse_known_args(given, namespace)
        parsed.pytest = tail
        return parsed, extras


def add_session_arguments(parser: argparse.ArgumentParser, benchmarks_help: str) -> None:
    """What every command that starts a session takes (`submit`, `start`): a recipe, the suite,
    where the run goes, and pytest's own arguments after `--`, so that they cannot drift."""
    parser.__class__ = PytestArgsParser
    parser.add_argument("recipe", metavar="RECIPE", help="recipe YAML file")
    parser.add_argument("--benchmarks", metavar="PATH", help=benchmarks_help)
    parser.add_argument(
        "--report-dir", metavar="DIR", help="where the run is saved (default: the recipe's)"
    )
