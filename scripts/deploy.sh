#!/usr/bin/env bash
# A deploy without a reconnect storm (issue 9): `throng-load deploy` across two servers.
#
# Starts server A (--drain-ms DRAIN_MS) and server B on free loopback ports with the same
# generated JWT secret and API key, connects N clients to A, asks A to drain (POST
# /v1/drain), and lets the clients follow their `reconnect` hints (after_ms plus up to
# JITTER_MS) to B, where pushes then flow (RATE/s to users, TOPIC_RATE/s to TOPICS) for
# SECS. The report (target/reports/deploy-STAMP.json) has the reconnect curve per 100 ms
# and its peak against N / (DRAIN_MS / 100), the hints received before the close, and
# missing/duplicated on B. A exits by itself once drained; both are stopped by PID on exit.
#
# Environment (all optional):
#   N=10000 DRAIN_MS=5000 JITTER_MS=100 RATE=2000 SECS=10 TOPICS=room:1 TOPIC_RATE=10
#   SOURCE_IPS=127.0.0.2-127.0.0.9 NO_BUILD=1
#   SERVER=, LOAD=  other throng and throng-load binaries (e.g. an older build)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
N=${N:-10000} DRAIN_MS=${DRAIN_MS:-5000} JITTER_MS=${JITTER_MS:-100}
RATE=${RATE:-2000} SECS=${SECS:-10} TOPICS=${TOPICS:-room:1} TOPIC_RATE=${TOPIC_RATE:-10}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
build_release_if_stale deploy
SERVER=${SERVER:-target/release/throng}
LOAD=${LOAD:-target/release/throng-load}

mkdir -p target/reports
STAMP=$(date -u +%Y%m%d-%H%M%S)
WORK=$(mktemp -d -t throng-deploy.XXXXXX)
A_PID= B_PID=
cleanup() { stop_server_pid deploy "$A_PID" 10; stop_server_pid deploy "$B_PID" 10; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials deploy
ARGS=(serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --log-format json
    --max-connections $((N + 1000)))
"$SERVER" "${ARGS[@]}" --drain-ms "$DRAIN_MS" >"$WORK/a.out" 2>"$WORK/a.log" &
A_PID=$!
wait_listening deploy "$A_PID" "$WORK/a.log" || exit 1
A_WS=$CLIENT_ADDR A_API=$API_ADDR
"$SERVER" "${ARGS[@]}" >"$WORK/b.out" 2>"$WORK/b.log" &
B_PID=$!
wait_listening deploy "$B_PID" "$WORK/b.log" || exit 1

set +e
"$LOAD" deploy --url "ws://$A_WS/ws" --api "http://$A_API" \
    --reconnect-url "ws://$CLIENT_ADDR/ws" --reconnect-api "http://$API_ADDR" \
    --connections "$N" --connect-rate 5000 --source-ips "$SOURCE_IPS" --jitter-ms "$JITTER_MS" \
    --rate "$RATE" --duration-secs "$SECS" --topics "$TOPICS" --topic-rate "$TOPIC_RATE" \
    --json "target/reports/deploy-$STAMP.json"
rc=$?
set -e
echo "deploy: report target/reports/deploy-$STAMP.json (exit status $rc)"
exit $rc
