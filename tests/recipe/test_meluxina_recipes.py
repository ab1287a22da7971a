"""The MeluXina recipes are shared by every project on the machine: their settings come from the
environment with working defaults, no project's account is written in them, and only the
servers that need GPUs ask for the GPU partition."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pytest_aifactory.recipe import Recipe, load_recipe

MELUXINA = Path(__file__).resolve().parents[2] / "recipes" / "meluxina"
RECIPES = sorted(MELUXINA.glob("*.yaml"))
GPU_RECIPES = {"vllm.yaml", "triton.yaml"}
SETTINGS = (
    "AIFACTORY_ACCOUNT",
    "AIFACTORY_QOS",
    "AIFACTORY_GPU_PARTITION",
    "AIFACTORY_CPU_PARTITION",
    "AIFACTORY_DATA",
)
CHOSEN = {
    "AIFACTORY_ACCOUNT": "p123456",
    "AIFACTORY_QOS": "short",
    "AIFACTORY_GPU_PARTITION": "gpu-test",
    "AIFACTORY_CPU_PARTITION": "cpu-test",
    "AIFACTORY_DATA": "/project/scratch/p123456/me/aifactory",
}
ACCOUNT_ID = re.compile(r"\bp\d{6}\b")
"""MeluXina's project (and account) ids: p200981."""


def test_there_is_one_recipe_per_family() -> None:
    assert {p.name for p in RECIPES} >= {*GPU_RECIPES, "fio.yaml", "postgres.yaml", "s3.yaml"}


def unset_environment() -> dict[str, str]:
    """None of the recipes' settings is set."""
    return {"USER": "me"}


def effective_partitions(recipe: Recipe) -> dict[str, str | None]:
    """Where each job goes: its own partition, else the run's."""
    default = recipe.platform.slurm.partition
    found: dict[str, str | None] = {
        f"services.{name}": service.partition or default
        for name, service in recipe.services.items()
    }
    found |= {
        f"clients.{name}": client.partition or default for name, client in recipe.clients.items()
    }
    found["monitor"] = recipe.monitor.partition or default
    return found


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_no_account_id_is_written_in_the_file(path: Path) -> None:
    found = ACCOUNT_ID.findall(path.read_text())
    assert not found, f"{path.name} names a project: {found}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_validates_with_the_defaults(path: Path) -> None:
    recipe = load_recipe(path, environ=unset_environment())
    slurm = recipe.platform.slurm
    assert not slurm.account  # Slurm's default account for the user
    assert slurm.qos == "default"
    assert recipe.monitor.partition == "cpu"
    for where, partition in effective_partitions(recipe).items():
        wanted = "gpu" if path.name in GPU_RECIPES and where.startswith("services.") else "cpu"
        assert partition == wanted, where
    home_data = os.path.expanduser("~/aifactory")
    for component in recipe.monitor.components.values():
        assert (component.path or component.image or "").startswith(home_data), component


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_setting_comes_from_the_environment(path: Path) -> None:
    recipe = load_recipe(path, environ={**unset_environment(), **CHOSEN})
    slurm = recipe.platform.slurm
    assert slurm.account == CHOSEN["AIFACTORY_ACCOUNT"]
    assert slurm.qos == CHOSEN["AIFACTORY_QOS"]
    for where, partition in effective_partitions(recipe).items():
        gpu = path.name in GPU_RECIPES and where.startswith("services.")
        wanted = CHOSEN["AIFACTORY_GPU_PARTITION" if gpu else "AIFACTORY_CPU_PARTITION"]
        assert partition == wanted, where
    text = path.read_text()
    for name in SETTINGS:
        if name != "AIFACTORY_GPU_PARTITION" or path.name in GPU_RECIPES:
            assert f"${{{name}:-" in text, f"{path.name} does not use {name}"
            assert f"#   {name}" in text, f"{path.name}'s header does not list {name}"
    data = CHOSEN["AIFACTORY_DATA"]
    paths = [c.path or c.image or "" for c in recipe.monitor.components.values()]
    paths += [s.container.image for s in recipe.services.values() if s.container is not None]
    paths += [s.model or "" for s in recipe.services.values() if s.model and "/" in s.model]
    assert paths
    assert all(p.startswith(data) for p in paths), paths


@pytest.mark.parametrize("path", [MELUXINA / name for name in sorted(GPU_RECIPES)], ids=str)
def test_gpu_servers_ask_for_cpus_and_memory(path: Path) -> None:
    recipe = load_recipe(path, environ=unset_environment())
    for name, service in recipe.services.items():
        assert service.gpus_per_node > 0, name
        assert (service.cpus_per_task or 0) >= 8, name
        assert service.memory, name
        assert service.container is not None, name
        assert service.container.gpu, name
    assert recipe.monitor.components["dcgm_exporter"].image


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_the_header_says_how_to_get_each_monitoring_program(path: Path) -> None:
    header = path.read_text().split("\nname:", 1)[0]
    recipe = load_recipe(path, environ=unset_environment())
    assert set(recipe.monitor.components) >= {"prometheus", "pushgateway", "node_exporter"}
    assert "get prometheus " in header
    assert "get pushgateway " in header
    assert "get node_exporter " in header
    if "dcgm_exporter" in recipe.monitor.components:
        assert "dcgm-exporter.sif" in header
        assert "apptainer pull" in header
