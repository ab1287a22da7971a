"""`aifactory compare`: runs side by side, an HTML page of them, and a regression gate for CI.

    aifactory compare RUN_A RUN_B [--metrics ttft_ms.p99,output_throughput]
                      [--html PATH | --no-html] [--fail-on-regression output_throughput:5%]

The first run is the baseline; with one run given, the baseline is the latest earlier run of the
same recipe in the same folder. Exit status: 0, 1 when a metric regressed beyond its tolerance,
2 for a usage error (an unknown run, a bad metric or tolerance).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_aifactory.api_reports import compare
from pytest_aifactory.api_shapes import ApiError
from pytest_aifactory.cli_common import Subcommands, print_error
from pytest_aifactory.report.compare import Regression

EXIT_OK, EXIT_REGRESSED, EXIT_USAGE = 0, 1, 2


def regression_lines(found: list[Regression]) -> list[str]:
    """`REGRESSION run: test metric: a -> b (...)`, one per regressed metric."""
    return [f"REGRESSION {r.run_id}: {r.describe()}" for r in found]


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        result = compare(args.runs, metrics=args.metrics, tolerances=args.fail_on_regression)
    except ApiError as err:
        for note in err.notes:
            print_error(note)
        print_error(str(err))
        return EXIT_USAGE
    for note in result.notes:
        print_error(note)
    comparison, tolerances, found = result.comparison, result.tolerances, result.regressions
    print(result.text)
    if not args.no_html:
        # deferred: the page draws its charts with altair, slow to import for every command
        from pytest_aifactory.report.compare_html import default_html_path, write_comparison_html

        path = Path(args.html) if args.html else default_html_path(comparison)
        try:
            write_comparison_html(comparison, path, found, tolerances)
        except OSError as err:
            print_error(f"cannot write {path}: {err.strerror or err}")
            return EXIT_USAGE
        print(f"\ncomparison page: {path}")
    if tolerances is None:
        return EXIT_OK
    for metric in result.unchecked:
        print_error(f"warning: no test of these runs has {metric}: not checked")
    if result.judgements:
        print()
        for judgement in result.judgements:
            print(f"gate: {judgement.describe()}")
    if found:
        print()
        for line in regression_lines(found):
            print(line)
        names = ", ".join(dict.fromkeys(r.metric for r in found))
        print_error(f"{len(found)} regression(s) beyond tolerance: {names}")
        return EXIT_REGRESSED
    print("\nno regression beyond the tolerances")
    return EXIT_OK


def register_compare(subcommands: Subcommands) -> None:
    compare = subcommands.add_parser(
        "compare",
        help="compare runs (the first is the baseline); gate on regressions",
        description="Compare runs test by test (matched by client and load level) against the "
        "first run. With one run, the baseline is the latest earlier run of its recipe in "
        "its folder.",
    )
    compare.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run folder, id, id prefix or `latest`; the first is the baseline",
    )
    compare.add_argument(
        "--metrics",
        metavar="KEYS",
        help="comma-separated metrics to show, e.g. ttft_ms.p99,output_throughput "
        "(default: p50/p99 of each latency, every throughput, goodput, error_rate)",
    )
    where = compare.add_mutually_exclusive_group()
    where.add_argument(
        "--html",
        metavar="PATH",
        help="write the comparison page here (default: <last run>/compare-<baseline id>.html)",
    )
    where.add_argument("--no-html", action="store_true", help="write no comparison page")
    compare.add_argument(
        "--fail-on-regression",
        metavar="SPEC",
        help="exit 1 when a metric got worse than its tolerance and than the runs' noise, e.g. "
        "'ttft_ms.p99:10%%,output_throughput:5%%' (added to the last run's recipe's "
        "regression.tolerances); 'recipe': those alone",
    )
    compare.set_defaults(func=cmd_compare)
