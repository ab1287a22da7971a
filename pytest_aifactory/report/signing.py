"""The user's key for signing run manifests, and the checks of who may have written a folder.

A baseline decides whether CI passes, and reports folders are often shared (a project folder
on Lustre, a 0777 scratch folder): a hash anyone can recompute proves nothing about who wrote
a run. Manifests are therefore signed with HMAC-SHA256 under a key only this user can read,
kept in the per-user state folder (never beside the runs, which get copied and shared). A run
signed with it was written by this user's sessions, or vouched for by them (`aifactory sign`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pwd
import secrets
import stat
import tempfile
from pathlib import Path

from pytest_aifactory.cluster.run_records import state_dir

KEY_FILE = "signing.key"
KEY_BYTES = 32
ALGORITHM = "hmac-sha256"


class SigningError(Exception):
    """The key cannot be made or trusted; the message names the file and what is wrong."""


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def ownership_problem(path: Path, what: str) -> str:
    """Why `path` cannot be trusted as written by this user only ("" when it can): it must be
    this user's and closed to everyone else (no group or other permission bits)."""
    try:
        info = path.stat()
    except OSError as err:
        return f"{path}: cannot be read ({err.strerror or err})"
    if info.st_uid != os.geteuid():
        return f"{path}: owned by {owner_name(info.st_uid)}, not by you: {what}"
    if stat.S_IMODE(info.st_mode) & 0o077:
        return (
            f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others change it: {what} "
            f"(must be 0700/0600)"
        )
    return ""


def key_path() -> Path:
    return state_dir() / KEY_FILE


def _private_state_dir() -> Path:
    folder = state_dir()
    with contextlib.suppress(FileExistsError):
        folder.mkdir(parents=True, mode=0o700)
    with contextlib.suppress(OSError):  # made open by an older version (the run index's folder)
        if folder.stat().st_uid == os.geteuid():
            folder.chmod(0o700)
    problem = ownership_problem(folder, "the signing key cannot be kept there")
    if problem:
        raise SigningError(problem)
    return folder


def _create_exclusive(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def signing_key() -> bytes:
    """This user's key, made on first use (0600 in a 0700 folder); a key file that another
    account owns or could have written is refused, not used."""
    folder = _private_state_dir()
    path = key_path()
    if not path.exists():
        # written whole under a private name, then linked into place: a concurrent first use
        # sees no key or the whole key, and exactly one of the two keys wins
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{KEY_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                try:
                    os.link(tmp, path)
                except PermissionError:  # a file system without hard links
                    _create_exclusive(path, Path(tmp).read_text())
        finally:
            os.unlink(tmp)
    problem = ownership_problem(path, "refusing to sign or verify runs with it")
    if problem:
        raise SigningError(problem)
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise SigningError(f"{path}: unreadable signing key ({err})") from None
    if len(key) < KEY_BYTES:
        raise SigningError(f"{path}: signing key too short; remove the file to make a new one")
    return key


def key_id(key: bytes) -> str:
    """Names the key in a manifest without revealing it: a run signed by another user's key
    (or before the state folder moved) is told apart from one that was edited."""
    return hashlib.sha256(b"pytest-aifactory key id\0" + key).hexdigest()[:16]


def sign(payload: bytes, key: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def signature_matches(payload: bytes, signature: str, key: bytes) -> bool:
    return hmac.compare_digest(sign(payload, key), signature)
