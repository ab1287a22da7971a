"""`aifactory sign RUN`: sign a run of the user's own that has no signed manifest.

Only signed runs are baselines (`report/manifest.py`). Runs saved before manifests were signed,
and runs whose session ended between its summary and its manifest, are whole but unsigned:
signing is the user vouching that the run is theirs and unchanged, so it is refused for a
folder another account owns or could write, for a run still being written, and for one whose
data no longer matches the manifest it has.
"""

from __future__ import annotations

import argparse
import json

from pytest_aifactory.cli_common import Subcommands, print_error
from pytest_aifactory.cli_report import run_folder
from pytest_aifactory.cluster.run_records import RunNotFound
from pytest_aifactory.report.manifest import (
    has_signature,
    unsigned_manifest_problems,
    verify_run,
    write_manifest,
)
from pytest_aifactory.report.recover import driver_still_running
from pytest_aifactory.report.signing import SigningError, ownership_problem

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        root = run_folder(args.run)
    except RunNotFound as err:
        print_error(str(err))
        return EXIT_USAGE
    problem = ownership_problem(root, "only your own runs are signed")
    if problem:
        print_error(problem)
        return EXIT_REFUSED
    try:
        status = json.loads((root / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError) as err:
        print_error(f"{root}: no readable summary.json ({err}); `aifactory report` rebuilds it")
        return EXIT_REFUSED
    running = driver_still_running(root)
    if status == "running" or running:
        why = running or "its summary says the session is still running"
        print_error(f"{root}: not signed: {why}; `aifactory report {root}` rebuilds a dead run")
        return EXIT_REFUSED
    problems = verify_run(root)
    if not problems:
        print(f"{root}: already signed")
        return EXIT_OK
    # a signed run that no longer verifies stays refused: signing it again would vouch for
    # whatever changed it
    problems = problems if has_signature(root) else unsigned_manifest_problems(root)
    if problems:
        print_error(f"{root}: not signed: " + "; ".join(problems))
        return EXIT_REFUSED
    try:
        path = write_manifest(root)
    except (SigningError, OSError) as err:
        print_error(f"{root}: not signed: {err}")
        return EXIT_REFUSED
    print(f"{path}: signed")
    return EXIT_OK


def register_sign(subcommands: Subcommands) -> None:
    sign = subcommands.add_parser(
        "sign",
        help="sign a run of yours saved unsigned (by an older version, or a session that "
        "ended before signing), so that it can be a baseline",
    )
    sign.add_argument("run", metavar="RUN", help="run id, unique prefix, folder or `latest`")
    sign.set_defaults(func=cmd_sign)
