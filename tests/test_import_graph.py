"""The package's module-level imports form no cycle.

A cycle among module-level imports makes the import order matter: whichever module of the loop
is imported first sees the others half-initialized. Imports inside functions, and those under
`if TYPE_CHECKING:`, run later or never, so they do not count. Importing `a.b` runs package
`a` first, so a submodule also depends on its package's `__init__`.

An import inside a function stays there only to defer something (a slow or optional library,
a module that would close a cycle), and a comment on its line or the line above says what.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "pytest_aifactory"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: at the top level or in
    module-level `if`/`try`/`with` blocks, not in functions, classes or `if TYPE_CHECKING:`."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                pending.extend(node.body)
            pending.extend(node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend([*node.body, *node.orelse, *node.finalbody])
            for handler in node.handlers:
                pending.extend(handler.body)
        elif isinstance(node, ast.With):
            pending.extend(node.body)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(importer: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that importing `importer` imports at once."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in module_level_imports(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        target = _absolute(node, importer, path.name == "__init__.py")
        found.add(target)
        # `from package import module` imports the submodule too
        found.update(f"{target}.{alias.name}" for alias in node.names)
    # importing `a.b.c` runs `a` and `a.b` first
    with_parents = {
        ".".join(name.split(".")[:end]) for name in found for end in range(1, name.count(".") + 2)
    }
    parents = {".".join(importer.split(".")[:end]) for end in range(1, importer.count(".") + 1)}
    return {name for name in with_parents | parents if name in modules and name != importer}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in sorted(graph.get(node, ())):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_package_has_no_import_cycle() -> None:
    found = cycles(import_graph(PACKAGE_DIR))
    assert not found, "import cycles among module-level imports:\n" + "\n".join(
        " <-> ".join(component) for component in found
    )


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_finds_a_cycle_of_module_level_imports(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "from . import c\n",
            "pkg/c.py": "import pkg.a\n",
        },
    )
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_a_package_init_importing_its_submodule_is_a_cycle(tmp_path: Path) -> None:
    root = _write(tmp_path, {"pkg/__init__.py": "from pkg.a import x\n", "pkg/a.py": "x = 1\n"})
    assert cycles(import_graph(root)) == [["pkg", "pkg.a"]]


@pytest.mark.parametrize(
    "deferred",
    [
        "def f():\n    import pkg.a\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n",
        "import typing\nif typing.TYPE_CHECKING:\n    from pkg import a\n",
    ],
    ids=["in-function", "type-checking", "typing-attribute"],
)
def test_deferred_imports_do_not_count(tmp_path: Path, deferred: str) -> None:
    root = _write(
        tmp_path,
        {"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n", "pkg/b.py": deferred},
    )
    assert import_graph(root)["pkg.a"] == {"pkg", "pkg.b"}
    assert cycles(import_graph(root)) == []


def function_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements inside functions (and in anything a function holds)."""
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for statement in ast.walk(function):
                if isinstance(statement, ast.Import | ast.ImportFrom):
                    yield statement


def comment_lines(text: str) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return {token.start[0] for token in tokens if token.type == tokenize.COMMENT}


def unexplained_imports(path: Path) -> list[int]:
    """The lines of function-level imports with no comment on their lines or the line above.
    Imports on consecutive lines share the comment above the first of them."""
    text = path.read_text(encoding="utf-8")
    comments = comment_lines(text)
    nodes = function_imports(ast.parse(text))
    spans = sorted({(node.lineno, node.end_lineno or node.lineno) for node in nodes})
    explained: set[int] = set()  # last lines of the imports that say why
    missing = []
    for first, last in spans:
        if comments & set(range(first - 1, last + 1)) or first - 1 in explained:
            explained.add(last)
        else:
            missing.append(first)
    return missing


def test_every_function_level_import_says_why() -> None:
    missing = [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{line}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for line in unexplained_imports(path)
    ]
    assert not missing, (
        "imports inside functions without a comment saying why they are deferred "
        "(move them to the module's imports unless they must wait):\n" + "\n".join(missing)
    )


@pytest.mark.parametrize(
    ("source", "missing"),
    [
        ("def f():\n    # deferred: slow\n    import a\n", []),
        ("def f():\n    import a  # deferred: slow\n", []),
        ("def f():\n    # slow\n    from a import (\n        b,\n    )\n    import c\n", []),
        ("class C:\n    def f(self):\n        import a\n", [3]),
        ("def f():\n    # deferred: slow\n\n    import a\n", [4]),
        ("def f():\n    # deferred: slow\n    import a\n\n    import b\n", [5]),
        ("def f():\n    s = '# not a comment'\n    import a\n", [3]),
        ("import a\nif a:\n    import b\n", []),
    ],
    ids=[
        "comment-above",
        "comment-on-line",
        "group-under-one-comment",
        "method",
        "blank-line-between",
        "second-group",
        "hash-in-string",
        "module-level",
    ],
)
def test_finds_function_level_imports_without_a_comment(
    tmp_path: Path, source: str, missing: list[int]
) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert unexplained_imports(path) == missing
