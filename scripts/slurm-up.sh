#!/usr/bin/env bash
# A development Slurm cluster on this one machine, without systemd: munge, MariaDB + slurmdbd
# (accounting: sacct and submitit's job states need it), slurmctld and one slurmd per fake node
# (n1..nN, all at 127.0.0.1 on their own ports). Runs as root. Safe to run again: it only starts
# what is not running, and restarts Slurm's daemons when its configuration changed.
#
#   AIFACTORY_SLURM_DIR    state, logs, pid files and the database (default /tmp/aifactory-slurm)
#   AIFACTORY_SLURM_NODES  number of nodes (default 3)
#   AIFACTORY_SLURM_CPUS   CPUs declared per node, whatever the machine has (default 8)
#
# Partitions: `debug` (default, every node) and `monitor` (n1, for long-lived monitoring jobs).
# Stop it all with scripts/slurm-down.sh.
set -euo pipefail

DIR=${AIFACTORY_SLURM_DIR:-/tmp/aifactory-slurm}
NODES=${AIFACTORY_SLURM_NODES:-3}
CPUS=${AIFACTORY_SLURM_CPUS:-8}
CLUSTER=aifactory
DB_PORT=3307
DBD_PORT=6819
CTLD_PORT=6817
FIRST_NODE_PORT=17001
MARKER="# written by pytest-aifactory scripts/slurm-up.sh"
CONF_DIR=/etc/slurm

T0=$(date +%s%N)
say() {
  local ms=$((($(date +%s%N) - T0) / 1000000))
  printf '[slurm-up %3d.%03d s] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"
}
fail() { say "error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (it installs packages and starts daemons)"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || fail "AIFACTORY_SLURM_NODES must be a positive number"

# -- packages -------------------------------------------------------------------------------------
wanted=(slurm-wlm slurm-client munge slurmdbd mariadb-server)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # without systemd, postinst scripts would try to start the daemons (with no configuration
  # yet): a policy-rc.d that answers 101 tells them not to
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" \
    >"/tmp/aifactory-slurm-apt.log" 2>&1 || {
    tail -20 /tmp/aifactory-slurm-apt.log >&2
    fail "package installation failed"
  }
  say "packages installed"
fi

mkdir -p "$DIR"/{run,log,state,spool}
chmod 755 "$DIR"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_until() { # wait_until SECONDS WHAT COMMAND...
  local limit=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${limit} s waiting for $what"
    sleep 0.1
  done
}
# record_pid PIDFILE_OF_DAEMON OUR_PIDFILE: remember a daemon this script started, by PID
record_pid() { wait_until 10 "$1" test -s "$1"; cp "$1" "$2"; }

# -- munge ----------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  record_pid /run/munge/munged.pid "$DIR/run/munged.pid"
  wait_until 10 munged sh -c 'munge -n | unmunge'
fi

# -- MariaDB and slurmdbd -------------------------------------------------------------------------
DB=$DIR/db
SQL=(mariadb --no-defaults --socket="$DB/mysqld.sock" -uroot)
if [ ! -d "$DB/data/mysql" ]; then
  say "creating the accounting database"
  install -d -o mysql -g mysql "$DB"
  mariadb-install-db --no-defaults --user=mysql --datadir="$DB/data" \
    --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 ||
    fail "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
fi
if ! alive "$DB/mysqld.pid"; then
  say "starting mariadbd on 127.0.0.1:$DB_PORT"
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB/data" \
    --socket="$DB/mysqld.sock" --pid-file="$DB/mysqld.pid" \
    --bind-address=127.0.0.1 --port=$DB_PORT --log-error="$DIR/log/mariadb.log" \
    --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  wait_until 60 mariadbd "${SQL[@]}" -e 'select 1'
fi
"${SQL[@]}" -e "
  CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

mkdir -p "$CONF_DIR"
for conf in slurm.conf slurmdbd.conf; do
  if [ -e "$CONF_DIR/$conf" ] && ! grep -qF "$MARKER" "$CONF_DIR/$conf"; then
    fail "$CONF_DIR/$conf exists and was not written by this script; not overwriting it"
  fi
done

# write_if_changed FILE MODE: stdin to FILE; returns 0 when the content changed
write_if_changed() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -e "$1" ] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
    return 1
  fi
  install -m "$2" "$tmp" "$1"
  rm -f "$tmp"
}

dbd_changed=0
write_if_changed "$CONF_DIR/slurmdbd.conf" 600 <<EOF && dbd_changed=1
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF

# -- slurm.conf -----------------------------------------------------------------------------------
HOST=$(hostname -s)
LAST_NODE_PORT=$((FIRST_NODE_PORT + NODES - 1))
NODE_RANGE="n[1-$NODES]"
[ "$NODES" -eq 1 ] && NODE_RANGE=n1
conf_changed=0
write_if_changed "$CONF_DIR/slurm.conf" 644 <<EOF && conf_changed=1
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
# no cgroups without systemd: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# start batch jobs at once instead of batching submissions for 2-3 s
SchedulerParameters=batch_sched_delay=0
# each node declares more CPUs than the machine has, so that many small jobs run at once
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MailProg=/bin/true
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=$NODE_RANGE NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$FIRST_NODE_PORT-$LAST_NODE_PORT CPUs=$CPUS RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=monitor Nodes=n1 Default=NO MaxTime=INFINITE State=UP
EOF

# Slurm's daemons read their configuration at start: restart those running with an old one
if [ "$conf_changed" = 1 ] || [ "$dbd_changed" = 1 ]; then
  pidfiles=("$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid")
  [ "$dbd_changed" = 1 ] && pidfiles+=("$DIR/run/slurmdbd.pid")
  pids=()
  for pidfile in "${pidfiles[@]}"; do
    alive "$pidfile" && pids+=("$(cat "$pidfile")")
    rm -f "$pidfile"
  done
  if [ ${#pids[@]} -gt 0 ]; then
    say "configuration changed: restarting Slurm's daemons"
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
      running=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
      [ "$running" = 0 ] && break
      sleep 0.1
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
  fi
fi

# -- daemons --------------------------------------------------------------------------------------
started=0
if ! alive "$DIR/run/slurmdbd.pid"; then
  say "starting slurmdbd"
  slurmdbd
  started=1
fi
wait_until 60 slurmdbd sacctmgr -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

if ! alive "$DIR/run/slurmctld.pid"; then
  say "starting slurmctld"
  slurmctld
  started=1
fi
wait_until 30 slurmctld scontrol ping

for i in $(seq 1 "$NODES"); do
  mkdir -p "$DIR/spool/n$i"
  if ! alive "$DIR/run/slurmd-n$i.pid"; then
    say "starting slurmd n$i"
    slurmd -N "n$i"
    started=1
  fi
done

nodes_ready() { # every node idle, mixed or allocated; none down or drained
  local states
  states=$(sinfo -h -N -p debug -o '%t' | sort -u)
  [ -n "$states" ] && ! grep -qvE '^(idle|mix|alloc)$' <<<"$states"
}
deadline=$(($(date +%s) + 60))
until nodes_ready; do
  # nodes left down or drained by an earlier run (e.g. another CPU count): bring them back
  if sinfo -h -N -o '%t' | grep -qE 'down|drain'; then
    scontrol update NodeName="$NODE_RANGE" State=RESUME 2>/dev/null || true
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    sinfo -N -l >&2
    fail "nodes did not become ready"
  fi
  sleep 0.2
done

# a freshly started slurmctld holds its first batch job back for a few seconds: run one now,
# so that the first real job starts at once
if [ "$started" = 1 ]; then
  say "checking that a batch job runs"
  jid=$(sbatch --parsable -J aifactory-smoke -t 1 -o /dev/null --wrap true)
  wait_until 60 "batch job $jid" sh -c "[ -z \"\$(squeue -h -j $jid 2>/dev/null)\" ]"
  state=$(sacct -n -X -P -j "$jid" -o State | head -1)
  scontrol show job "$jid" 2>/dev/null | grep -q "JobState=COMPLETED" || [ "$state" = COMPLETED ] ||
    fail "the smoke-test batch job $jid did not complete (state: ${state:-unknown})"
fi
sinfo
say "Slurm is up: cluster $CLUSTER, nodes $NODE_RANGE with $CPUS CPUs each, state in $DIR"
