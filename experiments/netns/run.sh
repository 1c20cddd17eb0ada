#!/usr/bin/env bash
# Validate the whatif link model on a slowed link (run as root, from anywhere):
#
#   experiments/netns/run.sh [OUTDIR]     # default OUTDIR: $TMPDIR/choco-netns (/tmp)
#
# 1. in a fresh network namespace without shaping, `mpiexec -n $N python -m choco.bench
#    gossip` over TCP (MPICH's shared memory off) measures the CPU part of each round;
# 2. the same with the namespace's loopback shaped to $RATE_GBIT Gbit/s by tbf: all N ranks
#    share this one link, as the whatif model's `--link shared` assumes;
# 3. `python -m choco.bench whatif --validate` compares the measured rounds with the model.
# The namespace is always deleted at the end (teardown.sh), also on error or Ctrl-C.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-${TMPDIR:-/tmp}/choco-netns}
N=${N:-8}
NUMEL=${NUMEL:-2000000}
SPECS=${SPECS:-sign,topk:0.01,natural,identity}
ROUNDS=${ROUNDS:-10}
RATE_GBIT=${RATE_GBIT:-1}
ALPHA_US=${ALPHA_US:-20}
TIMEOUT=${TIMEOUT:-900}
PY=${PYTHON:-$(command -v python)}
MPIEXEC=${MPIEXEC:-$(command -v mpiexec || echo "$(dirname "$PY")/mpiexec")}
NS=${CHOCO_NETNS:-choco}
export CHOCO_NETNS=$NS
mkdir -p "$OUT"
trap '"$HERE/teardown.sh"' EXIT INT TERM
# MPICH over libfabric's TCP provider on the namespace's loopback; NOLOCAL keeps ranks on
# one host from using shared memory, which would bypass the shaped link.
TCP_ENV=(MPIR_CVAR_NOLOCAL=1 MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp FI_TCP_IFACE=lo
         OMP_NUM_THREADS=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}")
bench() {
    ip netns exec "$NS" env "${TCP_ENV[@]}" timeout "$TIMEOUT" "$MPIEXEC" -n "$N" "$PY" \
        -m choco.bench gossip --numel "$NUMEL" --specs "$SPECS" --rounds "$ROUNDS" --json
}
cd "$ROOT"
RATE=none "$HERE/setup.sh"
bench | tee "$OUT/unshaped.txt"
RATE="${RATE_GBIT}gbit" "$HERE/setup.sh"
bench | tee "$OUT/shaped.txt"
ip netns exec "$NS" tc -s qdisc show dev lo | tee "$OUT/qdisc.txt"
"$PY" -m choco.bench whatif --validate "$OUT/shaped.txt" --calibrate "$OUT/unshaped.txt" \
    --bandwidth "$RATE_GBIT" --latency-us "$ALPHA_US" | tee "$OUT/validation.md"
