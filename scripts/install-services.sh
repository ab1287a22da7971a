#!/usr/bin/env bash
# The servers and tools the service families' tests run for real: fio, PostgreSQL, the vLLM
# CPU build (with SmolLM2 converted for it) and Ray (multi-node vLLM's token-locked head). Each
# script is idempotent and quick once done.
set -euo pipefail
here="$(dirname "$0")"
bash "$here/install-fio.sh"
bash "$here/install-postgres.sh"
bash "$here/install-vllm.sh"
bash "$here/install-ray.sh"
