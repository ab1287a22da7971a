"""What a `postgres` service job runs: a fresh cluster in the job's scratch folder, then the
server itself in the foreground.

    python -m pytest_aifactory.services.kinds.postgres_entry --data DIR --host H --port P \\
        [--bin-dir D] [--user U] [--dbname DB] [-- extra postgres arguments]

The password comes from `AIFACTORY_PG_PASSWORD` (never from the command line, which the job
prints). The server is started with `exec`, so the job's process *is* the postmaster: stopping
the job by its PID stops the database. PostgreSQL refuses to run as root, so when the job runs
as root the folder is handed to the `postgres` account (`AIFACTORY_PG_OS_USER` names another)
and the process drops to it before `initdb`. Logs go to stderr, where the job keeps them.

It uses only the standard library: inside a container image it runs as source text under the
image's own Python, where this package is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

PASSWORD_ENV = "AIFACTORY_PG_PASSWORD"
OS_USER_ENV = "AIFACTORY_PG_OS_USER"
DEFAULT_OS_USER = "postgres"
DEFAULT_MAX_CONNECTIONS = 300
"""Enough for a few client processes with one connection per concurrent worker each."""
_PR_SET_PDEATHSIG = 1

HBA = """\
# written by pytest-aifactory: password (SCRAM) authentication only, over TCP only
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
"""


class EntryError(RuntimeError):
    """Something that stops the server from starting, said plainly for the job's log."""


def _say(message: str) -> None:
    print(f"aifactory postgres: {message}", file=sys.stderr, flush=True)


def find_bin_dir(explicit: str | None = None) -> Path:
    """The folder holding `initdb` and `postgres`: the one given, the newest
    /usr/lib/postgresql/*/bin, then PATH."""
    if explicit:
        path = Path(explicit)
        if not (path / "postgres").is_file():
            raise EntryError(f"{path} has no 'postgres' binary (expected a PostgreSQL bin folder)")
        return path
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: [int(part) if part.isdigit() else 0 for part in Path(p).parts[4].split(".")],
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    raise EntryError("PostgreSQL not found (no /usr/lib/postgresql/*/bin/postgres, none on PATH)")


def _set_parent_death_signal(signum: int) -> None:
    """A change of user clears the parent-death signal, so it is set again afterwards. SIGINT
    is PostgreSQL's fast shutdown: open sessions are ended rather than waited for."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)


def _account() -> pwd.struct_passwd | None:
    """The account the server runs as when started by root; None when not root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(OS_USER_ENV) or DEFAULT_OS_USER
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise EntryError(
            f"running as root, and PostgreSQL refuses root: no account '{name}' to run it as "
            f"(create it, or set {OS_USER_ENV})"
        ) from None


def _drop_to(account: pwd.struct_passwd | None) -> None:
    if account is None:
        return
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)


def _run(argv: list[str], what: str, stdin: str | None = None) -> None:
    """A setup step; its output goes to stderr so the job's log keeps it."""
    done = subprocess.run(
        argv, input=stdin, text=True, stdout=sys.stderr, stderr=sys.stderr, check=False
    )
    if done.returncode != 0:
        raise EntryError(f"{what} failed (exit code {done.returncode}): see the lines above")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def init_cluster(bin_dir: Path, pgdata: Path, user: str, password: str, dbname: str) -> None:
    """initdb with a password-protected superuser, the auth rules, and the benchmark database
    (created in single-user mode, before anything listens)."""
    pwfile = pgdata.parent / ".pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(password + "\n")
        _run(
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(pgdata),
                "--username",
                user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    (pgdata / "pg_hba.conf").write_text(HBA, encoding="utf-8")
    with (pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            "\n# pytest-aifactory\n"
            "unix_socket_directories = ''\n"
            "password_encryption = 'scram-sha-256'\n"
            f"max_connections = {DEFAULT_MAX_CONNECTIONS}\n"
            "logging_collector = off\n"
            "log_destination = 'stderr'\n"
        )
    if dbname != "postgres":
        _run(
            [str(bin_dir / "postgres"), "--single", "-D", str(pgdata), "postgres"],
            f"creating database {dbname}",
            stdin=f"CREATE DATABASE {_quote_ident(dbname)};\n",
        )


def prepare_folder(scratch: Path, account: pwd.struct_passwd | None) -> Path:
    """`scratch/pgdata`, the folder handed to the server's account when that is not us."""
    scratch.mkdir(parents=True, exist_ok=True)
    if account is not None:
        os.chown(scratch, account.pw_uid, account.pw_gid)
        probe = subprocess.run(
            ["test", "-w", str(scratch), "-a", "-x", str(scratch)],
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            check=False,
        )
        if probe.returncode != 0:
            raise EntryError(
                f"account '{account.pw_name}' cannot reach {scratch} (a folder above it is "
                "private to root): give the service a scratch folder under a public one such "
                "as /tmp"
            )
    pgdata = scratch / "pgdata"
    if pgdata.exists():
        raise EntryError(f"{pgdata} already exists: a service needs a fresh scratch folder")
    return pgdata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postgres_entry", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="scratch folder for the cluster")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--bin-dir", default=None)
    parser.add_argument("--user", default="aifactory")
    parser.add_argument("--dbname", default="aifactory")
    parser.add_argument("extra", nargs="*", help="passed on to postgres (after --)")
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV, "")
    try:
        if not password:
            raise EntryError(f"{PASSWORD_ENV} is not set: the server would have no password")
        bin_dir = find_bin_dir(args.bin_dir)
        account = _account()
        pgdata = prepare_folder(Path(args.data), account)
        _drop_to(account)
        _set_parent_death_signal(signal.SIGINT)
        _say(f"initdb in {pgdata} with {bin_dir}")
        init_cluster(bin_dir, pgdata, args.user, password, args.dbname)
    except (EntryError, OSError) as err:
        _say(str(err))
        return 1
    os.environ.pop(PASSWORD_ENV, None)
    server = [
        str(bin_dir / "postgres"),
        "-D",
        str(pgdata),
        "-c",
        f"listen_addresses={args.host}",
        "-p",
        str(args.port),
        *args.extra,
    ]
    _say(f"exec {' '.join(server)}")
    os.execv(server[0], server)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
