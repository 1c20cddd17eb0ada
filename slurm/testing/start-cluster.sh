#!/usr/bin/env bash
# A one-machine SLURM test cluster: munged, slurmctld and slurmd on this host, everything
# (config, munge key, state, spool, logs, pid files) in one private folder.
#
#   bash slurm/testing/start-cluster.sh          # then run the export line it prints
#   bash slurm/testing/stop-cluster.sh
#
# Environment (all optional):
#   CHOCO_SLURM_DIR      private folder (/tmp/choco-slurm)
#   CHOCO_SLURM_PORT     slurmctld port; the slurmd of node i listens on PORT+i (16817)
#   CHOCO_SLURM_CPUS     CPUs declared for each node, may exceed the real cores (8)
#   CHOCO_SLURM_NODES    1: one node, this host, named `hostname -s` (default); N > 1: N
#                        slurmd daemons on this host, nodes HOST-1 ... HOST-N, so that
#                        multi-node jobs (sbatch -N 2 ...) can be tried on one machine
#   CHOCO_SLURM_TIMEOUT  seconds to wait for the nodes to become idle (60)
#   CHOCO_SLURM_INSTALL  0: never run apt-get, fail if SLURM is missing (1)
#
# Needs root: the daemons run as root (SlurmUser=root). Installs the Debian packages
# slurm-wlm and munge (apt-get, no recommends) when a program is missing. Running it again
# while the cluster is up starts only what is not running and prints the same export line.
set -euo pipefail

DIR=${CHOCO_SLURM_DIR:-/tmp/choco-slurm}
PORT=${CHOCO_SLURM_PORT:-16817}
CPUS=${CHOCO_SLURM_CPUS:-8}
NODES=${CHOCO_SLURM_NODES:-1}
TIMEOUT=${CHOCO_SLURM_TIMEOUT:-60}
INSTALL=${CHOCO_SLURM_INSTALL:-1}
HOST=$(hostname -s)
export PATH=$PATH:/usr/sbin:/sbin

die() { echo "start-cluster: error: $*" >&2; exit 1; }
log() { echo "start-cluster: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the test cluster runs its daemons as root); try: sudo bash $0"
case $DIR in /*) ;; *) DIR=$(pwd)/$DIR ;; esac
# unix socket paths (munge, slurmd's step sockets) are limited to 107 bytes
[ ${#DIR} -le 60 ] || die "CHOCO_SLURM_DIR is too long for unix sockets (${#DIR} > 60 characters): $DIR"
for v in PORT CPUS NODES TIMEOUT; do
    case ${!v} in '' | *[!0-9]* | 0) die "CHOCO_SLURM_$v must be a positive whole number, got '${!v}'" ;; esac
done
if [ "$NODES" = 1 ]; then NAMES=$HOST; else NAMES=$(seq -f "$HOST-%g" 1 "$NODES"); fi
NODELIST=$(echo $NAMES | tr ' ' ,)
CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket

# --- 1. packages ------------------------------------------------------------------------
APT_LOG=${TMPDIR:-/tmp}/choco-slurm-apt.log
have_pmi2() {
    local d
    for d in /usr/lib/*/slurm-wlm /usr/lib/slurm-wlm /usr/lib/slurm /usr/lib64/slurm; do
        [ -e "$d/mpi_pmi2.so" ] && return 0
    done
    return 1
}
missing() {
    local b
    for b in munged munge unmunge slurmctld slurmd sinfo sbatch srun scontrol squeue scancel; do
        command -v "$b" >/dev/null 2>&1 || { echo "$b"; return 0; }
    done
    have_pmi2 || echo "SLURM's mpi/pmi2 plugin"
}
if [ -n "$(missing)" ]; then
    [ "$INSTALL" != 0 ] || die "$(missing) not found and CHOCO_SLURM_INSTALL=0; install with: apt-get install -y --no-install-recommends slurm-wlm munge"
    command -v apt-get >/dev/null || die "$(missing) not found and no apt-get here; install SLURM (slurmctld, slurmd, the client commands, munge) yourself"
    log "installing slurm-wlm and munge with apt-get (log: $APT_LOG) ..."
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >"$APT_LOG" 2>&1; then
        apt-get update -q >>"$APT_LOG" 2>&1 || true
        apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$APT_LOG" 2>&1 \
            || { tail -20 "$APT_LOG" >&2; die "apt-get install slurm-wlm munge failed (log above)"; }
    fi
    [ -z "$(missing)" ] || die "still missing after the install: $(missing)"
fi

# --- 2. folder, munge key, slurm.conf ---------------------------------------------------
# munged wants its socket folder searchable by everyone and the key readable by root only
mkdir -p "$DIR"/{etc,munge,state,spool,log,run}
chmod 755 "$DIR" "$DIR/munge"
chmod 700 "$DIR/state" "$DIR/spool"
if [ ! -s "$DIR/munge/munge.key" ]; then
    command -v mungekey >/dev/null && mungekey --create --keyfile="$DIR/munge/munge.key" 2>/dev/null \
        || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 600 "$DIR/munge/munge.key"
: >>"$DIR/etc/plugstack.conf"  # no SPANK plugins

{
    cat <<EOF
# written by slurm/testing/start-cluster.sh: a one-machine test cluster
ClusterName=choco
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
PlugStackConfig=$DIR/etc/plugstack.conf
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
MpiDefault=pmi2
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=600
SlurmdTimeout=300
EOF
    i=0
    for name in $NAMES; do
        i=$((i + 1))
        echo "NodeName=$name NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$CPUS State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$NODELIST Default=YES MaxTime=UNLIMITED OverSubscribe=YES State=UP"
} >"$CONF.new"

# running NAME PIDFILE: the pid file names a live process (not a zombie) whose command
# line has NAME
running() {
    local pid
    [ -s "$2" ] || return 1
    pid=$(cat "$2")
    [ -r "/proc/$pid/stat" ] && ! sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | grep -q '^Z' \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$1"
}

if [ -e "$CONF" ] && ! cmp -s "$CONF" "$CONF.new" && running slurmctld "$DIR/run/slurmctld.pid"; then
    rm -f "$CONF.new"
    die "a cluster with another configuration runs in $DIR; stop it first: CHOCO_SLURM_DIR=$DIR bash $(dirname "$0")/stop-cluster.sh"
fi
mv "$CONF.new" "$CONF"
export SLURM_CONF=$CONF

# --- 3. daemons -------------------------------------------------------------------------
log "starting munged, slurmctld and $NODES slurmd daemon(s) on this machine (as root; ports $PORT-$((PORT + NODES)), files in $DIR) unless already running"
tail_logs() {
    local f
    for f in "$DIR"/munge/munged.log "$DIR"/log/*.log; do
        [ -e "$f" ] && { echo "--- last lines of $f" >&2; tail -15 "$f" >&2; }
    done
    return 0
}
fail() {
    tail_logs
    die "$*; logs in $DIR/log, stop what did start with: CHOCO_SLURM_DIR=$DIR bash $(dirname "$0")/stop-cluster.sh"
}
# in_use PORT: something listens on 127.0.0.1:PORT
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! running munged "$DIR/munge/munged.pid"; then
    rm -f "$MUNGE_SOCKET"
    munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --log-file="$DIR/munge/munged.log" --pid-file="$DIR/munge/munged.pid" \
        --seed-file="$DIR/munge/munged.seed" || fail "munged did not start"
fi
munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null \
    || fail "munged does not answer on $MUNGE_SOCKET"

if ! running slurmctld "$DIR/run/slurmctld.pid"; then
    in_use "$PORT" && fail "port $PORT is in use (another SLURM?); choose another with CHOCO_SLURM_PORT"
    slurmctld -f "$CONF" || fail "slurmctld did not start"
fi
i=0
for name in $NAMES; do
    i=$((i + 1))
    if ! running slurmd "$DIR/run/slurmd-$name.pid"; then
        in_use $((PORT + i)) && fail "port $((PORT + i)) (slurmd of $name) is in use (another SLURM?); choose another CHOCO_SLURM_PORT"
        mkdir -p "$DIR/spool/$name"
        slurmd -f "$CONF" -N "$name" || fail "slurmd for node $name did not start"
    fi
done

# --- 4. wait until every node is up -----------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
resumed=0
while :; do
    # %t: idle, mix, alloc; a suffix (idle*, down~, ...) means not responding or not usable
    states=$(sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ' || true)
    up=$(echo "$states" | tr ' ' '\n' | grep -cE '=(idle|mix|alloc)$' || true)
    [ "$up" -ge "$NODES" ] && break
    if [ $resumed = 0 ] && echo "$states" | grep -qE '=(down|drain|drng|fail)'; then
        # nodes recovered from an old state file may stay down until told otherwise
        scontrol update NodeName="$NODELIST" State=RESUME >/dev/null 2>&1 || true
        resumed=1
    fi
    [ $SECONDS -lt $deadline ] || fail "nodes not idle after ${TIMEOUT}s (sinfo: ${states:-no answer})"
    running slurmctld "$DIR/run/slurmctld.pid" || fail "slurmctld exited"
    for name in $NAMES; do
        running slurmd "$DIR/run/slurmd-$name.pid" || fail "slurmd of node $name exited"
    done
    sleep 0.5
done

echo "export SLURM_CONF=$CONF" >"$DIR/env.sh"
log "cluster 'choco' up in $DIR: partition debug, $NODES node(s) $NODELIST with $CPUS CPUs each"
log "point the SLURM commands at it with the line below (or: source $DIR/env.sh)"
echo "export SLURM_CONF=$CONF"
