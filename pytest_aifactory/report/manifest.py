"""A run's manifest: the sha256 of each data file, signed with the user's key (`signing.py`).

Written last, once every data file is in place, and checked whenever a run is taken as a
baseline: a gate never judges against a run whose numbers were altered or torn after it was
written (a partial copy, a hand edit, a disk error), nor against one another account planted
beside the user's runs, which could recompute a plain hash but cannot sign.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pytest_aifactory.atomic import write_json_atomic
from pytest_aifactory.report.signing import (
    ALGORITHM,
    SigningError,
    key_id,
    ownership_problem,
    sign,
    signature_matches,
    signing_key,
)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 2
"""1: a plain hash anyone could write (older versions); 2: signed."""
DATA_FILES: tuple[str, ...] = (
    "summary.json",
    "records.parquet",
    "metrics.parquet",
    "benchmark.json",
)
"""The files a run's numbers come from (reports and logs are derived or informative)."""
REQUIRED_FILE = "summary.json"
_CHUNK = 1 << 20
NOT_A_BASELINE = "a run someone else could have written is never a baseline"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _payload(manifest: dict[str, Any]) -> bytes:
    """What the signature covers: the manifest without its signature, in one spelling."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_command(root: Path) -> str:
    return f"`aifactory sign {root}`"


def write_manifest(root: Path) -> Path:
    """Record and sign the data files present in `root` now (atomically: a reader sees the old
    manifest or the new one, never half of one). Only a folder of this user's that nobody
    else can write is signed: signing vouches for its content."""
    problem = ownership_problem(root, "refusing to sign its data")
    if problem:
        raise SigningError(problem)
    key = signing_key()
    files: dict[str, Any] = {}
    for name in DATA_FILES:
        path = root / name
        if path.is_file():
            files[name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": files}
    manifest["signature"] = {
        "algorithm": ALGORITHM,
        "key_id": key_id(key),
        "value": sign(_payload(manifest), key),
    }
    target = root / MANIFEST_FILE
    write_json_atomic(target, manifest, indent=2, durable=True)
    return target


def remove_manifest(root: Path) -> None:
    """Before a run's data files are written again: until the new manifest is signed the run
    reads as unsigned, never as signed-but-changed."""
    (root / MANIFEST_FILE).unlink(missing_ok=True)


def _read(root: Path) -> tuple[dict[str, Any] | None, str]:
    path = root / MANIFEST_FILE
    unsigned = (
        "unsigned: the session ended before signing it, or a version before signing wrote it; "
        f"if the run is yours and unchanged, {sign_command(root)} signs it"
    )
    if not path.is_file():
        return None, f"{root}: no {MANIFEST_FILE}, {unsigned}"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"{path}: unreadable manifest ({err})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, f"{path}: not a run manifest"
    if not isinstance(manifest.get("signature"), dict):
        return None, f"{path}: {unsigned}"
    return manifest, ""


def changed_files(root: Path, manifest: dict[str, Any], unlisted: bool = True) -> list[str]:
    """Each data file that no longer matches `manifest` (`unlisted`: or that it does not
    list), named."""
    problems = []
    files: dict[str, Any] = manifest["files"]
    for name, entry in files.items():
        if name not in DATA_FILES:  # never a path to follow out of the run folder
            problems.append(f"{root / MANIFEST_FILE}: lists {name!r}, not a data file of a run")
            continue
        data = root / name
        if not data.is_file():
            problems.append(f"{data}: listed in {MANIFEST_FILE} but missing")
            continue
        actual = sha256_of(data)
        expected = str(entry.get("sha256") if isinstance(entry, dict) else entry)
        if actual != expected:
            problems.append(
                f"{data}: changed since the run wrote it (sha256 {actual[:12]}..., "
                f"manifest says {expected[:12]}...)"
            )
    if not unlisted:
        return problems
    for name in DATA_FILES:
        if name not in files and (root / name).is_file():
            problems.append(f"{root / name}: not in {MANIFEST_FILE} (added after it was signed)")
    if REQUIRED_FILE not in files and not (root / REQUIRED_FILE).is_file():
        problems.append(f"{root}: no {REQUIRED_FILE}")
    return problems


def verify_run(root: Path) -> list[str]:
    """Why the run in `root` cannot be trusted as a baseline, each reason naming the folder or
    file ([] when it can): it must be this user's, closed to others, with a manifest signed by
    this user's key that matches every data file."""
    problem = ownership_problem(root, NOT_A_BASELINE)
    if problem:
        return [problem]
    manifest, problem = _read(root)
    if manifest is None:
        return [problem]
    signature = manifest["signature"]
    try:
        key = signing_key()
    except SigningError as err:
        return [f"{root}: cannot check its signature: {err}"]
    if signature.get("key_id") != key_id(key) or not signature_matches(
        _payload(manifest), str(signature.get("value") or ""), key
    ):
        other_key = signature.get("key_id") != key_id(key)
        why = (
            "signed with another key (another account's, or an earlier state folder's)"
            if other_key
            else "its signature does not match (edited after it was signed)"
        )
        return [f"{root / MANIFEST_FILE}: {why}"]
    return changed_files(root, manifest)


def has_signature(root: Path) -> bool:
    """Whether the run's manifest is a signed one (whether or not it verifies)."""
    return _read(root)[0] is not None


def unsigned_manifest_problems(root: Path) -> list[str]:
    """For signing a run that has none: what a plain (format 1) manifest already there says
    changed since; [] when there is none or it still matches."""
    path = root / MANIFEST_FILE
    if not path.is_file():
        return []
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no files listed")
    except (OSError, ValueError, AttributeError) as err:
        return [f"{path}: unreadable manifest ({err})"]
    return changed_files(root, manifest, unlisted=False)
