#!/usr/bin/env bash
# Stop the Slurm started by start_local_slurm.sh: cancel jobs, wait, then slurmd(s), slurmctld
# (by their pid files; slurmstepd survives a slurmd that dies first). munged is left running.
set -uo pipefail
DIR="${FTL_SLURM_DIR:-/tmp/ftl-slurm}"
export SLURM_CONF="$DIR/slurm.conf"
[ -f "$SLURM_CONF" ] || exit 0
scancel --user="$(id -un)" 2>/dev/null
for _ in $(seq 1 30); do
    [ -z "$(squeue -h 2>/dev/null)" ] && break
    sleep 1
done
for pidfile in "$DIR"/slurmd-*.pid "$DIR/slurmctld.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
sleep 1
# munged stays: the system's own Slurm (or another user's) may use it (trial 64a: not said).
if pgrep -x munged >/dev/null 2>&1; then
    echo "stopped the local Slurm in $DIR; munged is left running (other Slurm users may need it; stop it with: pkill -x munged)"
fi
