"""Reading what Slurm's commands print, and asking them, without a cluster: text samples as
`squeue`/`sacct` print them, and stand-in commands on PATH that print such text or fail as Slurm
does."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from pytest_aifactory.cluster import slurm_commands
from pytest_aifactory.cluster.slurm_commands import (
    QueueEntry,
    SlurmCommandError,
    expand_nodelist,
    job_states,
    parse_job_id,
    parse_sacct,
    parse_squeue,
    run_slurm,
    scancel,
    squeue,
)

SQUEUE_SAMPLE = """\
12|RUNNING|gpu[01-02]|None
13_[0-2%2]|PENDING||Resources
14_1|RUNNING|cpu1|None
15|PENDING||ReqNodeNotAvail, UnavailableNodes:gpu|03
not a line
"""

SACCT_SAMPLE = """\
20|COMPLETED
21|CANCELLED by 1000
22_[3-4]|PENDING
23|
"""


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only the stand-in commands a test writes: no real Slurm is asked."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


def command(bin_dir: Path, name: str, script: str) -> Path:
    """A stand-in for a Slurm command; it logs its arguments to `<name>.args`, one call a line."""
    path = bin_dir / name
    log = bin_dir / f"{name}.args"
    path.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{script}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return log


def test_squeue_lines_are_read_per_job_and_array_element() -> None:
    entries = parse_squeue(SQUEUE_SAMPLE)
    assert entries["12"] == QueueEntry(state="RUNNING", nodelist="gpu[01-02]", reason="None")
    assert {k for k in entries if k.startswith("13")} == {"13", "13_0", "13_1", "13_2"}
    assert entries["13_2"] == QueueEntry(state="PENDING", nodelist="", reason="Resources")
    assert "14_1" in entries
    assert "14_0" not in entries
    # the reason is free text, last: a `|` of its own stays in it
    assert entries["15"].reason == "ReqNodeNotAvail, UnavailableNodes:gpu|03"
    assert "not a line" not in entries


def test_sacct_lines_give_each_job_its_state_name() -> None:
    assert parse_sacct(SACCT_SAMPLE) == {
        "20": "COMPLETED",
        "21": "CANCELLED",
        "22_3": "PENDING",
        "22_4": "PENDING",
    }


def test_shown_job_ids_stand_for_each_array_task() -> None:
    assert parse_job_id("43_[0-2]").ids == ("43_0", "43_1", "43_2")
    assert parse_job_id("43_[0-2]").array == "43"
    assert parse_job_id("12_[0-3%2]").ids == ("12_0", "12_1", "12_2", "12_3")
    assert parse_job_id("12_[1,3-5]").ids == ("12_1", "12_3", "12_4", "12_5")
    assert parse_job_id("12_[1,3-5%4]").ids == ("12_1", "12_3", "12_4", "12_5")
    assert parse_job_id("12_[7]").ids == ("12_7",)
    # a malformed part does not hide the tasks the others name
    assert parse_job_id("12_[1,,-2,4]").ids == ("12_1", "12_4")
    single = parse_job_id("14_1")
    assert (single.ids, single.array) == (("14_1",), "14")
    for plain in ("12", "12+0", "12.batch", "12_x", "12_[0-2"):
        assert parse_job_id(plain).ids == (plain,)
        assert parse_job_id(plain).array is None


def test_the_runner_says_why_a_command_gave_no_answer(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SlurmCommandError, match="squeue is not available on this machine"):
        run_slurm(["squeue"])
    command(bin_dir, "squeue", 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1')
    with pytest.raises(SlurmCommandError, match="Invalid job id") as unknown:
        run_slurm(["squeue", "-j", "9"])
    assert unknown.value.unknown_job
    command(bin_dir, "sinfo", 'echo "Unable to contact slurm controller" >&2; exit 1')
    with pytest.raises(SlurmCommandError, match="sinfo failed: Unable to contact") as down:
        run_slurm(["sinfo"])
    assert not down.value.unknown_job
    monkeypatch.setattr(slurm_commands, "COMMAND_TIMEOUT_S", 0.2)
    command(bin_dir, "sacct", f"exec {shutil.which('sleep', path='/usr/bin:/bin')} 5")
    with pytest.raises(SlurmCommandError, match=r"sacct failed: .*timed out"):
        run_slurm(["sacct"])


def test_squeue_tells_forgotten_jobs_from_no_answer(bin_dir: Path) -> None:
    assert squeue(["1"]) is None  # no squeue here
    command(bin_dir, "squeue", 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1')
    assert squeue(["1"]) == {}
    log = command(bin_dir, "squeue", "echo '7|RUNNING|n1|None'")
    assert squeue(["7", "8"]) == {"7": QueueEntry("RUNNING", "n1", "None")}
    last_call = log.read_text().splitlines()[-1].split()
    assert last_call == ["-h", "--jobs=7,8", "-o", slurm_commands.SQUEUE_FORMAT]


def test_job_states_from_squeue_then_sacct(bin_dir: Path) -> None:
    assert job_states(["5"]) is None  # Slurm cannot be asked from here
    command(bin_dir, "squeue", "echo '5|RUNNING|gpu[01-02]|None'; echo '6_[0-1]|PENDING||Priority'")
    command(bin_dir, "scontrol", "echo gpu01; echo gpu02")
    sacct = command(bin_dir, "sacct", "echo '7|FAILED'; echo '8|CANCELLED by 0'")
    states = job_states(["5", "6_1", "7", "8", "9"])
    assert states is not None
    assert {job_id: (s.state, s.nodes) for job_id, s in states.items()} == {
        "5": ("RUNNING", ["gpu01", "gpu02"]),
        "6_1": ("PENDING", []),
        "7": ("FAILED", []),
        "8": ("CANCELLED", []),
        "9": ("ENDED", []),  # neither squeue nor sacct knows it any more
    }
    assert "-j 7,8,9 " in sacct.read_text()  # only those squeue did not list


def test_a_list_squeue_refuses_is_asked_one_id_at_a_time(bin_dir: Path) -> None:
    """Some Slurm versions refuse a whole list when one id in it is forgotten."""
    script = """case "$*" in
  *--jobs=3,4*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;;
  *--jobs=3*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;;
  *--jobs=4*) echo '4|RUNNING|n2|None';;
esac"""
    log = command(bin_dir, "squeue", script)
    command(bin_dir, "sacct", "exit 0")
    states = job_states(["3", "4"])
    assert states is not None
    assert {job_id: s.state for job_id, s in states.items()} == {"3": "ENDED", "4": "RUNNING"}
    assert len(log.read_text().splitlines()) == 3


def test_nodelists_are_expanded_by_scontrol_when_they_need_it(bin_dir: Path) -> None:
    assert expand_nodelist("") == []
    assert expand_nodelist("(null)") == []
    assert expand_nodelist("n1,n2") == ["n1", "n2"]
    assert expand_nodelist("gpu[01-02]") == ["gpu[01-02]"]  # no scontrol: as it is
    command(bin_dir, "scontrol", "echo gpu01; echo gpu02")
    assert expand_nodelist("gpu[01-02]") == ["gpu01", "gpu02"]


def test_scancel_says_why_it_could_not_cancel(bin_dir: Path) -> None:
    assert scancel([]) is None
    assert scancel(["1"]) == "scancel is not available on this machine"
    log = command(bin_dir, "scancel", "exit 0")
    assert scancel(["1", "2"]) is None
    assert scancel(["3"], signal="KILL") is None
    assert log.read_text().splitlines() == ["1 2", "--signal=KILL --full 3"]
    command(bin_dir, "scancel", 'echo "scancel: error: Access/permission denied" >&2; exit 1')
    assert scancel(["4"]) == "scancel failed: scancel: error: Access/permission denied"
