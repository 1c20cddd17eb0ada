#!/usr/bin/env bash
# Create the network namespace $CHOCO_NETNS (default "choco") with its loopback shaped by tbf.
#
#   RATE=1gbit experiments/netns/setup.sh      # shaped loopback (default 1gbit)
#   RATE=none  experiments/netns/setup.sh      # same namespace, no shaping (calibration)
#
# Idempotent: an existing namespace of that name is deleted first. Needs root (ip, tc).
# BURST must exceed the loopback MTU (65536 B): tbf silently drops every packet larger than
# its burst, so `burst 64kb` (65500 B) makes large TCP transfers over lo stall for ever.
set -euo pipefail
NS=${CHOCO_NETNS:-choco}
RATE=${RATE:-1gbit}
BURST=${BURST:-256kb}
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
if [ "$RATE" != none ]; then
    ip netns exec "$NS" tc qdisc replace dev lo root tbf rate "$RATE" burst "$BURST" latency 50ms
fi
echo "netns $NS: $(ip netns exec "$NS" tc qdisc show dev lo | head -1)"
