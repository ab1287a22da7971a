"""Recipes and saved runs: checking a recipe, comparing runs, building the dashboard again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_aifactory.api_shapes import (
    ApiError,
    ComparisonResult,
    InvalidRecipeError,
    RecipeCheck,
    RecipeNotFoundError,
)
from pytest_aifactory.recipe import Recipe, RecipeError, RegressionSettings, load_recipe
from pytest_aifactory.report.baseline import merged_tolerances
from pytest_aifactory.report.compare import (
    CompareError,
    RunView,
    compare_runs,
    find_previous,
    format_comparison,
    judge_metrics,
    load_run,
    parse_metrics,
    unchecked_metrics,
)
from pytest_aifactory.report.index import DEFAULT_TOLERANCE, INDEX_NAME, IndexBuildError
from pytest_aifactory.report.noise import DEFAULT_CONFIDENCE


def load_checked_recipe(path: str | Path) -> Recipe:
    """The recipe, or `InvalidRecipeError` listing every problem (`RecipeNotFoundError` when
    there is no such file)."""
    file = Path(path)
    if not file.is_file():
        raise RecipeNotFoundError(f"{path}: no such recipe file", [], file)
    try:
        return load_recipe(file)
    except RecipeError as err:
        raise InvalidRecipeError(str(err), [str(p) for p in err.problems], file) from None


def validate_recipe(path: str | Path) -> RecipeCheck:
    """What the recipe would run: its services, clients and test cases (one per load level)."""
    recipe = load_checked_recipe(path)
    return RecipeCheck(
        path=str(path),
        name=recipe.name,
        services=len(recipe.services),
        clients=len(recipe.clients),
        test_cases=sum(len(client.load.levels) for client in recipe.clients.values()),
    )


def _runs(refs: Sequence[str], notes: list[str]) -> list[RunView]:
    found = [load_run(ref) for ref in refs]
    if len(found) == 1:
        previous = find_previous(found[0])
        notes.extend(f"not a baseline: {reason}" for reason in previous.refused)
        if previous.run is None:
            raise CompareError(
                f"{found[0].run_id}: no earlier complete run of recipe '{found[0].recipe}' in "
                f"{found[0].root.parent} that verifies; name the runs to compare"
            )
        found.insert(0, previous.run)
    return found


def compare(
    refs: Sequence[str],
    *,
    metrics: Sequence[str] | str | None = None,
    tolerances: str | None = None,
) -> ComparisonResult:
    """The runs test by test against the first; with one run, against the latest earlier run
    of its recipe in its folder that verifies. `metrics`: keys such as `ttft_ms.p99` (a list,
    or comma-separated text); `tolerances`: `output_throughput:5%,ttft_ms.p99:10%`, which also
    judges regressions (added to the last run's recipe's `regression.tolerances`; `recipe`:
    those alone), each against the runs' noise at the recipe's `regression.confidence`."""
    if not refs:
        raise ApiError("compare: name at least one run")
    notes: list[str] = []
    try:
        views = _runs(refs, notes)
        if isinstance(metrics, str):
            keys: list[str] | None = parse_metrics(metrics) if metrics else None
        else:
            keys = parse_metrics(",".join(metrics)) if metrics else None
        own, confidence = _recipe_gate(views[-1])
        recipe = f"the recipe of run {views[-1].run_id}"
        limits = merged_tolerances(tolerances, own, recipe) if tolerances else None
        if keys and limits:
            keys = list(dict.fromkeys([*keys, *limits]))
        comparison = compare_runs(views, keys)
    except CompareError as err:
        raise ApiError(str(err), notes) from None
    judged = judge_metrics(comparison, limits, confidence) if limits else []
    return ComparisonResult(
        comparison=comparison,
        text=format_comparison(comparison),
        tolerances=limits,
        regressions=[j.regression for j in judged if j.counts],
        unchecked=unchecked_metrics(comparison, limits) if limits else [],
        notes=notes,
        judgements=judged,
    )


def _recipe_gate(run: RunView) -> tuple[dict[str, float], float]:
    """The `regression` section of the recipe the run was made with (its summary keeps the
    whole recipe), as `--fail-on-regression` reads it in a session."""
    document = (run.summary.get("recipe") or {}).get("document") or {}
    section = document.get("regression") or {}
    try:
        settings = RegressionSettings.model_validate(section)
    except ValueError:
        return {}, DEFAULT_CONFIDENCE
    return settings.fractions(), settings.confidence


def dashboard(
    report_dir: str | Path = "reports",
    *,
    output: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Path:
    """Builds the reports folder's `index.html` again (or `output`); returns its path. An
    `OSError` says the page could not be written."""
    # deferred: the page inlines the Vega bundle, whose lookup imports altair
    from pytest_aifactory.report.index_html import build_index

    folder = Path(report_dir).expanduser()
    page = Path(output).expanduser() if output is not None else None
    if page is not None and page.is_dir():
        page = page / INDEX_NAME
    try:
        return build_index(folder, page, tolerance)
    except IndexBuildError as err:
        raise ApiError(str(err)) from None
