"""Multi-turn conversations read, for the `conversation` dataset: from ShareGPT (every human
turn, with the recorded reply that followed it) or from a user's JSONL or Parquet file.

Only the user messages are sent as they are: the replies a session carries forward are the
server's own, so a recorded reply is used only for its length (the tokens a turn asks for). A
file's line or row gives `turns` (the user messages) or `messages` (a chat whose user messages
are the turns; a system message leads every request of the session, assistant messages are
left out) and may give `output_tokens`, one count for every turn or a list with one per turn.
The recipe's checks and the client job read a file with the same code, so a mistake is named
with its file, line or row and key before any job starts. Only the standard library (and
pyarrow, for Parquet) is needed: the driver imports this.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_aifactory.loadgen.llm_datasets.row_files import jsonl_rows, parquet_rows
from pytest_aifactory.loadgen.llm_datasets.sharegpt_source import (
    ShareGPTError,
    parse_items,
    read_text,
)

FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}
TURN_KEYS = ("turns", "messages")
MAX_PROBLEMS = 10
"""Problems reported of one file: the first ones show what is wrong."""
SHAREGPT_ASKS = frozenset({"human", "user"})
SHAREGPT_ANSWERS = frozenset({"gpt", "assistant", "chatgpt", "bing", "bard"})
MIN_SHAREGPT_TURNS = 2
"""ShareGPT conversations with fewer human turns (each with its reply) are left out: a single
exchange is what the `sharegpt` kind sends."""


@dataclass(frozen=True)
class Dialogue:
    """One conversation as sent: its user messages, the recorded replies' texts (ShareGPT:
    their lengths are what each turn asks for), or the file's own counts per turn."""

    turns: tuple[str, ...]
    system: str | None = None
    replies: tuple[str, ...] | None = None
    output_tokens: tuple[int, ...] | None = None


class ConversationFileError(ValueError):
    """A conversation file that cannot be used; `problems` names each mistake's line or row and
    key."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


# -- ShareGPT ----------------------------------------------------------------------------------


def _role(turn: object) -> tuple[str, str] | None:
    if not isinstance(turn, dict):
        return None
    role, text = turn.get("from"), turn.get("value")
    if not isinstance(role, str) or not isinstance(text, str):
        return None
    return role.lower(), text


def sharegpt_dialogue(entry: object) -> Dialogue | None:
    """A ShareGPT conversation's exchanges (a human turn, then its reply), from its first human
    turn to the first turn out of that order; None when it has fewer than two."""
    turns = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(turns, list):
        return None
    roles = [_role(turn) for turn in turns]
    asking = (i for i, role in enumerate(roles) if role is not None and role[0] in SHAREGPT_ASKS)
    index = next(asking, len(roles))
    asks: list[str] = []
    replies: list[str] = []
    while index + 1 < len(roles):
        ask, answer = roles[index], roles[index + 1]
        if ask is None or answer is None:
            break
        if ask[0] not in SHAREGPT_ASKS or answer[0] not in SHAREGPT_ANSWERS:
            break
        if not ask[1].strip():
            break
        asks.append(ask[1])
        replies.append(answer[1])
        index += 2
    if len(asks) < MIN_SHAREGPT_TURNS:
        return None
    return Dialogue(tuple(asks), replies=tuple(replies))


@functools.lru_cache(maxsize=2)
def read_sharegpt_dialogues(path: Path) -> tuple[tuple[Dialogue, ...], bool]:
    """Every conversation of at least two exchanges, in file order (kept for the process: each
    level of a client job walks the same list), and whether the file was whole."""
    text = read_text(path)
    try:
        dialogues, whole = parse_items(text, sharegpt_dialogue)
    except ShareGPTError as err:
        raise ShareGPTError(f"{path}: {err}") from None
    return tuple(dialogues), whole


# -- a user's file -----------------------------------------------------------------------------


def _texts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of user messages (text)")
    for index, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"turn {index}: expected a non-empty text")
    return tuple(value)


def _chat(value: Any) -> tuple[tuple[str, ...], str | None]:
    """The user messages of a chat and its system message (several are joined)."""
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of {role, content}")
    turns: list[str] = []
    system: list[str] = []
    for index, message in enumerate(value):
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise ValueError(f"message {index}: expected {{role: text, content: text}}")
        role, content = message["role"], message["content"]
        if role == "user":
            turns.append(content)
        elif role == "system":
            system.append(content)
        elif role != "assistant":
            raise ValueError(f"message {index}: role '{role}' (expected user, assistant or system)")
    if not turns:
        raise ValueError("holds no user message (the user messages are the turns)")
    return tuple(turns), "\n".join(system) if system else None


def _counts(value: Any, turns: int) -> tuple[int, ...]:
    """One count per turn, from one count for all or a list of them."""
    values = value if isinstance(value, list) else [value] * turns
    if isinstance(value, list) and len(value) != turns:
        raise ValueError(f"expected {turns} counts (one per turn), got {len(value)}")
    for count in values:
        if isinstance(count, bool) or not isinstance(count, int | float):
            raise ValueError(f"expected whole numbers, got {count!r}")
        if not float(count).is_integer() or count < 1:
            raise ValueError(f"expected whole numbers of at least 1, got {count!r}")
    return tuple(int(count) for count in values)


def parse_conversation(row: Mapping[str, Any]) -> tuple[Dialogue | None, str]:
    """A row as a conversation, or None and what is wrong with it (its key named)."""
    has = [key for key in TURN_KEYS if row.get(key) is not None]
    if len(has) != 1:
        what = "both" if has else "neither"
        return None, f"give turns (user messages) or messages (a chat), not {what}"
    key = has[0]
    system = None
    try:
        if key == "turns":
            turns = _texts(row[key])
        else:
            turns, system = _chat(row[key])
    except ValueError as err:
        return None, f"key '{key}': {err}"
    counts = None
    if row.get("output_tokens") is not None:
        try:
            counts = _counts(row["output_tokens"], len(turns))
        except ValueError as err:
            return None, f"key 'output_tokens': {err}"
    return Dialogue(turns, system, output_tokens=counts), ""


def read_conversations(path: Path) -> tuple[list[Dialogue], list[str]]:
    """The file's conversations and its problems (at most MAX_PROBLEMS, each with its line or
    row)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        return [], ["expected a .jsonl or .parquet file of conversations"]
    rows = (
        jsonl_rows(path, " with turns or messages")
        if kind == "jsonl"
        else parquet_rows(path, TURN_KEYS)
    )
    dialogues: list[Dialogue] = []
    problems: list[str] = []
    try:
        for where, raw, problem in rows:
            if raw is not None:
                dialogue, problem = parse_conversation(raw)
                if dialogue is not None:
                    dialogues.append(dialogue)
            if problem:
                problems.append(f"{where}: {problem}")
                if len(problems) >= MAX_PROBLEMS:
                    break
    except FileNotFoundError:
        return [], ["no such file"]
    except (OSError, UnicodeDecodeError) as err:
        return [], [f"cannot read: {err}"]
    if not dialogues and not problems:
        problems.append("holds no conversations")
    return dialogues, problems


def check_conversation_file(path: Path) -> list[str]:
    """What is wrong with a conversation file (nothing: an empty list)."""
    return read_conversations(path)[1]


def load_conversations(path: Path) -> list[Dialogue]:
    dialogues, problems = read_conversations(path)
    if problems:
        raise ConversationFileError(path, problems)
    return dialogues
