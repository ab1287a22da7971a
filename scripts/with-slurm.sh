#!/usr/bin/env bash
# with-slurm.sh COMMAND...: run COMMAND with the development Slurm cluster up (as root), then
# tear the cluster down, whatever COMMAND did; exits with COMMAND's status. Without root, or
# when the cluster cannot start, COMMAND still runs and the tests that need Slurm skip.
#
#   AIFACTORY_SLURM_KEEP=1   leave the cluster running afterwards (stop it: scripts/slurm-down.sh)
set -uo pipefail

if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "with-slurm: not root, so no development Slurm cluster: tests that need Slurm skip" >&2
  exec "$@"
fi

teardown() {
  if [ "${AIFACTORY_SLURM_KEEP:-0}" = 1 ]; then
    echo "with-slurm: leaving Slurm running (AIFACTORY_SLURM_KEEP=1)" >&2
  else
    bash "$here/slurm-down.sh"
  fi
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! bash "$here/slurm-up.sh"; then
  if [ "${CI:-}" = true ]; then
    echo "with-slurm: the Slurm cluster did not start: failing (in CI, Slurm tests must run)" >&2
    exit 1
  fi
  echo "with-slurm: the Slurm cluster did not start: tests that need Slurm skip" >&2
fi
"$@"
status=$?
exit "$status"
