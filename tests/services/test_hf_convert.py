"""The GGUF -> Hugging Face folder conversion vLLM serves SmolLM2 from: its tokenizer splits text
as llama.cpp does (the same prompt is the same number of tokens to vLLM and to llama-server,
digits included), and a folder an older conversion made is made again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from pytest_aifactory.services.hf_convert import (
    CONVERSION,
    MARKER,
    PRE_TOKENIZERS,
    is_converted,
    main,
    with_pre_tokenizer,
)
from pytest_aifactory.services.kinds.vllm import installed_python
from pytest_aifactory.services.models import hf_model_dir
from tests.helpers import keyed_llama_server

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}

PROMPTS = [
    "Steps:\n\n1. Mix 2 cups of flour with 350 ml of water.\n\n2. Bake at 220 C for 45 min.",
    "In 1969, 3 astronauts flew 384400 km;   42 is    7 x 6, and 3.14159 is pi.",
    "Order #20261202: 12x items @ $9.99 = $119.88 (tax 0.0825)\n\t  10",
]
"""Prompts where digits meet whitespace runs and each other: a tokenizer without SmolLM2's
digit split counts them differently from llama.cpp."""


def marked(folder: Path, first_line: str | None) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    marker = "model.gguf\n1\n" if first_line is None else f"{first_line}\nmodel.gguf\n1\n"
    (folder / MARKER).write_text(marker, encoding="utf-8")
    return folder


def test_a_folder_of_an_older_conversion_is_not_converted(tmp_path: Path) -> None:
    assert is_converted(marked(tmp_path / "current", f"conversion {CONVERSION}"))
    assert not is_converted(marked(tmp_path / "unversioned", None))
    assert not is_converted(marked(tmp_path / "older", f"conversion {CONVERSION - 1}"))
    assert not is_converted(tmp_path / "absent")


def test_check_answers_by_exit_status(tmp_path: Path) -> None:
    """What scripts/install-vllm.sh asks before deciding to convert again."""
    assert main(["--check", "--out", str(marked(tmp_path / "a", f"conversion {CONVERSION}"))]) == 0
    assert main(["--check", "--out", str(marked(tmp_path / "b", None))]) == 1


def test_smollm_splits_digits_before_gpt2s_pattern() -> None:
    """llama.cpp's `smollm` pre-tokenizer: each digit apart, then the byte-level split."""
    written = {"model": {"type": "BPE"}, "pre_tokenizer": {**BYTE_LEVEL, "use_regex": True}}
    fixed = with_pre_tokenizer(written, "smollm")
    assert fixed["model"] == written["model"]
    assert fixed["pre_tokenizer"] == {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {**BYTE_LEVEL, "use_regex": True},
        ],
    }
    assert with_pre_tokenizer(written, "llama-bpe") == written
    assert with_pre_tokenizer(written, None) == written
    assert set(PRE_TOKENIZERS) == {"smollm"}


COUNT = """
import json, sys
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
prompts = json.load(sys.stdin)
print(json.dumps([len(tokenizer.encode(p, add_special_tokens=False)) for p in prompts]))
"""


def converted_counts(folder: Path, prompts: list[str]) -> list[int]:
    """Each prompt's token count by the folder's tokenizer, loaded as vLLM loads it."""
    python = installed_python()
    assert python is not None
    done = subprocess.run(
        [str(python), "-c", COUNT, str(folder)],
        input=json.dumps(prompts),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    counts: list[int] = json.loads(done.stdout.strip().splitlines()[-1])
    return counts


async def server_counts(url: str, key: str, prompts: list[str]) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}
    counts = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for prompt in prompts:
            async with session.post(f"{url}/tokenize", json={"content": prompt}) as reply:
                assert reply.status == 200, await reply.text()
                counts.append(len((await reply.json())["tokens"]))
    return counts


@pytest.mark.slow
@pytest.mark.requires("llama-server", "smollm2", "vllm")
def test_converted_tokenizer_counts_as_llama_server(tmp_path: Path) -> None:
    folder = hf_model_dir("smollm2-135m")
    assert folder is not None, "no converted SmolLM2 folder (run scripts/install-vllm.sh)"
    with keyed_llama_server(tmp_path, "tokenizer") as (url, key):
        expected = asyncio.run(server_counts(url, key, PROMPTS))
    assert converted_counts(folder, PROMPTS) == expected
