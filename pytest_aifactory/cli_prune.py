"""`aifactory prune`: remove the secrets and job folders of runs that no longer need them.

Every run keeps its API key, its services' credentials and its jobs' folders (pickles with
keys, raw logs) in a private folder under the state folder (`cluster/private_prune.py` says
which parts go when). A session removes its own at its end, `aifactory stop` those of a run
whose kept services it ended; this command removes what sessions killed before their end left
behind, and the folders of runs whose run folder was deleted.
"""

from __future__ import annotations

import argparse

from pytest_aifactory.cli_common import Subcommands, print_error
from pytest_aifactory.cluster.private_prune import Pruned, Verdict, prune, runs_root, survey

EXIT_OK, EXIT_FAILED = 0, 1


def describe(verdict: Verdict, done: bool) -> str:
    """One line per folder: what was (or would be) removed, or why it is kept."""
    if verdict.action == "keep":
        return f"kept {verdict.private}: {verdict.why}"
    verb = "removed" if done else "would remove"
    if verdict.action == "remove":
        return f"{verb} {verdict.private} ({verdict.why})"
    return f"{verb} the secrets and job folders of {verdict.run_dir} ({verdict.why})"


def cmd_prune(args: argparse.Namespace) -> int:
    verdicts = survey()
    if not verdicts:
        print(f"nothing to prune in {runs_root()}")
        return EXIT_OK
    if args.dry_run:
        for verdict in verdicts:
            print(describe(verdict, done=False))
        return EXIT_OK
    status = EXIT_OK
    outcomes: list[Pruned] = prune(verdicts)
    for outcome in outcomes:
        if outcome.error:
            print_error(f"prune: {outcome.verdict.private}: {outcome.error}")
            status = EXIT_FAILED
        else:
            print(describe(outcome.verdict, done=True))
    pruned = sum(1 for o in outcomes if o.verdict.action != "keep" and not o.error)
    kept = sum(1 for o in outcomes if o.verdict.action == "keep")
    print(f"{pruned} pruned, {kept} kept")
    return status


def register_prune(subcommands: Subcommands) -> None:
    pruner = subcommands.add_parser(
        "prune",
        help="remove the secrets and job folders of runs that ended or whose folder is gone",
    )
    pruner.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    pruner.set_defaults(func=cmd_prune)
