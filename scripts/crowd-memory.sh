#!/usr/bin/env bash
# Memory after a crowd has gone (issue 11 item 2, beyond broadcasts): BASE connections stay
# idle throughout; a crowd of N more connects, each subscribing to TOPICS and getting
# direct pushes (kept as history) for a few seconds, then leaves. Once the crowd's users
# and history have expired (--history-ttl-ms TTL_MS) the server's RSS is read every second
# for WATCH seconds. Prints RSS before the crowd, at its peak, after, and what is left per
# crowd connection. Stops what it started, by PID.
#
# Environment: N=15000 BASE=1000 TOPICS=room:1,room:2 TTL_MS=2000 WATCH=5, ROUNDS=1 (crowds
#   one after the other, each measured against the RSS before the first),
#   SOURCE_IPS=127.0.0.2-127.0.0.9, TLS=1 (every connection over wss://, with a
#   throwaway certificate), SERVER=path (another throng binary, e.g. an older build to
#   compare against), NO_BUILD=1 (skip the build check).
set -euo pipefail
N=${N:-15000}
BASE=${BASE:-1000}
TOPICS=${TOPICS:-room:1,room:2}
TTL_MS=${TTL_MS:-2000}
WATCH=${WATCH:-5}
ROUNDS=${ROUNDS:-1}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale crowd-memory
LOAD=target/release/throng-load
command -v curl >/dev/null || { echo "crowd-memory: needs curl" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-crowd.XXXXXX)
SRV_PID=
BASE_PID=
cleanup() {
    [[ -n $BASE_PID ]] && kill "$BASE_PID" 2>/dev/null || true
    stop_server_pid crowd-memory "$SRV_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials crowd-memory
SERVER_ARGS=(--max-connections $((N + BASE + 1000)) --history-ttl-ms "$TTL_MS")
tls_if_asked "$WORK"
start_server crowd-memory "$WORK" "${SERVER_ARGS[@]}" || exit 1
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$SRV_PID/status"; }

# The idle connections that stay: users past the crowd's (u0 .. u{N-1}).
HOLD=$((ROUNDS * (N / 2000 + TTL_MS / 1000 + WATCH + 30) + 60))
"$LOAD" connect --url "$SCHEME://$CLIENT_ADDR/ws" ${TLS_ARGS[@]+"${TLS_ARGS[@]}"} \
    --connections "$BASE" --connect-rate 5000 \
    --user-offset "$N" --source-ips 127.0.0.10 --settle-secs 1 --hold-secs "$HOLD" \
    >"$WORK/base.log" 2>&1 &
BASE_PID=$!
wait_connections crowd-memory "$BASE" "$BASE_PID" "$WORK/base.log" || exit 1
sleep 2
before=$(rss_kb)

# Appending, so that each round can empty the file without leaving a hole of zeros where
# the watcher's write offset was.
: >"$WORK/rss.log"
( while kill -0 "$SRV_PID" 2>/dev/null; do rss_kb; sleep 0.2; done ) >>"$WORK/rss.log" 2>/dev/null &
WATCHER=$!
for round in $(seq "$ROUNDS"); do
    : >"$WORK/rss.log"
    timeout $((N / 2000 + 120)) "$LOAD" push --url "$SCHEME://$CLIENT_ADDR/ws" \
        ${TLS_ARGS[@]+"${TLS_ARGS[@]}"} \
        --api "http://$API_ADDR" --connections "$N" --connect-rate 5000 \
        --source-ips "$SOURCE_IPS" --topics "$TOPICS" --target user --rate 5000 \
        --duration-secs 3 --drain-secs 10 --json "$WORK/crowd.json" >"$WORK/crowd.log" 2>&1 || {
        echo "crowd-memory: the crowd's throng-load failed:" >&2
        tail -20 "$WORK/crowd.log" >&2
        exit 1
    }
    # The crowd has closed; its users go TTL_MS after their last connection.
    for _ in $(seq 300); do
        (($(api_stat connections) <= BASE)) && break
        sleep 0.1
    done
    # Retained users are not in /v1/stats; the last of them goes TTL_MS after the last close.
    sleep "$(((TTL_MS + 999) / 1000))"
    for t in $(seq "$WATCH"); do
        sleep 1
        echo "crowd-memory: round $round t=${t}s rss=$(rss_kb) kB connections=$(api_stat connections) users_online=$(api_stat users_online) history_bytes=$(api_stat history_bytes)"
    done
    after=$(rss_kb)
    peak=$(sort -n "$WORK/rss.log" | tail -1)
    python3 - "$WORK/crowd.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"crowd-memory: the crowd's pushes: {r.get('pushes_sent')} sent, "
      f"{r.get('messages_received')} received, {r.get('messages_missing')} missing, "
      f"{r.get('messages_duplicated')} duplicated")
if r.get("messages_missing") or r.get("messages_duplicated"):
    raise SystemExit("crowd-memory: the crowd's pushes were not delivered exactly once")
PY
    echo "crowd-memory: round $round: RSS $before kB before the first crowd, $peak kB at this one's peak, $after kB ${WATCH} s after it expired"
    echo "crowd-memory: round $round: left per crowd connection: $(((after - before) * 1024 / N)) B (peak $(((peak - before) * 1024 / N)) B)"
done
kill "$WATCHER" 2>/dev/null || true
wait "$WATCHER" 2>/dev/null || true
echo "crowd-memory: BASE=$BASE idle, $ROUNDS crowd(s) of N=$N over $SCHEME:// with topics $TOPICS and direct pushes, history TTL $TTL_MS ms"
