#!/usr/bin/env bash
# Stop the test cluster that slurm/testing/start-cluster.sh started in CHOCO_SLURM_DIR
# (/tmp/choco-slurm): cancel its jobs, then stop the slurmd daemons, slurmctld and munged,
# each by the pid in its pid file and only if that process is still that daemon. Safe to
# run twice.
#
#   bash slurm/testing/stop-cluster.sh            # keeps the folder (state, logs)
#   bash slurm/testing/stop-cluster.sh --purge    # also deletes the folder
set -uo pipefail

DIR=${CHOCO_SLURM_DIR:-/tmp/choco-slurm}
case $DIR in /*) ;; *) DIR=$(pwd)/$DIR ;; esac
CONF=$DIR/etc/slurm.conf
PURGE=0
[ "${1:-}" = --purge ] && PURGE=1
export PATH=$PATH:/usr/sbin:/sbin

log() { echo "stop-cluster: $*" >&2; }

# alive PID: the process exists and is not a zombie waiting to be reaped
alive() { [ -r "/proc/$1/stat" ] && ! sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | grep -q '^Z'; }

# pid_of NAME PIDFILE: the pid if the file names a live process whose command is NAME
pid_of() {
    local pid
    [ -s "$2" ] || return 1
    pid=$(cat "$2")
    alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$1" && echo "$pid"
}

# stop NAME PIDFILE...: SIGTERM to each daemon named by a pid file, then wait for all of
# them (SIGKILL after 15 s)
stop() {
    local name=$1 f pid pids=()
    shift
    for f in "$@"; do
        [ -e "$f" ] || continue
        if pid=$(pid_of "$name" "$f"); then
            kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
        fi
        rm -f "$f"
    done
    for pid in ${pids[@]+"${pids[@]}"}; do
        for _ in $(seq 1 150); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$name (pid $pid) still running 15 s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
        log "stopped $name (pid $pid)"
    done
}

if [ -e "$CONF" ] && pid_of slurmctld "$DIR/run/slurmctld.pid" >/dev/null; then
    export SLURM_CONF=$CONF
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u)
    if [ -n "$jobs" ]; then
        log "cancelling jobs: ${jobs//$'\n'/ }"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null
        for _ in $(seq 1 30); do
            [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

stop slurmd "$DIR"/run/slurmd-*.pid
stop slurmctld "$DIR/run/slurmctld.pid"
stop munged "$DIR/munge/munged.pid"

if [ $PURGE = 1 ] && [ -e "$DIR/etc/slurm.conf" ]; then
    rm -rf "$DIR"
    log "removed $DIR"
fi
exit 0
