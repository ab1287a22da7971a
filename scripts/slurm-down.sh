#!/usr/bin/env bash
# Stops the development cluster that scripts/slurm-up.sh started: cancels its jobs, then stops
# each daemon it started, by the PID it recorded, newest first. `--purge` also deletes the
# state, the logs and the accounting database.
#
#   AIFACTORY_SLURM_DIR  the directory slurm-up.sh used (default /tmp/aifactory-slurm)
set -uo pipefail

DIR=${AIFACTORY_SLURM_DIR:-/tmp/aifactory-slurm}
T0=$(date +%s%N)
say() {
  local ms=$((($(date +%s%N) - T0) / 1000000))
  printf '[slurm-down %3d.%03d s] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() { # stop PIDFILE:NAME...: SIGTERM to all at once, SIGKILL to any left after 10 s
  local item pidfile name pid pids=()
  for item in "$@"; do
    pidfile=${item%%:*} name=${item#*:}
    [ -e "$pidfile" ] || continue
    if alive "$pidfile"; then
      pid=$(cat "$pidfile")
      say "stopping $name (pid $pid)"
      kill "$pid" 2>/dev/null && pids+=("$pid")
    fi
    rm -f "$pidfile"
  done
  for _ in $(seq 100); do
    local left=()
    for pid in ${pids[@]+"${pids[@]}"}; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    pids=(${left[@]+"${left[@]}"})
    [ ${#pids[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  say "still running after 10 s, SIGKILL: ${pids[*]}"
  kill -9 "${pids[@]}" 2>/dev/null
}

# jobs first, so that no job step outlives its slurmd
if alive "$DIR/run/slurmctld.pid" && scontrol ping >/dev/null 2>&1; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 150); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi

# compute nodes and controller together, then accounting, then its database and munge
daemons=()
for pidfile in "$DIR"/run/slurmd-*.pid; do
  [ -e "$pidfile" ] && daemons+=("$pidfile:$(basename "$pidfile" .pid)")
done
stop ${daemons[@]+"${daemons[@]}"} "$DIR/run/slurmctld.pid:slurmctld"
stop "$DIR/run/slurmdbd.pid:slurmdbd"
stop "$DIR/db/mysqld.pid:mariadbd" "$DIR/run/munged.pid:munged"

left=$(pgrep -a slurmstepd || true)
[ -z "$left" ] || say "warning: job steps still running (cancel failed?): $left"

if [ "${1:-}" = "--purge" ]; then
  rm -rf "$DIR"
  say "removed $DIR"
fi
say "stopped"
