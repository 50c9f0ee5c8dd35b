#!/usr/bin/env bash
# Start a real two-node Slurm cluster on this one machine (for the Slurm runner's tests), and wait
# until both nodes are idle.
#
# Nodes n1 and n2 are two slurmd daemons on this host (Debian's slurm-wlm supports several per
# host: each has its own Port, NodeAddr=127.0.0.1, and %n in its pid, spool and log paths). --mem
# is enforced by the kernel through cgroup v1 (task/cgroup) where its memory controller is mounted,
# else by slurmstepd sampling every second (OverMemoryKill); see below. There is no accounting
# database (sacct says so), which is why the runner also reads `scontrol show job`.
#
# Idempotent: when `sinfo` already shows n1 and n2 idle it does nothing; it installs slurm-wlm and
# munge with apt when they are missing, writes the munge key and slurm.conf only when absent
# (SLURM_REWRITE_CONF=1 rewrites slurm.conf and cgroup.conf and restarts the daemons;
# SLURM_NO_CGROUP=1 with it chooses OverMemoryKill), and starts only the daemons that are not running.
# Needs root.
#
# Usage: scripts/start_slurm.sh          (env: SLURM_WAIT_SECONDS, default 60;
#                                         SLURM_NODE_MEMORY_MB, default 4000: RealMemory per node)
set -euo pipefail

WAIT="${SLURM_WAIT_SECONDS:-60}"
NODE_MEMORY="${SLURM_NODE_MEMORY_MB:-4000}"
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm

cluster_idle() {
    [ "$(sinfo -h -N -n n1,n2 -o '%N %t' 2>/dev/null | grep -c ' idle$')" = 2 ]
}

if [ "${SLURM_REWRITE_CONF:-0}" != 1 ] && command -v sinfo >/dev/null 2>&1 && [ -f "$CONF" ] && cluster_idle; then
    echo "start_slurm: n1 and n2 are already idle"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "start_slurm: no idle two-node cluster answers and only root can start one" >&2
    exit 1
fi
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    echo "start_slurm: installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; }
fi

# -- munge: one key, the munge user, its own socket directory -----------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "start_slurm: starting munged"
    su -s /bin/sh munge -c "/usr/sbin/munged --force"
    for _ in $(seq 1 20); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
fi

# -- slurm.conf: a controller and two nodes on this host ----------------------------------------
install -d -m 0755 /etc/slurm "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd /run/slurm
HOST="$(hostname -s)"
CPUS="$(nproc)"
# Memory limits: with cgroup v1's memory controller (mounted here), the kernel enforces --mem
# (task/cgroup; slurmstepd reports an "oom-kill event"), as on most clusters. Without it (cgroup
# v2 only: Slurm 22.05 needs systemd for that), slurmstepd samples the job's processes every second
# and kills a step over its --mem (OverMemoryKill; "Exceeded job memory limit").
if [ -d /sys/fs/cgroup/memory ] && [ -z "${SLURM_NO_CGROUP:-}" ]; then
    MEMORY_LINES="TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1"
    MEMORY_KIND="cgroup v1"
else
    MEMORY_LINES="TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill"
    MEMORY_KIND="OverMemoryKill"
fi
if [ ! -f "$CONF" ] || [ "${SLURM_REWRITE_CONF:-0}" = 1 ]; then
    echo "start_slurm: writing $CONF (nodes n1, n2 on $HOST, $CPUS CPUs and ${NODE_MEMORY} MB each; memory limits: $MEMORY_KIND)"
    printf '%s\n' "# Written by PyTrain's scripts/start_slurm.sh (read with TaskPlugin=task/cgroup)." \
        "CgroupPlugin=cgroup/v1" "CgroupMountpoint=/sys/fs/cgroup" "ConstrainRAMSpace=yes" "ConstrainSwapSpace=no" \
        "ConstrainCores=no" "ConstrainDevices=no" >/etc/slurm/cgroup.conf
    cat >"$CONF.tmp" <<EOF
# Written by PyTrain's scripts/start_slurm.sh: a test cluster, two slurmd on one host.
ClusterName=pytrain
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdLogFile=$LOGDIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
SchedulerType=sched/backfill
SelectType=select/cons_tres
# Memory is a consumable resource, so --mem is a limit the nodes enforce.
SelectTypeParameters=CR_Core_Memory
# A job without --mem gets this much per node, not the whole node (two jobs fit on a node).
DefMemPerNode=1000
$MEMORY_LINES
AccountingStorageType=accounting_storage/none
# The orchestrator decides what happens after a node failure; Slurm does not re-queue by itself.
JobRequeue=0
ReturnToService=2
MinJobAge=300
# scancel: SIGTERM, then SIGKILL after KillWait seconds (a cancelled job leaves squeue within seconds).
KillWait=2
SlurmdTimeout=30
InactiveLimit=0
MpiDefault=none
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 CPUs=$CPUS RealMemory=$NODE_MEMORY State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 CPUs=$CPUS RealMemory=$NODE_MEMORY State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    REWROTE=1
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "${REWROTE:-0}" = 1 ]; then
    # Plugins are read at start: restart whatever runs with the old configuration.
    for pidfile in /run/slurm/slurmd-n1.pid /run/slurm/slurmd-n2.pid /run/slurm/slurmctld.pid; do
        if running "$pidfile"; then
            pid="$(cat "$pidfile")"
            kill "$pid"
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
fi
if ! running /run/slurm/slurmctld.pid; then
    echo "start_slurm: starting slurmctld (log: $LOGDIR/slurmctld.log)"
    /usr/sbin/slurmctld
fi
for node in n1 n2; do
    install -d -m 0755 "/var/spool/slurmd/$node"
    if ! running "/run/slurm/slurmd-$node.pid"; then
        echo "start_slurm: starting slurmd -N $node (log: $LOGDIR/slurmd-$node.log)"
        /usr/sbin/slurmd -N "$node"
    fi
done

for _ in $(seq 1 "$WAIT"); do
    if cluster_idle; then
        echo "start_slurm: n1 and n2 are idle"
        exit 0
    fi
    # A node left down by an earlier test (scontrol update state=down) comes back here.
    for node in $(sinfo -h -N -n n1,n2 -o '%N %t' 2>/dev/null | awk '$2 ~ /down|drain|fail/ {print $1}'); do
        scontrol update nodename="$node" state=resume 2>/dev/null || true
    done
    sleep 1
done
echo "start_slurm: n1 and n2 are not idle after ${WAIT}s:" >&2
sinfo -N >&2 || true
tail -n 20 "$LOGDIR/slurmctld.log" >&2 || true
exit 1
