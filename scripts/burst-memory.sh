#!/usr/bin/env bash
# Memory after bursts (issue 11 item 2): N idle connections, then BURSTS broadcasts of
# DATA bytes sent back to back (one POST /v1/push each), then the server's RSS every
# second for WATCH seconds with the outbound queues drained. Prints the idle baseline,
# the RSS after, and both per connection, and the peak RSS (VmHWM). Stops what it
# started, by PID.
#
# FANOUT=users sends each burst as one `users` push listing all N users (u0 ...), which
# the server turns into a frame per user: e.g. N=1000 BURSTS=1 DATA=900000 FANOUT=users
# (one 0.9 MB request, 0.9 GB of frames if they were all built before the first write).
#
# Environment: N=15000 BURSTS=100 DATA=512 WATCH=10 FANOUT=broadcast, SOURCE_IPS=127.0.0.2-127.0.0.9,
#   NO_BUILD=1 (skip the build check), SERVER=path (another throng binary, e.g. an older
#   build to compare against).
set -euo pipefail
N=${N:-15000}
BURSTS=${BURSTS:-100}
DATA=${DATA:-512}
FANOUT=${FANOUT:-broadcast}
[[ $FANOUT == broadcast || $FANOUT == users ]] || { echo "burst-memory: FANOUT must be broadcast or users" >&2; exit 2; }
WATCH=${WATCH:-10}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale burst-memory
SERVER=${SERVER:-target/release/throng}
LOAD=target/release/throng-load
command -v curl >/dev/null || { echo "burst-memory: needs curl" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-burst.XXXXXX)
SRV_PID=
LOAD_PID=
cleanup() {
    [[ -n $LOAD_PID ]] && kill "$LOAD_PID" 2>/dev/null || true
    stop_server_pid burst-memory "$SRV_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials burst-memory
start_server burst-memory "$WORK" --max-connections $((N + 1000)) || exit 1
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$SRV_PID/status"; }

start=$(rss_kb)
HOLD=$((WATCH + BURSTS / 20 + 20))
timeout $((N / 5000 + HOLD + 60)) "$LOAD" connect --url "ws://$CLIENT_ADDR/ws" \
    --connections "$N" --connect-rate 5000 --source-ips "$SOURCE_IPS" --settle-secs 2 \
    --hold-secs "$HOLD" >"$WORK/load.log" 2>&1 &
LOAD_PID=$!
wait_connections burst-memory "$N" "$LOAD_PID" "$WORK/load.log" || exit 1
sleep 2
idle=$(rss_kb)
PAD=$(head -c "$DATA" /dev/zero | tr '\0' x)
TO='"broadcast":true'
[[ $FANOUT == users ]] && TO="\"users\":[$(seq -f '"u%.0f"' -s, 0 $((N - 1)))]"
for i in $(seq "$BURSTS"); do
    printf '{%s,"data":{"i":%d,"pad":"%s"}}' "$TO" "$i" "$PAD" >"$WORK/body.json"
    curl -s -o /dev/null -X POST -H "Authorization: Bearer $THRONG_API_KEY" \
        --data-binary "@$WORK/body.json" "http://$API_ADDR/v1/push"
done
for t in $(seq "$WATCH"); do
    sleep 1
    echo "burst-memory: t=${t}s rss=$(rss_kb) kB outbound_bytes=$(api_stat outbound_bytes) connections=$(api_stat connections)"
done
after=$(rss_kb)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$SRV_PID/status")
echo "burst-memory: N=$N, $BURSTS $FANOUT pushes of $DATA bytes; peak RSS (VmHWM) $peak kB"
echo "burst-memory: RSS $start kB at start, $idle kB idle with the connections, $after kB ${WATCH} s after the bursts"
echo "burst-memory: per connection: $(((idle - start) * 1024 / N)) B idle, $(((after - start) * 1024 / N)) B after ($(((after - idle) * 1024 / N)) B more)"
