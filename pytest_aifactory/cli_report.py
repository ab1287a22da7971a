"""`aifactory report RUN`: render a run's report page again from its saved files.

A run folder keeps summary.json, records.parquet and metrics.parquet; rebuilding from them lets
a newer version draw an old run, or a run cut short get the page it never wrote. A run whose
driver died before writing its summary gets one rebuilt from its raw records first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_aifactory.cli_common import Subcommands, print_error
from pytest_aifactory.cluster.run_records import RunNotFound, resolve_run
from pytest_aifactory.report.manifest import MANIFEST_FILE
from pytest_aifactory.report.recover import RecoverError, recover_run

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run_folder(ref: str) -> Path:
    """A folder is taken as it is (a run copied from elsewhere has no entry in this machine's
    run index); anything else is resolved as a run id, prefix or `latest`."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    return resolve_run(ref).root


def _needs_rebuild(root: Path) -> str:
    """Why the run's summary must be rebuilt from its records ("" when it need not): the
    session never wrote it, it is unreadable, or the session died before its end (before the
    manifest, written last)."""
    path = root / "summary.json"
    if not (root / "records").is_dir():
        return ""
    if not path.is_file():
        return "the session wrote no summary"
    try:
        status = json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return "its summary is unreadable"
    if status == "running":
        return "the session ended without finishing its summary"
    if not (root / MANIFEST_FILE).is_file():  # signed last: its data may be torn
        return "the session ended before signing its run"
    return ""


def cmd_report(args: argparse.Namespace) -> int:
    # deferred: the report draws its charts with altair, slow to import for every command
    from pytest_aifactory.report.build import ReportError, build_report

    try:
        root = run_folder(args.run)
    except RunNotFound as err:
        print_error(str(err))
        return EXIT_USAGE
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        output = output / "report.html"
    reason = "asked to" if args.from_records else _needs_rebuild(root)
    if reason:
        try:
            rebuilt = recover_run(root)
        except RecoverError as err:
            print_error(f"cannot rebuild the summary from the records: {err}")
            return EXIT_USAGE
        print(f"{rebuilt}: rebuilt from the run's records ({reason})", file=sys.stderr)
    try:
        page = build_report(root, output)
    except ReportError as err:
        print_error(str(err))
        return EXIT_USAGE
    except OSError as err:
        print_error(f"cannot write the report: {err.strerror or err}")
        return EXIT_FAILED
    print(page)
    return EXIT_OK


def register_report(subcommands: Subcommands) -> None:
    report = subcommands.add_parser(
        "report", help="build a run's report.html again from its saved files"
    )
    report.add_argument("run", metavar="RUN", help="run id, unique prefix, folder or `latest`")
    report.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="write the page here (default: RUN/report.html); charts go to a folder beside it",
    )
    report.add_argument(
        "--from-records",
        action="store_true",
        help="rebuild summary.json and records.parquet from the raw records first (done by "
        "itself when the session wrote no summary or died before finishing it)",
    )
    report.set_defaults(func=cmd_report)
