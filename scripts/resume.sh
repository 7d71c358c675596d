#!/usr/bin/env bash
# Delivery across abrupt reconnects (issue 9): `throng-load resume` against one server.
#
# Starts `throng serve` on free loopback ports with a generated JWT secret and API key,
# then runs `throng-load resume`: N connections, CHURN_FRACTION of them dropping (TCP
# reset, no Close) at CHURN_RATE drops/s and reconnecting OFFLINE_MS later with
# `since`/`epoch` (and re-subscribing each topic with them), while user pushes flow at
# RATE/s and topic pushes at TOPIC_RATE/s for SECS. The report (target/reports/
# resume-STAMP.json) proves per user and topic stream: expected, delivered, not replayed
# (after a resumed:false), missing, duplicated, out of order, resumed true/false. Exits
# with throng-load's status: 1 when anything went missing or came twice. The server is stopped by its PID on any exit.
#
# Environment (all optional):
#   N=10000 CHURN_FRACTION=0.2 CHURN_RATE=500 OFFLINE_MS=200 RATE=2000 SECS=30
#   TOPICS=room:1,room:2 TOPIC_RATE=10 SOURCE_IPS=127.0.0.2-127.0.0.9
#   EXTRA=       more server flags (e.g. "--history-size 20")
#   NO_BUILD=1   skip the release build (by default it runs only when sources are newer)
#   SERVER=path  another throng binary (default target/release/throng)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
N=${N:-10000} CHURN_FRACTION=${CHURN_FRACTION:-0.2} CHURN_RATE=${CHURN_RATE:-500}
OFFLINE_MS=${OFFLINE_MS:-200} RATE=${RATE:-2000} SECS=${SECS:-30}
TOPICS=${TOPICS:-room:1,room:2} TOPIC_RATE=${TOPIC_RATE:-10}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
build_release_if_stale resume

mkdir -p target/reports
STAMP=$(date -u +%Y%m%d-%H%M%S)
WORK=$(mktemp -d -t throng-resume.XXXXXX)
SRV_PID=
cleanup() { stop_server_pid resume "$SRV_PID" 10; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials resume
# shellcheck disable=SC2086
# shellcheck disable=SC2086 # EXTRA is a list of flags
start_server resume "$WORK" --max-connections $((N + 1000)) ${EXTRA:-} || exit 1

set +e
target/release/throng-load resume --url "ws://$CLIENT_ADDR/ws" --api "http://$API_ADDR" \
    --connections "$N" --connect-rate 5000 --source-ips "$SOURCE_IPS" \
    --churn-fraction "$CHURN_FRACTION" --churn-rate "$CHURN_RATE" --offline-ms "$OFFLINE_MS" \
    --rate "$RATE" --duration-secs "$SECS" --topics "$TOPICS" --topic-rate "$TOPIC_RATE" \
    --json "target/reports/resume-$STAMP.json"
rc=$?
set -e
echo "resume: report target/reports/resume-$STAMP.json (exit status $rc)"
exit $rc
