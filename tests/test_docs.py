"""The repository's docs keep up with the code: every recipe key and every metric is described."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pytest_aifactory.loadgen.kinds import all_metrics
from pytest_aifactory.recipe import recipe_json_schema

DOCS = Path(__file__).resolve().parent.parent / "docs"
_PLACEHOLDER = re.compile(r"<[^>]*>")


def schema_keys(schema: Mapping[str, Any]) -> Iterator[str]:
    """Every key path of the recipe schema, a name chosen by the user written `<>`."""
    definitions = schema.get("$defs", {})

    def walk(node: Mapping[str, Any], prefix: str, seen: frozenset[str]) -> Iterator[str]:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                yield from walk(definitions[name], prefix, seen | {name})
            return
        for key in ("anyOf", "allOf", "oneOf"):
            for branch in node.get(key, []):
                yield from walk(branch, prefix, seen)
        for name, child in node.get("properties", {}).items():
            yield prefix + name
            yield from walk(child, f"{prefix}{name}.", seen)
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            yield from walk(extra, prefix + "<>.", seen)
        items = node.get("items")
        if isinstance(items, Mapping):
            yield from walk(items, prefix, seen)

    yield from walk(schema, "", frozenset())


def documented_keys(page: str) -> set[str]:
    return {_PLACEHOLDER.sub("<>", key) for key in re.findall(r"`([a-z0-9_<>.]+)`", page)}


def test_every_recipe_key_is_in_docs_recipes() -> None:
    keys = set(schema_keys(recipe_json_schema()))
    assert "clients.<>.load.connections" in keys, "the walk reaches nested sections"
    missing = sorted(keys - documented_keys((DOCS / "recipes.md").read_text(encoding="utf-8")))
    assert not missing, f"docs/recipes.md lacks: {missing}"


def test_every_metric_is_in_docs_metrics() -> None:
    page = (DOCS / "metrics.md").read_text(encoding="utf-8")
    missing = sorted(name for name in all_metrics() if f"`{name}`" not in page)
    assert not missing, f"docs/metrics.md lacks: {missing}"


ROOT = DOCS.parent
_LINK = re.compile(r"\]\(([^)\s]+)\)")
GLOSSARY_TERMS = (
    "run",
    "session",
    "driver",
    "job",
    "service",
    "client",
    "case",
    "level",
    "kind",
    "recipe",
    "records",
    "summary",
)


def local_links(page: Path) -> Iterator[tuple[str, Path]]:
    """Each link of a Markdown page to a file of the repository (web links and anchors aside),
    with the path it names."""
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if path and "://" not in target and not target.startswith("mailto:"):
            yield target, page.parent / path


def test_every_link_between_the_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in pages
        for target, path in local_links(page)
        if not path.exists()
    ]
    assert not broken, f"links to files that are not there: {broken}"


def test_the_readme_links_every_doc() -> None:
    linked = {path.resolve() for _, path in local_links(ROOT / "README.md")}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md links no docs/{unlinked}"


def test_the_glossary_defines_the_terms_the_code_uses() -> None:
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    _, _, glossary = page.partition("## Glossary")
    missing = [term for term in GLOSSARY_TERMS if f"- **{term}**:" not in glossary]
    assert not missing, f"docs/architecture.md's glossary lacks: {missing}"


_MODULE = re.compile(r"`(pytest_aifactory(?:\.[a-z_0-9]+)+)(?::[A-Za-z_]+)?`")
_SOURCE = re.compile(
    r"`((?:pytest_aifactory/)?(?:cluster|services|loadgen|monitor|metrics|report|testing)"
    r"/[a-z_0-9/]+\.py)"
)


def test_the_modules_and_files_the_docs_name_exist() -> None:
    """Docs that name a module or a source file keep up when code moves."""
    package = ROOT / "pytest_aifactory"
    missing = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for module in _MODULE.findall(text):
            if module == "pytest_aifactory.kinds":  # the entry point group, not a module
                continue
            parts = module.split(".")[1:]
            # a module, a package, or `module.attribute` (then the module must exist)
            candidates = [
                package.joinpath(*parts).with_suffix(".py"),
                package.joinpath(*parts, "__init__.py"),
                package.joinpath(*parts[:-1]).with_suffix(".py"),
            ]
            if not any(path.exists() for path in candidates):
                missing.append(f"{page.name}: {module}")
        for source in _SOURCE.findall(text):
            relative = source.removeprefix("pytest_aifactory/")
            if not (package / relative).exists():
                missing.append(f"{page.name}: {source}")
    assert not missing, f"docs name modules or files that are not there: {missing}"
