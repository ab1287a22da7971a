#!/usr/bin/env bash
# Installs fio from the distribution (Debian/Ubuntu) when it is missing and we may (root with
# apt). Without fio the file-storage benchmarks cannot run; everything else still does.
set -euo pipefail
command -v fio >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: fio not installed (needs root and apt): file-storage benchmarks will not run" >&2
  exit 0
fi
echo "installing fio..."
export DEBIAN_FRONTEND=noninteractive
log=/tmp/aifactory-fio-apt.log
if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends fio >"$log" 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq >>"$log" 2>&1
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends fio >>"$log" 2>&1 \
    || { tail -20 "$log" >&2; echo "fio not installed" >&2; exit 1; }
fi
