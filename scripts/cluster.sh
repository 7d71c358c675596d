#!/usr/bin/env bash
# Cluster mode on Redis (issue 10), measured: two nodes sharing one redis-server.
#
# Starts a redis-server on a free loopback port (no persistence) and two nodes
# `throng serve --redis redis://127.0.0.1:PORT --node-id n1|n2` on free loopback ports,
# then the runs named in RUNS (default: all, in this order):
#
#   stream-user   N connections over both nodes (connection i on node i mod 2), user
#                 pushes at RATE/s for SECS through the stream `throng:push`
#                 (throng-load push --redis-stream, BATCH XADDs per round trip)
#   api-user      the same pushes through n1's HTTP API (POST /v1/push), for comparison
#   stream-topic  every connection subscribed to one topic, topic pushes at TOPIC_RATE/s
#   api-topic     the same through n1's HTTP API
#   idle          N idle connections of fresh users (numbers from IDLE_OFFSET) on n1
#                 (`throng-load connect --server-pid`): Redis used_memory, keys and
#                 channels per connected user, and n1's RSS per connection; then the same
#                 connect run against a standalone server started with the same flags but
#                 no --redis. First by default, so n1 holds no state of earlier runs (a
#                 user's stream stays on a node history_ttl_ms after its last session).
#
# Every push run prints throng-load's summary, both nodes' CPU per delivery over the
# whole run, Redis's `INFO commandstats` delta per accepted push (calls, and µs per call: EVALSHA
# is the whole script; PUBLISH inside the script, XADD/XREADGROUP/XACK of the stream) and
# Redis's own CPU (`INFO cpu`) per accepted push.
# Reports go to target/reports/cluster-STAMP-RUN.json. Everything this script started
# (redis-server, nodes, the standalone server) is stopped by its PID on any exit.
#
# Environment (all optional):
#   N=10000 SECS=10 RATE=5000 TOPIC_RATE=20 HOLD=5
#   BATCH=10      XADDs per round trip (stream runs)
#   API_BATCH=1   pushes per request (API runs; above 1: POST /v1/push/batch)
#   API_CONC=4    driver threads (API connections, or Redis connections for the stream)
#   IDLE_OFFSET=1000000              first user number of the idle run
#   SOURCE_IPS=127.0.0.2-127.0.0.9   client source addresses (spread ephemeral ports)
#   RUNS="idle stream-user api-user stream-topic api-topic"
#   EXTRA=        more flags for every server (e.g. "--shards 1")
#   REDIS_TLS=1   Redis speaks only TLS (a self-signed certificate): nodes and throng-load
#                 use rediss:// with --redis-ca
#   NO_BUILD=1    skip the release build (by default it runs only when sources are newer)
#   SERVER=, LOAD=  other throng and throng-load binaries (e.g. an older build)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
N=${N:-10000} SECS=${SECS:-10} RATE=${RATE:-5000} TOPIC_RATE=${TOPIC_RATE:-20}
BATCH=${BATCH:-10} API_BATCH=${API_BATCH:-1} API_CONC=${API_CONC:-4} HOLD=${HOLD:-5} IDLE_OFFSET=${IDLE_OFFSET:-1000000}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
RUNS=${RUNS:-idle stream-user api-user stream-topic api-topic}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || {
    echo "cluster: needs redis-server and redis-cli (apt-get install redis-server)" >&2
    exit 1
}
build_release_if_stale cluster
SERVER=${SERVER:-target/release/throng}
LOAD=${LOAD:-target/release/throng-load}

mkdir -p target/reports
STAMP=$(date -u +%Y%m%d-%H%M%S)
WORK=$(mktemp -d -t throng-cluster.XXXXXX)
REDIS_PID= N1_PID= N2_PID= SOLO_PID=
cleanup() {
    stop_server_pid cluster "$N1_PID" 10
    stop_server_pid cluster "$N2_PID" 10
    stop_server_pid cluster "$SOLO_PID" 10
    stop_server_pid cluster "$REDIS_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials cluster

PORT=$(free_port)
mkdir -p "$WORK/redis"
REDIS_CA=()
if [[ -n ${REDIS_TLS:-} ]]; then
    make_test_cert "$WORK"
    redis-server --port 0 --tls-port "$PORT" --tls-cert-file "$WORK/cert.pem" \
        --tls-key-file "$WORK/key.pem" --tls-ca-cert-file "$WORK/cert.pem" \
        --tls-auth-clients no --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/redis" \
        >"$WORK/redis.log" 2>&1 &
    RCLI=(redis-cli --tls --cacert "$WORK/cert.pem" -h localhost -p "$PORT")
    REDIS_URL="rediss://localhost:$PORT"
    REDIS_CA=(--redis-ca "$WORK/cert.pem")
else
    redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/redis" \
        >"$WORK/redis.log" 2>&1 &
    RCLI=(redis-cli -h 127.0.0.1 -p "$PORT")
    REDIS_URL="redis://127.0.0.1:$PORT"
fi
REDIS_PID=$!
for _ in $(seq 100); do
    [[ $("${RCLI[@]}" ping 2>/dev/null) == PONG ]] && break
    kill -0 "$REDIS_PID" 2>/dev/null || { cat "$WORK/redis.log" >&2; exit 1; }
    sleep 0.1
done
echo "cluster: redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') pid $REDIS_PID on $REDIS_URL"

# Starts a server with "$@" after the common flags; sets START_PID, CLIENT_ADDR, API_ADDR.
start_server() {
    local name=$1
    shift
    # shellcheck disable=SC2086
    "$SERVER" serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --log-format json \
        --max-connections $((N + 1000)) ${EXTRA:-} "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.log" &
    START_PID=$!
    wait_listening cluster "$START_PID" "$WORK/$name.log" || exit 1
}

# Waits (at most 20 s) until the node's /readyz answers 200 (its broker reached Redis).
wait_ready() {
    for _ in $(seq 200); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$1/readyz") == 200 ]] && return 0
        sleep 0.1
    done
    echo "cluster: node at $1 never became ready" >&2
    exit 1
}

start_server n1 --redis "$REDIS_URL" "${REDIS_CA[@]}" --node-id n1
N1_PID=$START_PID N1_WS=$CLIENT_ADDR N1_API=$API_ADDR
start_server n2 --redis "$REDIS_URL" "${REDIS_CA[@]}" --node-id n2
N2_PID=$START_PID N2_WS=$CLIENT_ADDR
wait_ready "$N1_API"
wait_ready "$API_ADDR"
echo "cluster: n1 pid $N1_PID ws $N1_WS api $N1_API; n2 pid $N2_PID ws $N2_WS"
URLS="ws://$N1_WS/ws,ws://$N2_WS/ws"

# `INFO commandstats` as "command calls usec" lines, then Redis's own CPU seconds as
# "cpu <user+sys>".
cmdstats() {
    "${RCLI[@]}" info commandstats | tr -d '\r' |
        sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2 \3/p' | sort
    "${RCLI[@]}" info cpu | tr -d '\r' |
        awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "cpu %.6f 0\n", s }'
}

# Prints the per-push delta between two cmdstats files for $3 pushes.
per_push() {
    python3 - "$1" "$2" "$3" <<'PY'
import sys
def load(p):
    out = {}
    for l in open(p):
        if l.strip():
            k, calls, usec = l.split()
            out[k] = (float(calls), float(usec))
    return out
a, b, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
cpu = b.pop("cpu")[0] - a.pop("cpu", (0, 0))[0]
rows = [(k, b[k][0] - a.get(k, (0, 0))[0], b[k][1] - a.get(k, (0, 0))[1]) for k in b]
rows = [r for r in rows if r[1] > 0]
rows.sort(key=lambda r: -r[1])
print(f"cluster: Redis commands for {n} accepted pushes (calls, per push, us per call):")
for k, d, us in rows:
    print(f"  {k:<14} {d:>10.0f} {d / max(n, 1):>9.4f} {us / d:>9.2f}")
print(f"  {'all':<14} {sum(r[1] for r in rows):>10.0f} {sum(r[1] for r in rows) / max(n, 1):>9.4f}")
print(f"cluster: Redis CPU {cpu:.2f} s, {cpu / max(n, 1) * 1e6:.1f} us per accepted push")
PY
}

field() { sed -n "s/^ *\"$1\": *\([^,]*\),*$/\1/p" "$2" | head -1; }

# One push run: $1 names it; the rest are extra throng-load flags.
push_run() {
    local run=$1 json="target/reports/cluster-$STAMP-$1.json"
    shift
    cmdstats >"$WORK/before"
    local cpu0 cpu1
    cpu0=$(($(tree_cpu_ticks "$N1_PID") + $(tree_cpu_ticks "$N2_PID")))
    local args=(push --url "$URLS" --connections "$N" --connect-rate 5000
        --source-ips "$SOURCE_IPS" --duration-secs "$SECS" --api "http://$N1_API"
        --api-concurrency "$API_CONC" --drain-secs 15 --json "$json" "$@")
    echo
    echo "cluster: [$run] $LOAD ${args[*]}"
    local rc=0
    timeout $((SECS + N / 1000 + 120)) "$LOAD" "${args[@]}" || rc=$?
    cmdstats >"$WORK/after"
    cpu1=$(($(tree_cpu_ticks "$N1_PID") + $(tree_cpu_ticks "$N2_PID")))
    ((rc == 0)) || { echo "cluster: [$run] throng-load failed (exit $rc)" >&2; return $rc; }
    per_push "$WORK/before" "$WORK/after" "$(field pushes_sent "$json")"
    python3 - "$cpu0" "$cpu1" "$(getconf CLK_TCK)" "$(field deliveries "$json")" <<'PY'
import sys
c0, c1, hz, n = map(float, sys.argv[1:5])
s = (c1 - c0) / hz
print(f"cluster: both nodes' CPU over the whole run (connect, pushes, drain): {s:.2f} s, "
      f"{s / n * 1e6 if n else float('nan'):.1f} us per delivery")
PY
    echo "cluster: [$run] report $json"
}

# Redis INFO field $2 of section $1.
rinfo() { "${RCLI[@]}" info "$1" | tr -d '\r' | sed -n "s/^$2:\([0-9]*\)\$/\1/p"; }

# Idle connections of fresh users on n1: Redis memory and node RSS per connection; then
# the same against a standalone server.
idle_run() {
    local json="target/reports/cluster-$STAMP-idle.json" solo="target/reports/cluster-$STAMP-idle-standalone.json"
    local args=(connect --connections "$N" --connect-rate 5000 --source-ips "$SOURCE_IPS"
        --settle-secs 3 --hold-secs "$HOLD" --user-offset "$IDLE_OFFSET")
    local mem0 keys0 ch0 mem1 keys1 ch1 rc=0 ch=0 up=0
    mem0=$(rinfo memory used_memory) keys0=$("${RCLI[@]}" dbsize) ch0=$(rinfo stats pubsub_channels)
    echo
    echo "cluster: [idle] $LOAD ${args[*]} --url ws://$N1_WS/ws --server-pid $N1_PID"
    timeout $((N / 1000 + HOLD + 120)) "$LOAD" "${args[@]}" --url "ws://$N1_WS/ws" \
        --server-pid "$N1_PID" --json "$json" &
    local load=$!
    # Every user subscribed (a channel each) and its stream loaded: read Redis then,
    # while the connections are held.
    for _ in $(seq 600); do
        ch=$(rinfo stats pubsub_channels)
        if ((ch - ch0 >= N)); then up=1; break; fi
        kill -0 "$load" 2>/dev/null || break
        sleep 0.1
    done
    sleep 1
    mem1=$(rinfo memory used_memory) keys1=$("${RCLI[@]}" dbsize) ch1=$(rinfo stats pubsub_channels)
    local u="u$IDLE_OFFSET"
    local meta hist
    meta=$("${RCLI[@]}" memory usage "throng:{u:$u}")
    hist=$("${RCLI[@]}" memory usage "throng:{u:$u}:h")
    wait "$load" || rc=$?
    ((rc == 0)) || { echo "cluster: [idle] throng-load failed (exit $rc)" >&2; return $rc; }
    ((up)) || echo "cluster: [idle] WARNING: channels never grew by $N while connected ($ch0 -> $ch); the figures below are not per connected user" >&2
    echo "cluster: [idle] Redis with $N users connected and idle: used_memory $mem0 -> $mem1" \
        "bytes = $(((mem1 - mem0) / N)) bytes per user; keys $keys0 -> $keys1; channels $ch0 -> $ch1"
    echo "cluster: [idle] MEMORY USAGE of one user's keys: throng:{u:$u} ${meta:-none} bytes, throng:{u:$u}:h ${hist:-none}"
    echo "cluster: [idle] after they left: used_memory $(rinfo memory used_memory), keys $("${RCLI[@]}" dbsize), channels $(rinfo stats pubsub_channels) (a user stays subscribed history_ttl_ms after its last session, its keys offline_ttl_ms)"
    echo "cluster: [idle] n1 (cluster) RSS per idle connection: $(field server_rss_bytes_per_conn "$json") bytes ($json)"

    start_server solo
    SOLO_PID=$START_PID
    echo "cluster: [idle] $LOAD ${args[*]} --url ws://$CLIENT_ADDR/ws --server-pid $SOLO_PID (standalone)"
    timeout $((N / 1000 + HOLD + 120)) "$LOAD" "${args[@]}" --url "ws://$CLIENT_ADDR/ws" \
        --server-pid "$SOLO_PID" --json "$solo" || rc=$?
    stop_server_pid cluster "$SOLO_PID" 10
    SOLO_PID=
    ((rc == 0)) || { echo "cluster: [idle] standalone throng-load failed (exit $rc)" >&2; return $rc; }
    echo "cluster: [idle] standalone RSS per idle connection: $(field server_rss_bytes_per_conn "$solo") bytes ($solo)"
}

status=0
for run in $RUNS; do
    case $run in
        stream-user) push_run stream-user --redis-stream "$REDIS_URL" "${REDIS_CA[@]}" --batch "$BATCH" \
            --target user --rate "$RATE" || status=1 ;;
        api-user) push_run api-user --batch "$API_BATCH" --target user --rate "$RATE" ||
            status=1 ;;
        stream-topic) push_run stream-topic --redis-stream "$REDIS_URL" "${REDIS_CA[@]}" --batch "$BATCH" \
            --target topic --topics room:1 --rate "$TOPIC_RATE" || status=1 ;;
        api-topic) push_run api-topic --batch "$API_BATCH" --target topic --topics room:1 \
            --rate "$TOPIC_RATE" || status=1 ;;
        idle) idle_run || status=1 ;;
        *) echo "cluster: unknown run $run (known: stream-user api-user stream-topic api-topic idle)" >&2
            status=2 ;;
    esac
done
for n in n1 n2; do
    errs=$(grep -c '"level":"\(WARN\|ERROR\)"' "$WORK/$n.log" || true)
    echo "cluster: $n logged $errs warnings/errors"
    grep -m5 '"level":"\(WARN\|ERROR\)"' "$WORK/$n.log" || true
done
echo "cluster: Redis used_memory now $(rinfo memory used_memory); stream throng:push: $("${RCLI[@]}" xlen throng:push) entries, $("${RCLI[@]}" memory usage throng:push samples 0) bytes (what some consumer group has not acknowledged, unless --stream-trim false)"
exit $status
