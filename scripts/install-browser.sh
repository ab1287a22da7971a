#!/usr/bin/env bash
# Installs Debian's chromium when it is missing and we may (root with apt): the report tests open
# report.html in a real headless browser to check that every chart draws with no network.
# Without it those tests skip; the reports themselves need no browser to be written.
set -euo pipefail
browser=/usr/bin/chromium
[ -x "$browser" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: $browser not installed (needs root and apt): the browser check of reports will skip" >&2
  exit 0
fi
echo "installing chromium..."
export DEBIAN_FRONTEND=noninteractive
log=/tmp/aifactory-browser-apt.log
if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium \
  >"$log" 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq >>"$log" 2>&1
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium \
    >>"$log" 2>&1 || { tail -20 "$log" >&2; echo "chromium not installed" >&2; exit 1; }
fi
"$browser" --version 2>/dev/null | grep -v "unexpected operator" || true
