"""The package's public API: what `benchmarks/` may import, and what importing it costs.

Benchmark modules and scripts import only from `pytest_aifactory` itself (and the suites it
ships, `pytest_aifactory.benchmarks`), so the package's other modules can move without breaking
them, in this repository and in those `aifactory init` set up; the package gives each public
name on first use, so
`import pytest_aifactory` (done by the `aifactory` command, pytest's plugin loading and every
job) stays cheap.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_aifactory

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "pytest_aifactory"


def package_imports(path: Path) -> list[str]:
    """Every import of this package in a file, anywhere in it, as written (`from` modules and
    `import` names)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.extend(name for name in names if name.split(".")[0] == PACKAGE)
    return found


SUITES = f"{PACKAGE}.benchmarks"
"""The benchmark suites the package ships, which benchmark modules import to run them."""


def test_benchmarks_import_only_the_top_level_package() -> None:
    shipped = REPO / PACKAGE / "benchmarks"
    starter = REPO / PACKAGE / "init_files" / "test_aifactory.py.in"
    files = [*sorted((REPO / "benchmarks").rglob("*.py")), *sorted(shipped.glob("*.py")), starter]
    assert len(files) > 4
    deep = [
        f"{path.relative_to(REPO)}: {name}"
        for path in files
        for name in package_imports(path)
        if name != PACKAGE and name != SUITES and not name.startswith(f"{SUITES}.")
    ]
    assert not deep, "import these from pytest_aifactory itself:\n" + "\n".join(deep)


def test_a_module_import_is_found(tmp_path: Path) -> None:
    script = tmp_path / "bench.py"
    script.write_text(
        "from pytest_aifactory import LoadCase\n"
        "def f():\n"
        "    import pytest_aifactory.loadgen.spec\n"
        "    from pytest_aifactory.cases import LoadCase\n"
    )
    assert package_imports(script) == [
        "pytest_aifactory",
        "pytest_aifactory.loadgen.spec",
        "pytest_aifactory.cases",
    ]


@pytest.mark.parametrize("name", sorted(pytest_aifactory._EXPORTS))
def test_every_public_name_comes_from_its_module(name: str) -> None:
    module = importlib.import_module(pytest_aifactory._EXPORTS[name])
    assert getattr(pytest_aifactory, name) is getattr(module, name)
    assert name in pytest_aifactory.__all__


def test_type_checkers_see_the_same_names() -> None:
    """The `TYPE_CHECKING` imports name each public name from its module, and no other."""
    tree = ast.parse(Path(pytest_aifactory.__file__).read_text(encoding="utf-8"))
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        if node.test.id == "TYPE_CHECKING"
    )
    seen = {
        alias.name: node.module
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == pytest_aifactory._EXPORTS


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = pytest_aifactory.no_such_name  # type: ignore[attr-defined]


def test_importing_the_package_imports_none_of_its_modules() -> None:
    code = (
        "import sys, pytest_aifactory\n"
        "print(sorted(m for m in sys.modules if m.startswith('pytest_aifactory.')"
        " or m in ('pandas', 'numpy', 'pytest')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert done.stdout.strip() == "[]"
