#!/usr/bin/env bash
# Delete the namespace made by setup.sh, ending any process still running inside it.
# Idempotent: does nothing if the namespace does not exist.
set -uo pipefail
NS=${CHOCO_NETNS:-choco}
if ip netns list | grep -qw "$NS"; then
    pids=$(ip netns pids "$NS" 2>/dev/null || true)
    if [ -n "$pids" ]; then
        kill $pids 2>/dev/null || true
        sleep 1
    fi
    ip netns del "$NS"
    echo "netns $NS deleted"
fi
