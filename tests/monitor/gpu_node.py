"""A GPU node as a job finds one, on a machine without GPUs: the DCGM exporter stand-in on the
PATH as `dcgm-exporter`, and an `nvidia-smi` that lists a GPU (or fails as without a driver).
These are test doubles: no real part can show a GPU here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pytest_aifactory.testing import dcgm_exporter

STAND_IN = Path(dcgm_exporter.__file__)


def fake_gpu_node(folder: Path, monkeypatch: pytest.MonkeyPatch, gpu: bool) -> Path:
    """`dcgm-exporter` (the stand-in) and `nvidia-smi` first on PATH, in `folder`/bin; `gpu`:
    whether nvidia-smi lists one. Returns that folder."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    exporter = bin_dir / "dcgm-exporter"
    exporter.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    smi = bin_dir / "nvidia-smi"
    if gpu:
        smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0-test)"\n')
    else:
        smi.write_text('#!/bin/sh\necho "NVIDIA-SMI has failed: no driver" >&2\nexit 9\n')
    for path in (exporter, smi):
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir
