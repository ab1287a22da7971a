#!/usr/bin/env bash
# Installs Prometheus, its node exporter, pushgateway and PostgreSQL exporter from the
# distribution (Debian/Ubuntu) when they are missing and we may (root with apt). Without root
# (a cluster's login node), name release binaries or Apptainer images instead, in the recipe
# (monitor.components) or the environment (AIFACTORY_PROMETHEUS, AIFACTORY_PUSHGATEWAY,
# AIFACTORY_NODE_EXPORTER, AIFACTORY_DCGM_EXPORTER): recipes/meluxina/*.yaml say how to get them.
# Without any, runs still work: the endpoints are scraped directly and the run says which
# programs did not run and why (a PostgreSQL service without the exporter has no server metrics).
set -euo pipefail
wanted=(prometheus prometheus-node-exporter prometheus-pushgateway prometheus-postgres-exporter)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: ${missing[*]} not installed (needs root and apt); name release binaries or images" \
    "in the recipe's monitor.components or AIFACTORY_PROMETHEUS etc. (see docs/recipes.md)" >&2
  exit 0
fi
echo "installing ${missing[*]}..."
export DEBIAN_FRONTEND=noninteractive
# the packages' postinst would start the daemons system-wide: a policy-rc.d answering 101 stops it
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
log=/tmp/aifactory-monitoring-apt.log
if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" \
  >"$log" 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq >>"$log" 2>&1
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" \
    >>"$log" 2>&1 || { tail -20 "$log" >&2; echo "monitoring packages not installed" >&2; exit 1; }
fi
