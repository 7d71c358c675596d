#!/usr/bin/env bash
# Issue 11 items 3 to 6 on a host with cores to spare: unpaced handshakes, unicast
# through the push API, a broadcast every 25 ms to 15,000 connections (scripts/ab.sh,
# two builds alternately) and the server CPU per ping round trip (build B alone: builds
# before 2026-12-01 count no pings), with the server on some cores and the load generator
# on the others, so that neither takes the other's CPU. Prints each section's ab summary
# and every run's figures.
#
# Usage: scripts/ab-hot-paths.sh BUILD_A BUILD_B
#   BUILD_A, BUILD_B  throng binaries (e.g. the build issue 11 started from, e2a8859, and
#                     this one); target/release/throng-load is the load generator for both.
#
# Environment: SERVER_CPUS=0-7 LOAD_CPUS=8-15 (taskset lists; on a host with fewer than
#   16 cores, or without taskset, nothing is pinned), PAIRS=2 (runs of each build; the
#   handshake section runs one more), HS_N=30000 (handshake connections; 20000 when only
#   127.0.0.1 can be a source address), UN_N=10000, BC_N=15000, HB_N=15000,
#   SHARDS=8 (the server's shards for the push sections). Raise the open-files limit
#   first (tuning/): every section holds N connections in one server.
set -uo pipefail
(($# == 2)) || { sed -n '2,19p' "$0" >&2; exit 2; }
A=$1 B=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
for bin in "$A" "$B" target/release/throng-load; do
    [[ -x $bin ]] || { echo "ab-hot-paths: $bin is not an executable" >&2; exit 2; }
done
echo "ab-hot-paths: $(nproc) cores, $(uname -srm); $(grep -m1 'model name' /proc/cpuinfo)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "ab-hot-paths: open files $(ulimit -n)"
export NO_BUILD=1
SOURCE_IPS=$(python3 - <<'PY'
import socket
try:
    l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)
    c = socket.socket(); c.bind(("127.0.0.5", 0)); c.connect(l.getsockname())
    print("127.0.0.2-127.0.0.9")
except OSError:
    print("127.0.0.1")
PY
)
export SOURCE_IPS
PIN=()
SERVER_CPUS=${SERVER_CPUS:-0-7}
LOAD_CPUS=${LOAD_CPUS:-8-15}
if command -v taskset >/dev/null && taskset -c "$LOAD_CPUS" true 2>/dev/null \
    && taskset -c "$SERVER_CPUS" true 2>/dev/null; then
    export SERVER_CPUS
    PIN=(taskset -c "$LOAD_CPUS")
    echo "ab-hot-paths: server on cores $SERVER_CPUS, load generator on $LOAD_CPUS"
else
    echo "ab-hot-paths: not pinned (no taskset, or cores $SERVER_CPUS/$LOAD_CPUS missing)"
    unset SERVER_CPUS
fi
echo "ab-hot-paths: source addresses $SOURCE_IPS"

# Runs scripts/ab.sh (the environment given before it passes through), then prints the
# last lines of every run's output.
section() {
    local name=$1 secs=$2 out
    shift 2
    echo "== $(date -u +%T) $name"
    out=$(timeout "$secs" ${PIN[@]+"${PIN[@]}"} scripts/ab.sh "$@" 2>&1)
    echo "$out"
    local dir
    dir=$(sed -n 's/.*outputs in \(\/[^ ]*\)$/\1/p' <<<"$out" | head -1)
    if [[ -n $dir && -d $dir ]]; then
        for f in "$dir"/*.log; do
            echo "--- $(basename "$f")"
            grep -v '^{' "$f" | tail -6
        done
    fi
}
HS_N=${HS_N:-30000}
[[ $SOURCE_IPS == 127.0.0.1 ]] && HS_N=$((HS_N > 20000 ? 20000 : HS_N))
P=${PAIRS:-2}
SHARDS=${SHARDS:-8}
N=$HS_N PROCS=4 FIGURE='([0-9.]+) connections/s' \
    section handshakes 300 handshake-cost.sh "$A" "$B" $((P + 1))
SHARDS=$SHARDS N=${UN_N:-10000} PROCS=2 DURATION=8 WINDOW=4 \
    section unicast 300 push-cost.sh "$A" "$B" "$P"
SHARDS=$SHARDS TARGET=broadcast N=${BC_N:-15000} RATE=40 PROCS=2 DURATION=8 WINDOW=4 \
    section broadcast 300 push-cost.sh "$A" "$B" "$P"
echo "== $(date -u +%T) heartbeats (B only)"
for _ in $(seq "$P"); do
    N=${HB_N:-15000} WINDOW=10 SERVER=$B timeout 120 ${PIN[@]+"${PIN[@]}"} \
        scripts/heartbeat-cost.sh 2>&1 | grep -v '^{' | tail -3
done
echo "== $(date -u +%T) done"
