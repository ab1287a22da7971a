"""Prometheus's database lives on the node's local disk while it runs (Prometheus does not
support NFS or Lustre) and is copied into the run, whole, once Prometheus has stopped."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_aifactory.cluster.local_disk import file_system_type, local_base, private_local_dir
from pytest_aifactory.monitor.prometheus_job import copy_database

MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
10.0.0.1@o2ib:/scratch /project/scratch lustre rw,flock 0 0
nfs1:/home /home nfs4 rw,vers=4.2 0 0
/dev/nvme0n1 /local\\040disk xfs rw 0 0
"""


@pytest.fixture
def mounts(tmp_path: Path) -> Path:
    path = tmp_path / "mounts"
    path.write_text(MOUNTS)
    return path


def test_the_file_system_of_a_folder_is_its_deepest_mount(mounts: Path) -> None:
    assert file_system_type(Path("/project/scratch/p1/me"), mounts) == "lustre"
    assert file_system_type(Path("/project"), mounts) == "ext4"
    assert file_system_type(Path("/home/me"), mounts) == "nfs4"
    assert file_system_type(Path("/homestead"), mounts) == "ext4"
    assert file_system_type(Path("/local disk/job"), mounts) == "xfs"


def test_a_tmpdir_on_shared_storage_is_passed_over(
    mounts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lustre = tmp_path / "lustre-like"
    lustre.mkdir()
    mounts.write_text(MOUNTS + f"mds:/fs {lustre} lustre rw 0 0\n")
    monkeypatch.setenv("TMPDIR", str(lustre))
    assert local_base(mounts) == Path("/tmp")
    local = tmp_path / "local"
    local.mkdir()
    monkeypatch.setenv("TMPDIR", str(local))
    assert local_base(mounts) == local


def test_the_local_folder_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    folder = private_local_dir("aifactory-prometheus-")
    assert folder.parent == tmp_path
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def database(folder: Path) -> Path:
    (folder / "wal").mkdir(parents=True)
    (folder / "wal" / "00000000").write_bytes(b"wal" * 1000)
    (folder / "chunks_head").mkdir()
    (folder / "chunks_head" / "000001").write_bytes(b"chunk")
    (folder / "lock").write_text("")
    (folder / "queries.active").write_text("")
    return folder


def test_the_database_is_copied_whole_without_its_run_files(tmp_path: Path) -> None:
    local = database(tmp_path / "local")
    destination = tmp_path / "run" / "monitor" / "tsdb"
    destination.parent.mkdir(parents=True)
    copy_database(local, destination)
    assert sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*")) == [
        "chunks_head",
        "chunks_head/000001",
        "wal",
        "wal/00000000",
    ]
    assert (destination / "wal" / "00000000").read_bytes() == b"wal" * 1000
    assert stat.S_IMODE(destination.stat().st_mode) == 0o700
    assert os.listdir(destination.parent) == ["tsdb"], "no partial copy left beside it"


def test_a_later_copy_replaces_the_earlier_one(tmp_path: Path) -> None:
    destination = tmp_path / "tsdb"
    copy_database(database(tmp_path / "first"), destination)
    second = tmp_path / "second"
    (second / "wal").mkdir(parents=True)
    (second / "wal" / "00000001").write_bytes(b"newer")
    copy_database(second, destination)
    assert [p.name for p in (destination / "wal").iterdir()] == ["00000001"]
    assert sorted(os.listdir(tmp_path)) == ["first", "second", "tsdb"]


def test_an_empty_database_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    copy_database(tmp_path / "local", tmp_path / "tsdb")
    assert not (tmp_path / "tsdb").exists()
