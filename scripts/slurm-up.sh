#!/usr/bin/env bash
# A development Slurm cluster of separate hosts inside this one machine, without systemd.
#
# This machine is the login node: munge, MariaDB + slurmdbd (accounting: sacct and submitit's job
# states need it) and slurmctld run here, and so does the pytest driver. Each compute node n1..nN
# is a host of its own: a network namespace with its own address on a private bridge (traffic
# never leaves the machine), its own hostname (a UTS namespace: the hostname is the node's name)
# and its own slurmd. Every node still sees this machine's filesystems, so the run folder is
# shared as on a cluster's parallel filesystem. Runs as root. Safe to run again: it only creates
# and starts what is missing, and restarts Slurm's daemons when their configuration changed.
#
#   AIFACTORY_SLURM_DIR        state, logs, pid files and the database (default /tmp/aifactory-slurm)
#   AIFACTORY_SLURM_NODES      number of nodes (default 3)
#   AIFACTORY_SLURM_CPUS       CPUs declared per node, whatever the machine has (default 8)
#   AIFACTORY_SLURM_SUBNET     the nodes' private /24 (default 10.207.0.0/24): the bridge holds .1,
#                              node i holds .(10+i)
#   AIFACTORY_SLURM_BRIDGE     the bridge's name (default aifbr0)
#   AIFACTORY_SLURM_GPU_NODES  how many nodes, counted from the last, declare fake GPUs (default:
#                              every node but n1)
#   AIFACTORY_SLURM_GPUS       fake GPUs per GPU node (default 2)
#   AIFACTORY_SLURM_CGROUP     confine jobs with cgroups: auto (default: where cgroup v1 is
#                              mounted), yes or no
#
# Partitions: `debug` (default, every node), `cpu` (every node), `gpu` (the GPU nodes) and
# `monitor` (n1, for long-lived monitoring jobs). docs/dev-cluster.md says what was found about
# addresses, cgroups and GPUs here. Stop it all with scripts/slurm-down.sh.
set -euo pipefail

DIR=${AIFACTORY_SLURM_DIR:-/tmp/aifactory-slurm}
NODES=${AIFACTORY_SLURM_NODES:-3}
CPUS=${AIFACTORY_SLURM_CPUS:-8}
SUBNET=${AIFACTORY_SLURM_SUBNET:-10.207.0.0/24}
BRIDGE=${AIFACTORY_SLURM_BRIDGE:-aifbr0}
GPU_NODES=${AIFACTORY_SLURM_GPU_NODES:-}
GPUS=${AIFACTORY_SLURM_GPUS:-2}
CGROUP=${AIFACTORY_SLURM_CGROUP:-auto}
CLUSTER=aifactory
DB_PORT=3307
DBD_PORT=6819
CTLD_PORT=6817
SLURMD_PORT=6818
MEMORY_MB=16000
MARKER="# written by pytest-aifactory scripts/slurm-up.sh"
HOSTS_MARK="# aifactory dev cluster node"
CONF_DIR=/etc/slurm
NETNS_PREFIX=aif-
UTS_DIR=/run/aifactory-uts

T0=$(date +%s%N)
say() {
  local ms=$((($(date +%s%N) - T0) / 1000000))
  printf '[slurm-up %3d.%03d s] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"
}
fail() { say "error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (it installs packages, makes namespaces, starts daemons)"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] && [ "$NODES" -le 200 ] ||
  fail "AIFACTORY_SLURM_NODES must be a number from 1 to 200"
GPU_NODES=${GPU_NODES:-$((NODES - 1))}
[[ "$GPU_NODES" =~ ^[0-9]+$ ]] && [ "$GPU_NODES" -le "$NODES" ] ||
  fail "AIFACTORY_SLURM_GPU_NODES must be a number from 0 to $NODES"
[[ "$GPUS" =~ ^[1-9][0-9]?$ ]] || fail "AIFACTORY_SLURM_GPUS must be a number from 1 to 99"
[[ "$SUBNET" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.0/24$ ]] ||
  fail "AIFACTORY_SLURM_SUBNET must be a /24 such as 10.207.0.0/24, not '$SUBNET'"
NET=${SUBNET%.0/24}
BRIDGE_ADDR=$NET.1
[[ "$BRIDGE" =~ ^[A-Za-z0-9_-]{1,15}$ ]] || fail "AIFACTORY_SLURM_BRIDGE: an interface name (at most 15 letters, digits, - or _)"
node_addr() { echo "$NET.$((10 + $1))"; }

# -- packages -------------------------------------------------------------------------------------
wanted=(slurm-wlm slurm-client munge slurmdbd mariadb-server iproute2)
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

mkdir -p "$DIR"/{run,log,state,spool,dev}
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

# -- the nodes' network: a bridge, one namespace per node -----------------------------------------
# Everything made here is listed in $MADE, so that slurm-down.sh removes exactly that.
MADE=$DIR/run/network
touch "$MADE"
made() { grep -qxF "$*" "$MADE" || echo "$*" >>"$MADE"; }

# the private range must be free: no other interface of the machine may hold an address in it
clash=$(ip -4 -o addr show | awk -v net="$NET." -v br="$BRIDGE" '$2 != br && index($4, net) == 1 {print $2 " " $4}')
[ -z "$clash" ] || fail "AIFACTORY_SLURM_SUBNET $SUBNET is already used here ($clash): choose another"

if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  say "creating bridge $BRIDGE ($BRIDGE_ADDR/24)"
  ip link add "$BRIDGE" type bridge
fi
made bridge "$BRIDGE"
if ! ip -4 -o addr show dev "$BRIDGE" | grep -qw "$BRIDGE_ADDR/24"; then
  # a new range under running jobs would strand them: their steps keep the old addresses, and
  # their nodes stay "completing" once the daemons restart on the new ones
  if [ -n "$(ip -4 -o addr show dev "$BRIDGE")" ] && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    fail "the nodes move to $SUBNET, but jobs are running: cancel them (or run scripts/slurm-down.sh) first"
  fi
  ip addr flush dev "$BRIDGE"
  ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
fi
ip link set "$BRIDGE" up

# The machine's DNS servers are not reachable from a node (nothing routes beyond the bridge), so
# a lookup there would wait for its timeout (10 s for Python's http.server, which looks up its
# own address): each node routes them to "unreachable", and lookups fail at once. Names of the
# nodes resolve through /etc/hosts.
nameservers=$(awk '$1 == "nameserver" && $2 ~ /^[0-9.]+$/ {print $2}' /etc/resolv.conf 2>/dev/null || true)

mkdir -p "$UTS_DIR"
for i in $(seq 1 "$NODES"); do
  node=n$i ns=${NETNS_PREFIX}n$i addr=$(node_addr "$i")
  if [ ! -e "/run/netns/$ns" ]; then
    say "creating host $node ($addr)"
    ip netns add "$ns"
  fi
  made netns "$ns"
  if ! ip link show "$ns" >/dev/null 2>&1; then
    ip link add "$ns" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$ns" master "$BRIDGE" up
  if ! ip -n "$ns" -4 -o addr show dev eth0 | grep -qw "$addr/24"; then
    ip -n "$ns" addr flush dev eth0
    ip -n "$ns" addr add "$addr/24" dev eth0
  fi
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace default via "$BRIDGE_ADDR"
  for server in $nameservers; do
    [[ "$server" == "$NET".* ]] || ip -n "$ns" route replace unreachable "$server/32"
  done
  # the node's hostname: a UTS namespace kept alive by a bind mount, as ip netns does for its own
  uts=$UTS_DIR/$node
  if ! findmnt -n "$uts" >/dev/null 2>&1; then
    touch "$uts"
    unshare --uts="$uts" hostname "$node"
  fi
  made uts "$uts"
done

# the nodes' names for everyone (the host and the nodes share /etc/hosts); written in place, as
# /etc/hosts may be a mount of its own
hosts_now=$(grep -vF "$HOSTS_MARK" /etc/hosts || true)
hosts_new=$hosts_now
for i in $(seq 1 "$NODES"); do
  hosts_new+=$'\n'"$(node_addr "$i") n$i $HOSTS_MARK"
done
if [ "$hosts_new" != "$(cat /etc/hosts)" ]; then
  printf '%s\n' "$hosts_new" >/etc/hosts
fi
made hosts

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
for conf in slurm.conf slurmdbd.conf gres.conf cgroup.conf; do
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

# -- fake GPUs ------------------------------------------------------------------------------------
# Slurm counts a GPU per device file in gres.conf and hands out their indices in
# CUDA_VISIBLE_DEVICES. Slurm 22.05 refuses plain files ("not a valid character or block
# device") and then grants the GPUs without setting CUDA_VISIBLE_DEVICES: the stand-ins are
# character devices with NVIDIA's major number, 195 (no driver here, so opening one fails).
FIRST_GPU_NODE=$((NODES - GPU_NODES + 1))
gpu_range() { # n[A-B], nA or nothing
  if [ "$GPU_NODES" -eq 0 ]; then echo ""; elif [ "$FIRST_GPU_NODE" -eq "$NODES" ]; then
    echo "n$NODES"
  else echo "n[$FIRST_GPU_NODE-$NODES]"; fi
}
GPU_RANGE=$(gpu_range)
gres_changed=0
for g in $(seq 0 $((GPUS - 1))); do
  [ -c "$DIR/dev/gpu$g" ] && continue
  rm -f "$DIR/dev/gpu$g"
  mknod "$DIR/dev/gpu$g" c 195 "$g"
  gres_changed=1
done
GPU_FILES="$DIR/dev/gpu[0-$((GPUS - 1))]"
[ "$GPUS" -eq 1 ] && GPU_FILES="$DIR/dev/gpu0"

{
  echo "$MARKER"
  [ -n "$GPU_RANGE" ] && echo "NodeName=$GPU_RANGE Name=gpu File=$GPU_FILES"
  true
} | write_if_changed "$CONF_DIR/gres.conf" 644 && gres_changed=1

# -- cgroups --------------------------------------------------------------------------------------
# What was found on Debian 12's Slurm 22.05 with cgroup v1 controllers mounted and no systemd:
# - proctrack/cgroup + task/cgroup (ConstrainCores, ConstrainRAMSpace) work with one slurmd per
#   namespace (each node gets its own tree, e.g. /sys/fs/cgroup/cpuset/slurm_n1/): a job sees
#   only its cores in Cpus_allowed_list, memory.limit_in_bytes is its memory and going over it
#   kills the step (OOM), and scancel or the end of a batch script kills every process of the
#   job, background children started with setsid included (proctrack/linuxproc leaves those).
# - The 8 CPUs a node declares map onto the machine's real ones modulo their number: two jobs
#   of one CPU each on a 2-core machine get core 0 and core 1, the third core 0 again.
# - task/affinity is left out: with more CPUs declared than exist it logs "batch_bind: more
#   resources configured than exist" and "job N allocated no CPUs" for every batch job, and
#   binds nothing that task/cgroup does not already confine.
# - Without cgroup v1 controllers (a cgroup v2 machine: Slurm 22.05's cgroup/v2 wants systemd)
#   the nodes fall back to proctrack/linuxproc and task/none: nothing is confined.
#   AIFACTORY_SLURM_CGROUP=yes|no forces either (default auto).
cgroup_v1() {
  local controller
  for controller in cpuset memory freezer; do
    [ "$(stat -f -c %T "/sys/fs/cgroup/$controller" 2>/dev/null)" = cgroupfs ] || return 1
  done
}
case $CGROUP in
  yes | 1) use_cgroup=1 ;;
  no | 0) use_cgroup=0 ;;
  auto) if cgroup_v1; then use_cgroup=1; else use_cgroup=0; fi ;;
  *) fail "AIFACTORY_SLURM_CGROUP must be auto, yes or no, not '$CGROUP'" ;;
esac
if [ "$use_cgroup" = 1 ]; then
  cgroup_v1 || fail "AIFACTORY_SLURM_CGROUP=yes, but cpuset, memory and freezer are not cgroup v1 mounts under /sys/fs/cgroup"
  tracking="# jobs confined to their CPUs and memory, and killed whole (cgroup v1)
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup"
else
  tracking="# no cgroup v1 controllers here: plain process tracking, nothing confined
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none"
fi
cgroup_changed=0
write_if_changed "$CONF_DIR/cgroup.conf" 644 <<EOF && cgroup_changed=1
$MARKER
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainDevices=no
EOF

# -- slurm.conf -----------------------------------------------------------------------------------
HOST=$(hostname -s)
node_lines=""
cpu_nodes="" gpu_nodes=""
for i in $(seq 1 "$NODES"); do
  gres=""
  if [ "$i" -ge "$FIRST_GPU_NODE" ]; then
    gres=" Gres=gpu:$GPUS"
    gpu_nodes+="${gpu_nodes:+,}n$i"
  fi
  cpu_nodes+="${cpu_nodes:+,}n$i"
  node_lines+="NodeName=n$i NodeHostname=n$i NodeAddr=$(node_addr "$i") CPUs=$CPUS RealMemory=$MEMORY_MB$gres State=UNKNOWN"$'\n'
done
gpu_partition=""
[ -n "$gpu_nodes" ] && gpu_partition="PartitionName=gpu Nodes=$gpu_nodes Default=NO MaxTime=INFINITE State=UP"
NODE_RANGE="n[1-$NODES]"
[ "$NODES" -eq 1 ] && NODE_RANGE=n1

conf_changed=0
write_if_changed "$CONF_DIR/slurm.conf" 644 <<EOF && conf_changed=1
$MARKER
ClusterName=$CLUSTER
# the nodes reach the controller over the bridge
SlurmctldHost=$HOST($BRIDGE_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
$tracking
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
# the bridge address, so that sacct also works on the nodes
AccountingStorageHost=$BRIDGE_ADDR
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
GresTypes=gpu
JobCompType=jobcomp/none
SelectType=select/cons_tres
# memory is a resource too: a job asks for it (--mem) or gets DefMemPerCPU per CPU
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((MEMORY_MB / CPUS))
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
${node_lines}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=$cpu_nodes Default=NO MaxTime=INFINITE State=UP
$gpu_partition
PartitionName=monitor Nodes=n1 Default=NO MaxTime=INFINITE State=UP
EOF

# a slurmd from before the nodes were hosts of their own (all on this machine's loopback, on
# ports 17001..): it runs in the wrong namespace, so it goes whatever the configuration says
for pidfile in "$DIR"/run/slurmd-*.pid; do
  [ -e "$pidfile" ] && alive "$pidfile" || continue
  if [ "$(readlink "/proc/$(cat "$pidfile")/ns/net")" = "$(readlink /proc/self/ns/net)" ]; then
    conf_changed=1
  fi
done

# Slurm's daemons read their configuration at start: restart those running with an old one
if [ "$conf_changed" = 1 ] || [ "$dbd_changed" = 1 ] || [ "$gres_changed" = 1 ] ||
  [ "$cgroup_changed" = 1 ]; then
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
    say "starting slurmd on n$i"
    # nsenter, not `ip netns exec`: that one remounts /sys, and slurmd then finds no cgroups
    nsenter --net="/run/netns/${NETNS_PREFIX}n$i" --uts="$UTS_DIR/n$i" slurmd -N "n$i"
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
confined="jobs confined by cgroups"
[ "$use_cgroup" = 1 ] || confined="jobs not confined (no cgroup v1)"
say "Slurm is up: cluster $CLUSTER, nodes $NODE_RANGE at $(node_addr 1)..$(node_addr "$NODES") with $CPUS CPUs each${GPU_RANGE:+, $GPUS fake GPUs on $GPU_RANGE}, $confined; state in $DIR"
