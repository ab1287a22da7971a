"""Another user on the same node, for tests of what a run lets other accounts do.

On a cluster, login and compute nodes are shared: whatever a run starts or writes is within
reach of every other account there. Tests act as such an account, a local unprivileged one,
and try to get in. Switching accounts needs root (CI runs as root); the account is created on
first use and has no home folder and no login shell.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

OTHER_USER_NAME = "aifactory-other"
SYSTEM_PYTHON = "/usr/bin/python3"
"""The other account cannot read the benchmarking user's virtual environment (a home folder of
mode 0700, as on clusters): its attempts are written against the standard library only."""


class OtherUserUnavailable(RuntimeError):
    """Acting as another account needs root, and `useradd` when the account is missing."""


@dataclass(frozen=True)
class OtherUser:
    name: str
    uid: int
    gid: int

    def run(
        self, argv: list[str], timeout_s: float = 30.0, cwd: str | Path = "/"
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` as this account, with an environment of its own (no variable of ours,
        no proxy, no key leaks in through inheritance)."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
        return subprocess.run(
            argv,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def python(self, code: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a standard-library Python snippet as this account."""
        return self.run([SYSTEM_PYTHON, "-c", code], timeout_s=timeout_s)


def other_user() -> OtherUser:
    """The account, created if missing."""
    if os.geteuid() != 0:
        raise OtherUserUnavailable("acting as another account needs root")
    try:
        entry = pwd.getpwnam(OTHER_USER_NAME)
    except KeyError:
        made = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                OTHER_USER_NAME,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            raise OtherUserUnavailable(
                f"useradd {OTHER_USER_NAME} failed: {made.stderr.strip()}"
            ) from None
        entry = pwd.getpwnam(OTHER_USER_NAME)
    return OtherUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
