#!/usr/bin/env bash
# Validate the simulated clock (--network, docs/simulation.md) on real shaped links (as root):
#
#   experiments/netns/sim_run.sh [OUTDIR]          # default OUTDIR: $TMPDIR/choco-simnet
#
# Every MPI rank runs in its own network namespace esimI with one link ("v", 10.77.0.I+1)
# into a bridge; the link's egress (what the rank sends) is shaped to $RATE_GBIT Gbit/s by
# tc tbf, receiving is not: the clock's one-NIC-per-node model. MPICH talks TCP over these
# links (libfabric tcp; the PMI connection is the inherited descriptor, so namespaces do not
# matter to it).
# 1. unshaped: `python -m choco.bench gossip` measures each round's CPU part;
# 2. shaped: the same rounds on the shaped links;
# 3. `python -m experiments.netns.compare_sim` runs the same rounds in process under
#    --network (bandwidth, latency, and the CPU times of step 1) and compares.
# Namespaces and the bridge are always deleted at the end.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-${TMPDIR:-/tmp}/choco-simnet}
N=${N:-2}
NUMEL=${NUMEL:-2000000}
SPECS=${SPECS:-identity,sign,topk:0.01}
ROUNDS=${ROUNDS:-10}
RATE_GBIT=${RATE_GBIT:-1}
ALPHA_US=${ALPHA_US:-50}
TIMEOUT=${TIMEOUT:-900}
PY=${PYTHON:-$(command -v python)}
MPIEXEC=${MPIEXEC:-$(command -v mpiexec || echo "$(dirname "$PY")/mpiexec")}
BR=esimbr
mkdir -p "$OUT"

teardown() {
    for i in $(seq 0 $((N - 1))); do ip netns del "esim$i" 2>/dev/null || true; done
    ip link del "$BR" 2>/dev/null || true
}
trap teardown EXIT INT TERM

setup() {  # $1: tbf rate or "none"
    teardown
    ip link add "$BR" type bridge
    ip link set "$BR" up
    for i in $(seq 0 $((N - 1))); do
        ip netns add "esim$i"
        ip link add "esimh$i" type veth peer name v netns "esim$i"
        ip link set "esimh$i" master "$BR" up
        ip -n "esim$i" addr add "10.77.0.$((i + 1))/24" dev v
        ip -n "esim$i" link set lo up
        ip -n "esim$i" link set v up
        if [ "$1" != none ]; then
            ip netns exec "esim$i" tc qdisc replace dev v root tbf rate "$1" burst 256kb \
                latency 50ms
        fi
    done
}

bench() {
    local args=(-m choco.bench gossip --topology "ring:$N" --numel "$NUMEL" --specs "$SPECS"
                --rounds "$ROUNDS" --json)
    local groups=()
    for i in $(seq 0 $((N - 1))); do
        [ "$i" -gt 0 ] && groups+=(:)
        groups+=(-n 1 ip netns exec "esim$i" "$PY" "${args[@]}")
    done
    timeout "$TIMEOUT" "$MPIEXEC" -genv MPIR_CVAR_NOLOCAL 1 -genv MPIR_CVAR_CH4_NETMOD ofi \
        -genv FI_PROVIDER tcp -genv FI_TCP_IFACE v -genv OMP_NUM_THREADS 1 \
        -genv PYTHONPATH "$ROOT${PYTHONPATH:+:$PYTHONPATH}" "${groups[@]}"
}

cd "$ROOT"
setup none
bench | tee "$OUT/unshaped.txt"
setup "${RATE_GBIT}gbit"
bench | tee "$OUT/shaped.txt"
ip netns exec esim0 tc -s qdisc show dev v | tee "$OUT/qdisc.txt"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m experiments.netns.compare_sim \
    "$OUT/shaped.txt" "$OUT/unshaped.txt" --gbit "$RATE_GBIT" --latency-us "$ALPHA_US" \
    | tee "$OUT/validation.md"
