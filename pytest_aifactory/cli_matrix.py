"""`aifactory matrix RECIPE [-- PYTEST_ARGS]`: every configuration of a recipe's matrix
benchmarked in turn, then set side by side.

Each configuration is one ordinary session (`pytest --recipe RECIPE --matrix-config N`), so it
gets its run folder, report and history like any recipe; one after another, so no
configuration's service competes with another's for the same node, or with `--side-by-side` on
Slurm all at once, each session's jobs on nodes Slurm gives it (whole nodes where the recipe
asks `exclusive`). The page that compares them (`report/matrix.py`) names the best
configuration and draws the Pareto front.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pytest_aifactory.api_sessions import session_command
from pytest_aifactory.cli_common import Subcommands, add_session_arguments, print_error
from pytest_aifactory.recipe import RecipeError, load_recipe
from pytest_aifactory.report.matrix import ConfigRun, write_matrix_report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run_of(
    report_dir: Path, before: set[Path], index: int
) -> tuple[Path | None, dict[str, Any] | None]:
    """The run a configuration's session made: a folder new since `before` whose summary
    names it (only new folders are read: a reports folder may hold hundreds of runs)."""
    for folder in sorted(set(report_dir.iterdir()) - before):
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        if (summary.get("matrix") or {}).get("index") == index:
            return folder, summary
    return None, None


def _side_by_side(commands: list[list[str]], logs: list[Path]) -> list[int]:
    """Every session at once, each one's output in its own log; their exit codes. Ctrl-C
    stops them all (each stops its own jobs, as on SIGTERM)."""
    procs = []
    try:
        for command, log in zip(commands, logs, strict=True):
            with log.open("w") as out:
                procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
            print(f"started: {log.stem} (output: {log})", flush=True)
        return [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait()


def cmd_matrix(args: argparse.Namespace) -> int:
    path = Path(args.recipe)
    if not path.is_file():
        print_error(f"{path}: no such recipe file")
        return EXIT_USAGE
    try:
        recipe = load_recipe(path)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return EXIT_FAILED
    if not recipe.matrix:
        print_error(f"{path}: no configuration matrix to run (services.<s>.matrix)")
        return EXIT_USAGE
    if args.benchmarks is not None and not Path(args.benchmarks).exists():
        print_error(f"{args.benchmarks}: no such benchmark folder or file (--benchmarks)")
        return EXIT_USAGE
    executor = args.executor or recipe.platform.executor
    if args.side_by_side and executor != "slurm":
        print_error(
            "--side-by-side runs the configurations at once on nodes Slurm gives each: it needs "
            f"the slurm executor (this recipe runs on '{executor}', where they would compete "
            "for one machine)"
        )
        return EXIT_USAGE
    report_dir = Path(args.report_dir or recipe.report.dir).absolute()
    report_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = report_dir / f"matrix-{stamp}-{recipe.name}"
    folder.mkdir(mode=0o700)
    before = set(report_dir.iterdir())
    commands = [
        session_command(
            path.absolute(),
            report_dir,
            benchmarks=str(Path(args.benchmarks).absolute()) if args.benchmarks else None,
            executor=args.executor,
            keyword=None,
            pytest_args=["--matrix-config", str(config.index), *args.pytest],
        )
        for config in recipe.matrix
    ]
    if args.side_by_side:
        codes = _side_by_side(commands, [folder / f"{c.config_id}.log" for c in recipe.matrix])
    else:
        codes = []
        for config, command in zip(recipe.matrix, commands, strict=True):
            count = len(recipe.matrix)
            print(f"configuration {config.index + 1} of {count}: {config.label}", flush=True)
            code = subprocess.call(command)
            codes.append(code)
            if code in (2, 3, 4):  # interrupted, internal error, usage error: the rest would too
                print_error(
                    f"configuration {config.label}: the session ended with exit code {code}"
                )
                return code
    runs: list[ConfigRun] = []
    for config, code in zip(recipe.matrix, codes, strict=True):
        run_dir, summary = run_of(report_dir, before, config.index)
        runs.append(ConfigRun(config.index, config.config_id, config.label, run_dir, summary, code))
    page = write_matrix_report(folder, recipe.name, runs)
    result = json.loads((page.parent / "matrix.json").read_text())
    best = result.get("best")
    print(
        f"best configuration: {best['label']}" if best else "no configuration met every objective"
    )
    print(f"configurations side by side: {page}")
    return EXIT_OK if best else EXIT_FAILED


def register_matrix(subcommands: Subcommands) -> None:
    matrix = subcommands.add_parser(
        "matrix",
        help="benchmark every configuration of a recipe's matrix in turn and compare them",
        description="Run `pytest BENCHMARKS --recipe RECIPE --matrix-config N` for each "
        "configuration of the recipe's services.<s>.matrix, one after another, then write "
        "matrix.html: the best configuration that meets every objective and the Pareto front. "
        "Arguments after `--` go to pytest. Exit 0 when some configuration met every "
        "objective, 1 when none did.",
        usage="aifactory matrix [OPTIONS] RECIPE [-- PYTEST_ARGS...]",
    )
    add_session_arguments(
        matrix, "the benchmark suite pytest runs (default: the suites the package ships)"
    )
    matrix.add_argument(
        "--executor", metavar="NAME", help="local or slurm (default: the recipe's platform)"
    )
    matrix.add_argument(
        "--side-by-side",
        action="store_true",
        help="on Slurm: run the configurations' sessions at once, each on the nodes Slurm "
        "gives it (ask `exclusive` in the recipe for whole nodes)",
    )
    matrix.set_defaults(func=cmd_matrix)
