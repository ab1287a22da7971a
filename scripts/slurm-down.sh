#!/usr/bin/env bash
# Stops the development cluster that scripts/slurm-up.sh started: cancels its jobs, stops each
# daemon it started, by the PID it recorded, newest first, then removes the nodes' namespaces,
# their links, the bridge and their /etc/hosts lines (only what slurm-up.sh recorded making).
# `--purge` also deletes the state, the logs and the accounting database.
#
#   AIFACTORY_SLURM_DIR  the directory slurm-up.sh used (default /tmp/aifactory-slurm)
set -uo pipefail

DIR=${AIFACTORY_SLURM_DIR:-/tmp/aifactory-slurm}
HOSTS_MARK="# aifactory dev cluster node"
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

# the nodes' hosts, in the reverse order of their making; a namespace still holding a process
# (a job step that outlived its slurmd) goes once that process does: say which
MADE=$DIR/run/network
if [ -s "$MADE" ]; then
  tac "$MADE" | while read -r what name; do
    case $what in
      hosts)
        if grep -qF "$HOSTS_MARK" /etc/hosts; then
          kept=$(grep -vF "$HOSTS_MARK" /etc/hosts)
          printf '%s\n' "$kept" >/etc/hosts # in place: /etc/hosts may be a mount of its own
        fi
        ;;
      uts)
        if findmnt -n "$name" >/dev/null 2>&1; then umount "$name"; fi
        rm -f "$name"
        rmdir "$(dirname "$name")" 2>/dev/null
        ;;
      netns)
        if [ -e "/run/netns/$name" ]; then
          pids=$(ip netns pids "$name" 2>/dev/null | tr '\n' ' ')
          [ -z "${pids// /}" ] || say "warning: processes still in $name: $pids"
          # the node's end of its link goes with the namespace; this takes the bridge's end
          # too, even if a leftover process keeps the namespace itself alive
          ip link delete "$name" 2>/dev/null
          ip netns delete "$name" && say "removed host $name"
        fi
        # the node's cgroups (Slurm leaves its tree when slurmd stops); rmdir only takes
        # those without a process in them
        for tree in /sys/fs/cgroup/*/slurm_"${name#aif-}"; do
          [ -d "$tree" ] && find "$tree" -depth -type d -exec rmdir {} + 2>/dev/null
        done
        ;;
      bridge)
        if ip link show "$name" >/dev/null 2>&1; then
          ip link delete "$name" type bridge && say "removed bridge $name"
        fi
        ;;
    esac
  done
  rm -f "$MADE"
fi

if [ "${1:-}" = "--purge" ]; then
  rm -rf "$DIR"
  say "removed $DIR"
fi
say "stopped"
