#!/usr/bin/env bash
# Installs PostgreSQL from the distribution (Debian/Ubuntu) when no server binary is there and we
# may (root with apt). The benchmark makes its own cluster in a scratch folder for every run, so
# the package's default cluster is not created and no service is started. Without PostgreSQL the
# relational benchmarks cannot run; everything else still does.
set -euo pipefail
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: PostgreSQL not installed (needs root and apt): relational benchmarks will not run" >&2
  exit 0
fi
echo "installing postgresql..."
export DEBIAN_FRONTEND=noninteractive
# the package's postinst would create and start a system-wide cluster: neither is wanted
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
  mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
fi
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
log=/tmp/aifactory-postgres-apt.log
if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends postgresql \
  >"$log" 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq >>"$log" 2>&1
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends postgresql \
    >>"$log" 2>&1 || { tail -20 "$log" >&2; echo "postgresql not installed" >&2; exit 1; }
fi
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null \
  || { echo "postgresql installed but no /usr/lib/postgresql/*/bin/postgres" >&2; exit 1; }
