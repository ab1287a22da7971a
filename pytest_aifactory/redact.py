"""Keeps secrets out of everything a run shows or writes: log copies, log tails, summaries.

Two nets, because neither is enough alone. Known values (the recipe's keys and tokens, the
driver's own `HF_TOKEN`...) are hidden wherever they appear, whatever surrounds them. Patterns
catch secrets whose value nobody told us: `--api-key X`, `Authorization: Bearer X`,
`HF_TOKEN=X`, `"password": "X"`, `https://user:X@host`. Every pattern is a compiled regular
expression that scans each position a bounded number of times, so a large log costs time in
proportion to its size.

Names are judged by their words (`HF_TOKEN` -> hf, token; `maxTokens` -> max, tokens): a name is
secret when it ends in a key, token, JWT, secret, pass, PWD, password or credential word
(`SLURM_JWT`, `MYSQL_PWD`, `--db-pass`), or has a password, secret or credential word anywhere
(`PGPASSWORD`). So `max_tokens: 64`, `eos_token_id = 2` and
`tokenizer=llama` stay as they are, while `api_key=...` and `HUGGING_FACE_HUB_TOKEN=...` do not.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe

MASK = "***"
ENV_KEY = "env"
"""The key of a service's (or client's) environment in recipes and what is saved of them."""
MIN_SECRET_LENGTH = 4
"""Shorter known values would turn common words and numbers into masks all over a log."""

_SECRET_WORD = re.compile(
    r"(?:api|access|auth|bearer|client|hf|master|private|refresh|secret|session|db)?"
    r"(?:keys?|token|secrets?|passwords?|passwd|pass|pwd|jwt|credentials?)",
)
"""The last word of a secret name; `tokens` (a count) is not one, and `key` or `token` inside
a name (`eos_token_id`, `num_key_value_heads`) says nothing of its value."""
_STRONG_WORD = re.compile(r"[a-z0-9]*(?:secrets?|passwords?|passwd|credentials?)")
"""Words that make a name secret wherever they stand in it (`DB_PASSWORD_VALUE`), also run
together with another (`PGPASSWORD`)."""
_LONE_WORDS = (["key"], ["keys"], ["pwd"], ["pass"])
"""Names that are secret only with another word: a bare `key` names a lookup key
(`slo[].key`), `PWD` the shell's working folder, `pass` a test outcome."""
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_HARMLESS_VALUE = re.compile(r"(?i)(?:true|false|none|null|yes|no|on|off|[-+]?\d+(?:\.\d+)?)")
"""Values a secret-named setting can take that are no secret (`num_key_value_heads=8`)."""

_URL_USERINFO = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*://[^\s/:@]+:)[^\s/@]+@")
_AUTHORIZATION = re.compile(
    r"(?i)(\b(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*[\"']?)"
    r"(?:(basic|bearer|token|digest)[ \t]+)?([^\s\"',]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer[ \t]+)[A-Za-z0-9._~+/=-]+")
_FLAG = re.compile(r"(?<![\w-])(?P<name>--?[A-Za-z][\w-]*)(?:=|[ \t]+)")
_ASSIGNMENT = re.compile(
    r"(?P<quote>[\"']?)(?<![\w.-])(?P<name>[A-Za-z_][\w.-]*)(?P=quote)[ \t]*[:=][ \t]*"
)
"""A flag or a name with what joins it to its value; the value is read only after a secret
name (`_VALUE`), so a value that is no secret is still searched for the next `name=value`
(`tool: HF_TOKEN=x`, `--verbose --api-key x`) and no part of the text is read twice."""
_VALUE = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|[^\s\"',;&{}[\]()]+")


def looks_secret(name: str) -> bool:
    """Whether a setting, variable, flag or key of this name holds a secret."""
    words = [word.lower() for word in _WORDS.findall(name)]
    if not words or words in _LONE_WORDS:
        return False
    return bool(_SECRET_WORD.fullmatch(words[-1])) or any(
        _STRONG_WORD.fullmatch(word) for word in words
    )


def worth_hiding(value: str) -> bool:
    """Known values that can be replaced without turning ordinary text into masks."""
    value = value.strip()
    return (
        len(value) >= MIN_SECRET_LENGTH and value != MASK and not _HARMLESS_VALUE.fullmatch(value)
    )


def worth_masking(value: str) -> bool:
    """A value found next to a secret name: anything but empty, already masked or harmless."""
    value = value.strip()
    return bool(value) and value != MASK and not _HARMLESS_VALUE.fullmatch(value)


def _masked(value: str) -> str:
    """The value with its quotes kept, so the line still reads as it was written."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        return value if not worth_masking(inner) else f"{value[0]}{MASK}{value[0]}"
    return MASK if worth_masking(value) else value


def _flag_value(flag: re.Match[str], value: str) -> bool:
    # `--api-key --port 80`: a flag without its value is followed by the next flag
    return flag.group(0).endswith("=") or not value.startswith("-")


def _any_value(name: re.Match[str], value: str) -> bool:
    return True


def _mask_values(
    pattern: re.Pattern[str], s: str, is_value: Callable[[re.Match[str], str], bool]
) -> str:
    """Mask the value after each secret name `pattern` finds, in one pass over `s`."""
    parts: list[str] = []
    done = 0
    for name in pattern.finditer(s):
        if name.start() < done or not looks_secret(name["name"]):
            continue  # inside a value already masked, or no secret
        value = _VALUE.match(s, name.end())
        if value is None or not is_value(name, value.group(0)):
            continue
        parts += [s[done : value.start()], _masked(value.group(0))]
        done = value.end()
    return "".join([*parts, s[done:]]) if parts else s


def _env_masked(env: Mapping[Any, Any]) -> dict[Any, Any]:
    """A recipe's `env` is where its credentials go under names nobody can foresee
    (`APP_CONN`, `DSN`): its values are all masked, its names kept."""
    return {name: MASK if value not in (None, "") else value for name, value in env.items()}


def _authorization(match: re.Match[str]) -> str:
    prefix, scheme, _ = match.groups()
    return f"{prefix}{scheme} {MASK}" if scheme else f"{prefix}{MASK}"


def secrets_from_env(env: Mapping[str, str]) -> list[str]:
    """Values of the variables whose names say they are secret (`HF_TOKEN`, `DB_PASSWORD`)."""
    return [value for name, value in env.items() if looks_secret(name) and worth_hiding(value)]


def secrets_from_args(args: Iterable[str]) -> list[str]:
    """Values given to secret flags on a command line: `--api-key X` and `--api-key=X`."""
    found: list[str] = []
    pending = False
    for arg in args:
        if pending and not arg.startswith("--"):
            found.append(arg)
        pending = False
        if arg.startswith("-"):
            flag, eq, value = arg.partition("=")
            if looks_secret(flag):
                if eq:
                    found.append(value)
                else:
                    pending = True
    return [value for value in found if worth_hiding(value)]


def api_key_flags(args: Iterable[str]) -> list[tuple[str, str]]:
    """(flag, value) of each `--api-key X` / `--api-key=X` on a command line, empty values
    included: what a server would take as its key."""
    found: list[tuple[str, str]] = []
    argv = list(args)
    for index, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag != "--api-key":
            continue
        if eq:
            found.append((flag, value))
        elif index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            found.append((flag, argv[index + 1]))
        else:
            found.append((flag, ""))
    return found


class Redactor:
    """Replaces secrets with `***` in text, lines and JSON-like data."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._known: re.Pattern[str] | None = None
        for value in secrets:
            self.add(value)

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset(self._secrets)

    def add(self, value: str | None) -> None:
        """Hide this value from now on; too short or harmless values are ignored."""
        if value is None or not worth_hiding(value):
            return
        value = value.strip()
        if value not in self._secrets:
            self._secrets.add(value)
            self._known = None

    def _known_pattern(self) -> re.Pattern[str] | None:
        if self._known is None and self._secrets:
            # longest first: a secret that contains another is hidden whole
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._known = re.compile("|".join(re.escape(value) for value in ordered))
        return self._known

    def text(self, s: str) -> str:
        known = self._known_pattern()
        if known is not None:
            s = known.sub(MASK, s)
        s = _URL_USERINFO.sub(rf"\1{MASK}@", s)
        s = _AUTHORIZATION.sub(_authorization, s)
        s = _BEARER.sub(rf"\1{MASK}", s)
        s = _mask_values(_FLAG, s, _flag_value)
        return _mask_values(_ASSIGNMENT, s, _any_value)

    def lines(self, lines: Iterable[str]) -> list[str]:
        return [self.text(line) for line in lines]

    def data(self, obj: Any) -> Any:
        """A copy of JSON-like data with secret-named keys' values and every value of an `env`
        mapping masked, and every string redacted; in a list, the value after a secret flag
        (`["--api-key", "X"]`) is masked."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, Mapping):
            return {
                key: self._masked_all(value)
                if isinstance(key, str) and looks_secret(key)
                else _env_masked(value)
                if key == ENV_KEY and isinstance(value, Mapping)
                else self.data(value)
                for key, value in obj.items()
            }
        if isinstance(obj, list | tuple):
            out: list[Any] = []
            after_flag = False
            for item in obj:
                if after_flag and isinstance(item, str) and not item.startswith("--"):
                    out.append(_masked(item))
                else:
                    out.append(self.data(item))
                after_flag = (
                    isinstance(item, str)
                    and item.startswith("-")
                    and "=" not in item
                    and looks_secret(item)
                )
            return out
        return obj

    def _masked_all(self, obj: Any) -> Any:
        """Everything under a secret name is secret; numbers and booleans say nothing."""
        if isinstance(obj, str):
            return _masked(obj)
        if isinstance(obj, Mapping):
            return {key: self._masked_all(value) for key, value in obj.items()}
        if isinstance(obj, list | tuple):
            return [self._masked_all(item) for item in obj]
        return obj


def run_redactor(recipe: Recipe, env: Mapping[str, str] | None = None) -> Redactor:
    """Every secret a run knows of: its services' secret variables and flags, its clients' API
    keys, and the secret variables of the driver's own environment (`env`, default: this
    process's), which jobs inherit and may print."""
    redactor = Redactor(secrets_from_env(os.environ if env is None else env))
    for service in recipe.services.values():
        for value in secrets_from_env(service.env):
            redactor.add(value)
        argv = list(service.args)
        if service.command:
            try:
                argv = [*shlex.split(service.command), *argv]
            except ValueError:
                argv = [*service.command.split(), *argv]
        for value in secrets_from_args(argv):
            redactor.add(value)
    for client in recipe.clients.values():
        for name in ("api_key", "token"):
            credential = getattr(client, name, None)
            if isinstance(credential, str):
                redactor.add(credential)
    return redactor
