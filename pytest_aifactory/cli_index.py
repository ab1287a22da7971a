"""`aifactory index [DIR]`: build the experiments dashboard of a reports folder again.

Every session rebuilds `DIR/index.html` when it ends; this builds it for a folder of runs copied
from elsewhere, after runs were removed, or with another regression tolerance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_aifactory.cli_common import Subcommands, print_error
from pytest_aifactory.report.index import DEFAULT_TOLERANCE, INDEX_NAME, IndexBuildError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _tolerance(text: str) -> float:
    """`10%` or `10` -> 0.1."""
    value = text.strip().removesuffix("%")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a percentage such as 10%, got {text!r}"
        ) from None
    if not 0 <= number < 1000:
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to 1000, got {text!r}")
    return number / 100.0


def cmd_index(args: argparse.Namespace) -> int:
    # deferred: the page inlines the Vega bundle, whose lookup imports altair
    from pytest_aifactory.report.index_html import build_index

    folder = Path(args.dir).expanduser()
    output = Path(args.output).expanduser() if args.output else None
    if output is not None and output.is_dir():
        output = output / INDEX_NAME
    try:
        page = build_index(folder, output, args.tolerance)
    except IndexBuildError as err:
        print_error(str(err))
        return EXIT_USAGE
    except OSError as err:
        print_error(f"cannot write the dashboard: {err.strerror or err}")
        return EXIT_FAILED
    print(page)
    return EXIT_OK


def register_index(subcommands: Subcommands) -> None:
    index = subcommands.add_parser(
        "index",
        help="build the experiments dashboard (index.html) of a reports folder",
        description="List every run of a reports folder (recipe, date, host, executor, status, "
        "verdict, headline figures, link to its report) and draw each recipe's history, in "
        "one self-contained page.",
    )
    index.add_argument(
        "dir", nargs="?", default="reports", metavar="DIR", help="the reports folder (reports/)"
    )
    index.add_argument(
        "-o", "--output", metavar="PATH", help=f"write the page here (default: DIR/{INDEX_NAME})"
    )
    index.add_argument(
        "--tolerance",
        type=_tolerance,
        default=DEFAULT_TOLERANCE,
        metavar="PCT",
        help="mark a headline figure worse than the previous run's by more than this as a "
        f"regression (default: {DEFAULT_TOLERANCE * 100:g}%%)",
    )
    index.set_defaults(func=cmd_index)
