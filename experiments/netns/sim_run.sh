#!/usr/bin/env bash
# Validate the simulated clock (--network, docs/simulation.md) on real shaped links (as root):
#
#   experiments/netns/sim_run.sh [OUTDIR]          # default OUTDIR: $TMPDIR/choco-simnet
#
# Every MPI rank runs in its own network namespace esimI with one link ("v", 10.77.0.I+1)
# into a bridge; the link's egress (what the rank sends) is shaped to $RATE_GBIT Gbit/s by
# tc tbf, receiving is not: the clock's one-NIC-per-node model. MPICH talks TCP over these
# links (libfabric tcp; the PMI connection is the inherited descriptor, so namespaces do not
# matter to it). In one go:
# 0. one plain TCP stream between two namespaces (the payload rate, for the record);
# 1. consensus rounds: `python -m choco.bench gossip` on ring:N for every N in $NS (or $N), $REPEAT
#    times (each run measures its own encode and decode times, which its simulation uses);
# 2. training: `choco-train --backend mpi` on ring:$TRAIN_N for every spec@gamma in
#    $TRAIN_SPECS, $REPEAT times, each rank timing its own local steps, encode, waits and
#    decode (experiments/netns/timed_train.py);
# 3. `python -m experiments.netns.compare_sim OUTDIR` simulates each of them in process
#    under --network with those times and prints the table (OUTDIR/validation.md).
# Namespaces and the bridge are always deleted at the end.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-${TMPDIR:-/tmp}/choco-simnet}
# N (one size, as before) is still taken; NS lists several
NS=${NS:-${N:-2 4}}
REPEAT=${REPEAT:-3}
NUMEL=${NUMEL:-2000000}
SPECS=${SPECS:-identity,sign,topk:0.01}
ROUNDS=${ROUNDS:-10}
TRAIN_N=${TRAIN_N:-4}
TRAIN_SPECS=${TRAIN_SPECS:-identity@1 sign@0.5}
TRAIN_ARGS=${TRAIN_ARGS:---epochs 5 --seed 0}
RATE_GBIT=${RATE_GBIT:-1}
ALPHA_US=${ALPHA_US:-50}
TIMEOUT=${TIMEOUT:-900}
# more ranks than cores: a rank waiting in MPI sleeps a microsecond after a few empty polls
# instead of spinning on the core its neighbour needs (docs/performance.md)
MPI_ENV=${MPI_ENV:--genv MPIR_CVAR_CH4_PROGRESS_THROTTLE 1 -genv MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT 64}
PY=${PYTHON:-$(command -v python)}
MPIEXEC=${MPIEXEC:-$(command -v mpiexec || echo "$(dirname "$PY")/mpiexec")}
BR=esimbr
MAXN=$(printf '%s\n' $NS "$TRAIN_N" | sort -n | tail -1)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$OUT"
mkdir -p "$OUT"

teardown() {
    for i in $(seq 0 $((MAXN - 1))); do ip netns del "esim$i" 2>/dev/null || true; done
    ip link del "$BR" 2>/dev/null || true
}
trap teardown EXIT INT TERM

setup() {  # $1: tbf rate
    teardown
    ip link add "$BR" type bridge
    ip link set "$BR" up
    for i in $(seq 0 $((MAXN - 1))); do
        ip netns add "esim$i"
        ip link add "esimh$i" type veth peer name v netns "esim$i"
        ip link set "esimh$i" master "$BR" up
        ip -n "esim$i" addr add "10.77.0.$((i + 1))/24" dev v
        ip -n "esim$i" link set lo up
        ip -n "esim$i" link set v up
        ip netns exec "esim$i" tc qdisc replace dev v root tbf rate "$1" burst 256kb \
            latency 50ms
    done
}

mpi() {  # $1: ranks; the rest: the program and its arguments (one rank per namespace)
    local n=$1 groups=()
    shift
    for i in $(seq 0 $((n - 1))); do
        [ "$i" -gt 0 ] && groups+=(:)
        groups+=(-n 1 ip netns exec "esim$i" "$PY" "$@")
    done
    timeout "$TIMEOUT" "$MPIEXEC" -genv MPIR_CVAR_NOLOCAL 1 -genv MPIR_CVAR_CH4_NETMOD ofi \
        -genv FI_PROVIDER tcp -genv FI_TCP_IFACE v -genv OMP_NUM_THREADS 1 \
        -genv PYTHONPATH "$PYTHONPATH" $MPI_ENV "${groups[@]}"
}

load() { echo "$1: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, $(nproc) CPUs)" >> "$OUT/load.txt"; }

cd "$ROOT"
setup "${RATE_GBIT}gbit"
load "start"
# one TCP stream esim1 -> esim0: the payload rate the shaped link gives (printed only; the
# simulation uses RATE_GBIT · 1448/1514, the TCP payload share of an MTU-1500 frame)
ip netns exec esim0 "$PY" -m experiments.netns.stream recv 5599 200 > "$OUT/stream.json" &
ip netns exec esim1 "$PY" -m experiments.netns.stream send 10.77.0.1 5599 200
wait
cat "$OUT/stream.json"
for r in $(seq 1 "$REPEAT"); do
    for n in $NS; do
        mpi "$n" -m choco.bench gossip --topology "ring:$n" --numel "$NUMEL" --specs "$SPECS" \
            --rounds "$ROUNDS" --json | tee "$OUT/gossip-n$n-r$r.txt"
    done
done
load "after the consensus rounds"
for r in $(seq 1 "$REPEAT"); do
    for sg in $TRAIN_SPECS; do
        spec=${sg%@*}
        gamma=${sg##*@}
        dir="$OUT/train-${spec//[:\/]/_}-r$r"
        mkdir -p "$dir"
        # shellcheck disable=SC2206
        args=(--topology "ring:$TRAIN_N" --compressor "$spec" --gamma "$gamma" $TRAIN_ARGS)
        "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${args[@]}" \
            > "$dir/args.json"
        mpi "$TRAIN_N" -m experiments.netns.timed_train "$dir/timing-rank{rank}.json" -- \
            "${args[@]}" --backend mpi --out "$dir/run"
    done
done
load "after the training runs"
ip netns exec esim0 tc -s qdisc show dev v | tee "$OUT/qdisc.txt"
"$PY" -m experiments.netns.compare_sim "$OUT" --gbit "$RATE_GBIT" --latency-us "$ALPHA_US" \
    | tee "$OUT/validation.md"
