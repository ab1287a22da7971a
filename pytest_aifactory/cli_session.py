"""`aifactory start RECIPE [-- PYTEST_ARGS]`: a benchmark session in the background.

The session outlives the terminal that started it (as `aifactory submit` does on Slurm, without
Slurm): the command prints the run id and returns, and `status`, `logs` and `stop --session`
follow and end the run from any shell, as the web interface does through the same API.
"""

from __future__ import annotations

import argparse
import sys

from pytest_aifactory.api_sessions import SESSION_JOB, start_session
from pytest_aifactory.api_shapes import ApiError, InvalidRecipeError, RecipeNotFoundError
from pytest_aifactory.cli_common import Subcommands, add_session_arguments, print_error

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def cmd_start(args: argparse.Namespace) -> int:
    try:
        started = start_session(
            args.recipe,
            pytest_args=args.pytest,
            benchmarks=args.benchmarks,
            report_dir=args.report_dir,
            executor=args.executor,
            keyword=args.keyword,
        )
    except RecipeNotFoundError as err:
        print_error(str(err))
        return EXIT_USAGE
    except InvalidRecipeError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    except ApiError as err:
        print_error(str(err))
        return EXIT_USAGE
    run = started.run_id
    print(run)
    print(
        f"run {run} ({started.run_dir}): session pid {started.pid} runs in the background\n"
        f"  follow it: aifactory status {run} --watch   |   aifactory logs {run} {SESSION_JOB} -f\n"
        f"  stop it:   aifactory stop --session {run}",
        file=sys.stderr,
    )
    return EXIT_OK


def register_session(subcommands: Subcommands) -> None:
    start = subcommands.add_parser(
        "start",
        help="run a recipe's benchmark session in the background; prints the run id",
        description="Start `pytest BENCHMARKS --recipe RECIPE` detached from this terminal; "
        "arguments after `--` go to pytest. Its output goes to the run's session log.",
        usage="aifactory start [OPTIONS] RECIPE [-- PYTEST_ARGS...]",
    )
    add_session_arguments(
        start, "the benchmark suite pytest runs (default: the suites the package ships)"
    )
    start.add_argument(
        "--executor", metavar="NAME", help="local or slurm (default: the recipe's platform)"
    )
    start.add_argument(
        "-k", dest="keyword", metavar="EXPR", help="only the tests matching EXPR (pytest's -k)"
    )
    start.set_defaults(func=cmd_start)
