#!/usr/bin/env bash
# Ray (2.52 or later, the first with token authentication) for the test that a multi-node vLLM
# service's Ray head lets in only its own run. Installed for the system's python3 in a folder
# every account can read, because the test also runs Ray's client as another local account.
#   usage: scripts/install-ray.sh [FOLDER]   (default /opt/aifactory-ray; `ray` is in FOLDER/bin)
set -euo pipefail
folder="${1:-/opt/aifactory-ray}"
want="ray>=2.52"
if [ -x "$folder/bin/ray" ] && "$folder/bin/python" -c \
  "import ray,sys; v=tuple(int(p) for p in ray.__version__.split('.')[:2]); sys.exit(v < (2, 52))" \
  2>/dev/null; then
  exit 0
fi
log=/tmp/aifactory-ray-install.log
echo "install-ray: installing $want into $folder"
rm -rf "$folder"
if ! /usr/bin/python3 -m venv "$folder" >"$log" 2>&1; then
  tail -20 "$log" >&2
  echo "install-ray: python3 -m venv failed (python3-venv missing?)" >&2
  exit 1
fi
if ! "$folder/bin/python" -m pip install --disable-pip-version-check -q "$want" >>"$log" 2>&1; then
  tail -20 "$log" >&2
  echo "install-ray: pip install $want failed" >&2
  exit 1
fi
chmod -R a+rX "$folder"
