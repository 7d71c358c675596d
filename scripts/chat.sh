#!/usr/bin/env bash
# Client publishing at scale (issue 12 item 7): a release server and `throng-load chat`,
# ROOMS rooms of MEMBERS members, each member publishing RATE messages/s to its room for
# SECS seconds; the report gives deliveries/s, publish-answer and fan-out latency, and
# missing/duplicated per room (exit 1 if any). Stops what it started, by PID.
#
# Environment: ROOMS=100 MEMBERS=20 RATE=2 SECS=20 PROCS=1, JSON=chat.json (report),
#   NO_BUILD=1 (skip the build check), SERVER=path (another throng binary).
set -euo pipefail
ROOMS=${ROOMS:-100}
MEMBERS=${MEMBERS:-20}
RATE=${RATE:-2}
SECS=${SECS:-20}
PROCS=${PROCS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale chat
SERVER=${SERVER:-target/release/throng}
LOAD=target/release/throng-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-chat.XXXXXX)
SRV_PID=
cleanup() {
    stop_server_pid chat "$SRV_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials chat
conns=$((ROOMS * MEMBERS))
start_server chat "$WORK" --max-connections $((conns + 1000)) || exit 1
echo "chat: $ROOMS rooms x $MEMBERS members, $RATE msg/s per member for ${SECS}s, server pid $SRV_PID"
cpu0=$(awk '{print $14 + $15}' "/proc/$SRV_PID/stat")
rc=0
timeout $((SECS + 120)) "$LOAD" chat --url "ws://$CLIENT_ADDR/ws" --rooms "$ROOMS" \
    --members "$MEMBERS" --rate "$RATE" --duration-secs "$SECS" --procs "$PROCS" \
    ${JSON:+--json "$JSON"} || rc=$?
cpu1=$(awk '{print $14 + $15}' "/proc/$SRV_PID/stat")
echo "chat: server CPU $(( (cpu1 - cpu0) / $(getconf CLK_TCK) )) s over the run (connect, publish, drain, close)"
exit "$rc"
