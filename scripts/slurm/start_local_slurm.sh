#!/usr/bin/env bash
# Start a real Slurm on this machine with two nodes (n1, n2: two slurmd on this host), for the
# tests and for trying `ftl slurm` without a cluster. Needs root (installs Debian packages when
# missing, runs munged/slurmctld/slurmd). Prints the SLURM_CONF to export; idempotent.
#   bash scripts/slurm/start_local_slurm.sh         start (or reuse) it
#   bash scripts/slurm/stop_local_slurm.sh          stop what this script started
set -euo pipefail
DIR="${FTL_SLURM_DIR:-/tmp/ftl-slurm}"
CONF="$DIR/slurm.conf"
CPUS="${FTL_SLURM_CPUS:-2}"

if [ "$(id -u)" != 0 ]; then
    echo "start_local_slurm.sh: needs root (it installs and starts slurmctld/slurmd/munged)" >&2
    exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge from the Debian archive ..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
export SLURM_CONF="$CONF"
if [ -f "$CONF" ] && scontrol ping >/dev/null 2>&1; then
    # Running: reuse it while every node is up, busy or not. A restart cancels every job (a second
    # `scripts/test.sh` cancelled another user's running training), so one with jobs is never restarted.
    unhealthy="$(sinfo -h -N -o '%N %T' | grep -Ev ' (idle|mixed|allocated|completing|planned)$' || true)"
    if [ -z "$unhealthy" ]; then
        echo "$CONF"  # already running
        exit 0
    fi
    if [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ "${FTL_SLURM_RESTART:-0}" != 1 ]; then
        echo "start_local_slurm.sh: nodes not up ($(echo "$unhealthy" | tr '\n' ' ')), and jobs are queued or" \
            "running (squeue): a restart would cancel them; FTL_SLURM_RESTART=1 restarts anyway" >&2
        exit 1
    fi
fi
bash "$(dirname "$0")/stop_local_slurm.sh" >/dev/null 2>&1 || true
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
HOST="$(hostname)"
cat > "$CONF" <<CONF
ClusterName=ftl-local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
# Short credential lifetime: a requeued job restarts in ~20 s instead of ~2 min.
AuthInfo=cred_expire=10
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
SlurmctldPort=16817
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=n[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001-17002 CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
install -d -o munge -g munge -m 0755 /run/munge
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
fi
slurmctld -f "$CONF"
for node in n1 n2; do
    mkdir -p "$DIR/spool/$node"
    slurmd -f "$CONF" -N "$node"
done
for _ in $(seq 1 60); do
    if [ "$(sinfo -h -N -o %T 2>/dev/null | sort -u)" = "idle" ]; then
        echo "$CONF"
        exit 0
    fi
    sleep 0.5
done
echo "start_local_slurm.sh: nodes did not become idle; see $DIR/log" >&2
sinfo -N >&2 || true
exit 1
