"""YAML that remembers where each key was written, so a recipe error can name its line.

`yaml.safe_load` forgets positions; composing the node graph keeps them. Only plain data is
built (mappings, lists, strings, numbers, booleans, null): a recipe has no use for dates, binary
or Python objects, so other tags are problems, and the YAML 1.1 surprises that bite recipes are
avoided: `time_limit: 01:00:00` is the string it looks like, not the sexagesimal number 3600, and
a date stays the text that was written. Keys are always the text that was written (`8:` is the
key "8"), so every key path is made of strings and list indices, like pydantic's error locations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

KeyPath = tuple[str | int, ...]

MAX_VALUES = 100_000
"""Aliases can expand a short file into a huge document; a recipe never needs this many values."""

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + "str", _TAG + "timestamp"}
_NUMBER_TAGS = {_TAG + "int", _TAG + "float"}


class YamlSyntaxError(Exception):
    """The text is not YAML (or not a YAML document a recipe can be)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class YamlProblem:
    """A mistake found while building the data: the document is still usable around it."""

    path: KeyPath
    line: int | None
    message: str


@dataclass
class LocatedDocument:
    """The document's data plus the 1-based line of every key and list item in it."""

    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    problems: list[YamlProblem] = field(default_factory=list)

    def line_of(self, path: KeyPath) -> int | None:
        """Line of `path`, or of the nearest enclosing key when `path` itself was not written
        (a missing required key is reported where its parent mapping is)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


class _TooLarge(Exception):
    pass


class _Builder:
    def __init__(self) -> None:
        self.constructor = SafeConstructor()
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[YamlProblem] = []
        self.active: set[int] = set()
        self.budget = MAX_VALUES
        self.scalars: dict[str, Callable[[ScalarNode], Any]] = {
            _TAG + "null": self.constructor.construct_yaml_null,
            _TAG + "bool": self.constructor.construct_yaml_bool,
            _TAG + "int": self.constructor.construct_yaml_int,
            _TAG + "float": self.constructor.construct_yaml_float,
        }

    def problem(self, path: KeyPath, node: Node, message: str) -> None:
        self.problems.append(YamlProblem(path, node.start_mark.line + 1, message))

    def build(self, node: Node, path: KeyPath) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooLarge
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.problem(path, node, "an alias refers to a value that contains it")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.mapping(node, path)
            if isinstance(node, SequenceNode):
                return self.sequence(node, path)
            raise TypeError(f"a YAML node of an unknown class: {type(node).__name__}")
        finally:
            self.active.discard(id(node))

    def scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        text = node.value
        if node.tag in _PLAIN_TAGS or (node.tag in _NUMBER_TAGS and ":" in text):
            return text
        construct = self.scalars.get(node.tag)
        if construct is None:
            self.problem(path, node, f"YAML tag {node.tag} is not supported in a recipe")
            return text
        try:
            return construct(node)
        except (ValueError, ArithmeticError, yaml.YAMLError):
            return text

    def sequence(self, node: SequenceNode, path: KeyPath) -> list[Any]:
        if node.tag != _TAG + "seq":
            self.problem(path, node, f"YAML tag {node.tag} is not supported in a recipe")
        items = []
        for index, item in enumerate(node.value):
            self.lines.setdefault((*path, index), item.start_mark.line + 1)
            items.append(self.build(item, (*path, index)))
        return items

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        if node.tag != _TAG + "map":
            self.problem(path, node, f"YAML tag {node.tag} is not supported in a recipe")
        self.check_duplicates(node, path)
        try:
            self.constructor.flatten_mapping(node)  # `<<: *anchor` merge keys
        except ConstructorError as err:
            self.problem(path, node, f"cannot merge: {err.problem}")
            node.value = [(k, v) for k, v in node.value if k.tag != _TAG + "merge"]
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(path, key_node, "a key must be plain text, not a list or mapping")
                continue
            key = key_node.value
            # merged keys come first and explicit ones override them: the last line wins
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key))
        return result

    def check_duplicates(self, node: MappingNode, path: KeyPath) -> None:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _TAG + "merge":
                continue
            key = key_node.value
            if key in seen:
                self.problem(
                    (*path, key),
                    key_node,
                    f"duplicate key '{key}' (first written at line {seen[key]})",
                )
            else:
                seen[key] = key_node.start_mark.line + 1


def _syntax_message(err: yaml.MarkedYAMLError) -> str:
    problem, context = err.problem, err.context
    if not problem or not context:
        return f"YAML syntax error: {problem or context or 'invalid YAML'}"
    if not context.startswith("while"):  # e.g. "expected a single document in the stream"
        return f"YAML syntax error: {context}, {problem}"
    mark, problem_mark = err.context_mark, err.problem_mark
    if mark is not None and (problem_mark is None or mark.line != problem_mark.line):
        context += f" at line {mark.line + 1}"
    return f"YAML syntax error: {problem} ({context})"


def load_located(text: str) -> LocatedDocument:
    """Parse one YAML document; raises `YamlSyntaxError` when there is no document to check."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise YamlSyntaxError(_syntax_message(err), mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        raise YamlSyntaxError(
            f"YAML syntax error: character {err.character!r} is not allowed", line
        ) from None
    except yaml.YAMLError as err:
        raise YamlSyntaxError(f"YAML syntax error: {err}", None) from None
    except RecursionError:
        raise YamlSyntaxError("YAML syntax error: nested too deeply", None) from None
    if root is None:
        return LocatedDocument(data=None, lines={(): 1})
    builder = _Builder()
    builder.lines[()] = root.start_mark.line + 1
    try:
        data = builder.build(root, ())
    except _TooLarge:
        raise YamlSyntaxError(
            f"the document expands to more than {MAX_VALUES} values (aliases?)", None
        ) from None
    except RecursionError:
        raise YamlSyntaxError("the document is nested too deeply", None) from None
    return LocatedDocument(data=data, lines=builder.lines, problems=builder.problems)
