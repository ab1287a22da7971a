"""The package as another repository gets it: a wheel installed into a fresh virtual
environment outside this checkout, `aifactory init` in a folder of its own, and benchmark runs
from there, through the written `benchmarks/` and through `pytest --pyargs`.

The wheel is built from a copy of what a wheel is made of (pyproject.toml, README.md, the
package), so nothing else in the checkout can leak into it. Its dependencies do not come from
an index: installing pandas, pyarrow, aiohttp and the rest again would take minutes and a
network. The fresh environment sees this environment's installed packages instead, through a
folder of links to each of them that leaves out this project's own (its editable install's
import hook and its metadata) and every `.pth` file; a path file in the fresh environment adds
that folder as a plain directory. So the only `pytest_aifactory` the fresh environment can
import, and the only pytest plugin and `aifactory` command it has, are the wheel's. Building the
wheel needs setuptools from the index, as every install of the project does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

pytestmark = pytest.mark.slow

OWN_NAMES = ("pytest_aifactory", "pytest-aifactory", "__editable__")
"""What of this environment's site-packages is this checkout's install, not a dependency."""


@dataclass(frozen=True)
class FreshVenv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def aifactory(self) -> Path:
        return self.root / "bin" / "aifactory"

    def env(self, tmp: Path) -> dict[str, str]:
        """The environment a user's shell would give: nothing that points into the checkout,
        pytest-benchmark's files in the test's folder."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.root)
        env["AIFACTORY_BENCHMARK_STORAGE"] = str(tmp / ".benchmarks")
        return env


def run(command: Sequence[object], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{output[-6000:]}"
    return output


def run_folders(reports: Path) -> list[Path]:
    """The runs in a report folder (beside them: the experiments dashboard)."""
    return [path for path in reports.iterdir() if path.is_dir()]


def build_wheel(folder: Path) -> Path:
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "pytest_aifactory",
        source / "pytest_aifactory",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    wheels = folder / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, source]
    run(command, folder, dict(os.environ), timeout=600)
    (wheel,) = wheels.glob("pytest_aifactory-*.whl")
    return wheel


def dependencies_without_this_project(folder: Path) -> Path:
    """A folder of links to this environment's installed packages, this project's left out."""
    links = folder / "dependencies"
    links.mkdir()
    sites = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    for site in sites:
        for entry in site.iterdir():
            own = entry.name.startswith(OWN_NAMES)
            if own or entry.suffix == ".pth" or (links / entry.name).exists():
                continue
            (links / entry.name).symlink_to(entry)
    return links


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    folder = tmp_path_factory.mktemp("wheel-install")
    assert not folder.resolve().is_relative_to(REPO.resolve())
    wheel = build_wheel(folder)
    venv = FreshVenv(folder / "venv")
    run([sys.executable, "-m", "venv", venv.root], folder, dict(os.environ), timeout=300)
    site = Path(
        run(
            [venv.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            folder,
            venv.env(folder),
            timeout=60,
        ).strip()
    )
    (site / "aifactory-dependencies.pth").write_text(
        f"{dependencies_without_this_project(folder)}\n"
    )
    pip = [venv.python, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "install", "--no-deps", "--no-index", wheel], folder, venv.env(folder), 300)
    return venv


def test_the_wheel_brings_the_package_the_suites_and_the_command(
    fresh_venv: FreshVenv, tmp_path: Path
) -> None:
    code = (
        "import json, pytest_aifactory, pytest_aifactory.benchmarks.test_inference as suite\n"
        "print(json.dumps([pytest_aifactory.__file__, suite.__file__]))"
    )
    env = fresh_venv.env(tmp_path)
    files = json.loads(run([fresh_venv.python, "-c", code], tmp_path, env, 60))
    for file in files:
        assert Path(file).is_relative_to(fresh_venv.root), files
    assert "init" in run([fresh_venv.aifactory, "--help"], tmp_path, env, 60)
    # the web interface's scripts and style come with it (no asset is fetched from anywhere)
    listing = (
        "import json, importlib.resources as r\n"
        "print(json.dumps(sorted(p.name for p in (r.files('pytest_aifactory.ui') / 'static')"
        ".iterdir())))"
    )
    static = json.loads(run([fresh_venv.python, "-c", listing], tmp_path, env, 60))
    assert {"common.js", "home.js", "live.js", "ui.css"} <= set(static), static


@pytest.mark.requires("llama-server", "smollm2")
def test_init_then_benchmark_from_another_repository(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    project = tmp_path / "serving-repo"
    env = fresh_venv.env(tmp_path)
    written = run([fresh_venv.aifactory, "init", project], tmp_path, env, 60)
    for name in (
        "benchmarks/test_aifactory.py",
        "recipes/aifactory.yaml",
        ".github/workflows/aifactory.yml",
    ):
        assert (project / name).is_file(), written
    # the written recipe, one small level and no monitoring servers: minutes become seconds
    recipe = project / "recipes" / "aifactory.yaml"
    document = yaml.safe_load(recipe.read_text())
    document["clients"]["chat"]["load"].update(levels=[2], requests=6, warmup_requests=0)
    document["monitor"]["prometheus"] = False
    recipe.write_text(yaml.safe_dump(document, sort_keys=False))

    command = [fresh_venv.python, "-m", "pytest", "benchmarks/", "--recipe", recipe, "-rA"]
    output = run([*command, "-p", "no:cacheprovider"], project, env, timeout=600)

    (run_dir,) = run_folders(project / "reports")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete", output
    ids = [test["test_id"] for test in summary["tests"]]
    assert ids == ["benchmarks/test_aifactory.py::test_serving[chat-concurrency-2]"], output
    assert (run_dir / "report.html").is_file()
    assert "2 skipped" in output  # the storage and vector search suites: no client of theirs


def test_the_shipped_suites_run_with_pyargs(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    server = f"{fresh_venv.python} -m pytest_aifactory.testing.token_server"
    recipe = tmp_path / "token-server.yaml"
    document = {
        "name": "token-server",
        "services": {
            "svc": {
                "kind": "command",
                "command": f"{server} --host {{host}} --port {{port}} --tokens 8",
                "health": {"http": "/truth"},
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "svc",
                "load": {"mode": "concurrency", "levels": [1, 2], "requests": 8},
            }
        },
        "slo": {"chat": {"error_rate": {"max": 0.0}}},
        "monitor": {"prometheus": False},
    }
    recipe.write_text(yaml.safe_dump(document, sort_keys=False))
    command = [fresh_venv.python, "-m", "pytest", "--pyargs", "pytest_aifactory.benchmarks"]
    options = ["--recipe", recipe, "-p", "no:cacheprovider", "-rA"]
    output = run([*command, *options], tmp_path, fresh_venv.env(tmp_path), timeout=600)

    (run_dir,) = run_folders(tmp_path / "reports")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete", output
    names = sorted(test["name"] for test in summary["tests"])
    assert names == ["test_serving[chat-concurrency-1]", "test_serving[chat-concurrency-2]"]
    assert all(test["passed"] for test in summary["tests"]), output
    assert (run_dir / "report.html").is_file()
