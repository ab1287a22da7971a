"""The `aifactory` command: work with recipes (and, later, runs) without starting pytest.

Each command is a function `cmd_x(args) -> int` (the exit status) registered by a
`register_x(subcommands)` function; a new command group lives in its own module and adds its
register function to `COMMAND_GROUPS`. User mistakes (a missing file, an invalid recipe) end with
a message and a non-zero status, never a traceback: 1 for an invalid recipe, 2 for a usage error
or a file that is not there.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_aifactory import __version__
from pytest_aifactory.api_reports import validate_recipe
from pytest_aifactory.api_shapes import InvalidRecipeError, RecipeNotFoundError
from pytest_aifactory.cli_common import Subcommands, print_error
from pytest_aifactory.cli_compare import register_compare
from pytest_aifactory.cli_index import register_index
from pytest_aifactory.cli_init import register_init
from pytest_aifactory.cli_jobs import register_jobs
from pytest_aifactory.cli_matrix import register_matrix
from pytest_aifactory.cli_monitor import register_monitor
from pytest_aifactory.cli_prune import register_prune
from pytest_aifactory.cli_report import register_report
from pytest_aifactory.cli_session import register_session
from pytest_aifactory.cli_sign import register_sign
from pytest_aifactory.cli_submit import register_submit
from pytest_aifactory.cli_ui import register_ui
from pytest_aifactory.cluster.rundir import private_umask
from pytest_aifactory.recipe import RecipeError, load_recipe, recipe_json_schema

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


# -- aifactory recipe validate | schema ---------------------------------------------------------


def cmd_recipe_validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for file in args.files:
        try:
            check = validate_recipe(file)
        except RecipeNotFoundError as err:
            print_error(str(err))
            status = max(status, EXIT_USAGE)
            continue
        except InvalidRecipeError as err:
            print(err, file=sys.stderr)
            status = max(status, EXIT_INVALID)
            continue
        print(
            f"ok {file}: {check.name} ({_count(check.services, 'service')}, "
            f"{_count(check.clients, 'client')}, {_count(check.test_cases, 'test case')})"
        )
    return status


def cmd_recipe_schema(args: argparse.Namespace) -> int:
    text = json.dumps(recipe_json_schema(), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.output).write_text(text)
    except OSError as err:
        print_error(f"cannot write {args.output}: {err.strerror or err}")
        return EXIT_USAGE
    print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_recipe_help(args: argparse.Namespace) -> int:
    args.recipe_parser.print_help(sys.stderr)
    return EXIT_USAGE


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def register_recipe(subcommands: Subcommands) -> None:
    recipe = subcommands.add_parser("recipe", help="check a recipe or get its JSON Schema")
    recipe.set_defaults(func=cmd_recipe_help, recipe_parser=recipe)
    actions = recipe.add_subparsers(title="commands", metavar="COMMAND")

    validate = actions.add_parser(
        "validate", help="check recipes without running them; lists every problem"
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="recipe YAML file(s)")
    validate.set_defaults(func=cmd_recipe_validate)

    schema = actions.add_parser("schema", help="print the recipe format's JSON Schema")
    schema.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead")
    schema.set_defaults(func=cmd_recipe_schema)


# -- aifactory recipes [DIR] --------------------------------------------------------------------


def cmd_recipes(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not folder.is_dir():
        print_error(f"{folder}: no such folder")
        return EXIT_USAGE
    # sub-folders hold a site's versions (recipes/meluxina/): listed after the folder's own
    found = [p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    files = sorted(found, key=lambda p: (len(p.relative_to(folder).parts), str(p)))
    if not files:
        print(f"no recipes in {folder}", file=sys.stderr)
        return EXIT_OK
    rows = [("FILE", "NAME", "DESCRIPTION")]
    for path in files:
        try:
            recipe = load_recipe(path)
        except RecipeError as err:
            count = len(err.problems)
            rows.append(
                (str(path), "(invalid)", f"{_count(count, 'problem')}: aifactory recipe validate")
            )
            continue
        rows.append((str(path), recipe.name, " ".join(recipe.description.split())))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for file, name, description in rows:
        print(f"{file:<{widths[0]}}  {name:<{widths[1]}}  {description}".rstrip())
    return EXIT_OK


def register_recipes(subcommands: Subcommands) -> None:
    recipes = subcommands.add_parser("recipes", help="list the recipes in a folder")
    recipes.add_argument("dir", nargs="?", default="recipes", metavar="DIR", help="(recipes/)")
    recipes.set_defaults(func=cmd_recipes)


# -- the command --------------------------------------------------------------------------------

COMMAND_GROUPS: list[Callable[[Subcommands], None]] = [
    register_recipe,
    register_recipes,
    register_submit,
    register_session,
    register_matrix,
    register_jobs,
    register_prune,
    register_monitor,
    register_compare,
    register_index,
    register_init,
    register_report,
    register_sign,
    register_ui,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aifactory",
        description="Benchmarks of AI Factory services as pytest suites: "
        "run them with `pytest benchmarks/ --recipe FILE`.",
    )
    parser.add_argument("--version", action="version", version=f"aifactory {__version__}")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version and usage errors
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with private_umask():  # reports, run folders, dashboards: the user's alone
            return int(func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `aifactory recipe schema | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
