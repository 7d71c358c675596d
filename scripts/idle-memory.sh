#!/usr/bin/env bash
# Memory per idle connection.
#
# Builds release binaries, starts `throng serve` on loopback ports, opens N idle WebSocket
# connections with `throng-load connect --server-pid`, prints the server's RSS and the
# kernel's TCP memory per connection, then stops the server (SIGTERM, by PID) and cleans up.
#
# Environment:
#   N=10000            connections
#   RATE=5000          connection attempts per second
#   HOLD=5             seconds to hold the connections after measuring
#   SHARDS=            server shard threads (default: the server's own default)
#   PROCS=             load generator processes (default: enough for RLIMIT_NOFILE)
#   SOURCE_IPS=        source addresses for the client sockets, e.g. 127.0.0.2-127.0.0.9
#                      (default: that range when N > 20000, to spread ephemeral ports)
#   JSON=              also keep the JSON report at this path
#   CLAIM_TOPICS=      topic patterns put in every token's `topics` claim (not subscribed),
#                      e.g. 'orders:*,news' to measure what grants cost
#   WARM=              open this many connections first and keep them (not counted), so
#                      the figure is the marginal cost per connection, without the fixed
#                      cost of a fresh process's first connections (e.g. WARM=5000)
#   REDIS=1            cluster mode: start a redis-server on a free port (Debian's
#                      package) and run the server with --redis
#   TLS=1              wss://: the server gets a fresh self-signed ECDSA P-256 certificate
#                      (openssl) and the load generator trusts it with --ca
#   LOAD_ARGS_EXTRA=   more flags for the measured throng-load run, e.g. --compression
#                      (every connection negotiates permessage-deflate)
#   SERVER=path        another throng binary (an older build to compare against)
#   NO_BUILD=1         skip the build (by default it runs only when a source is newer
#                      than the binaries; FORCE_BUILD=1 always builds)
set -euo pipefail

N=${N:-10000}
RATE=${RATE:-5000}
HOLD=${HOLD:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale idle-memory
SERVER=${SERVER:-target/release/throng}
LOAD=target/release/throng-load
[[ -x $SERVER && -x $LOAD ]] || { echo "idle-memory: missing $SERVER or $LOAD" >&2; exit 1; }

WORK=$(mktemp -d -t throng-idle.XXXXXX)
SRV_PID=
WARM_PID=
REDIS_PID=
cleanup() {
    [[ -n $WARM_PID ]] && kill "$WARM_PID" 2>/dev/null || true
    stop_server_pid idle-memory "$SRV_PID" 10
    [[ -n $REDIS_PID ]] && kill "$REDIS_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Test-only credentials, passed through the environment (not visible in `ps`).
export_credentials idle-memory

SERVER_ARGS=(--drain-ms 1000 --max-connections $((N + ${WARM:-0} + 1000)))
[[ -n ${SHARDS:-} ]] && SERVER_ARGS+=(--shards "$SHARDS")
tls_if_asked "$WORK"
if [[ -n ${REDIS:-} ]]; then
    command -v redis-server >/dev/null || { echo "idle-memory: REDIS=1 needs redis-server" >&2; exit 1; }
    RPORT=$(free_port)
    redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
        >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$RPORT") 2>/dev/null && break
        sleep 0.1
    done
    SERVER_ARGS+=(--redis "redis://127.0.0.1:$RPORT" --node-id idle-memory)
fi
start_server idle-memory "$WORK" "${SERVER_ARGS[@]}" || exit 1
echo "idle-memory: server pid $SRV_PID listening on $CLIENT_ADDR"

NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
PER_PROC=$((NOFILE - 1000))
PROCS=${PROCS:-$(((N + PER_PROC - 1) / PER_PROC))}
((PROCS >= 1)) || PROCS=1
if [[ -z ${SOURCE_IPS:-} && $N -gt 20000 ]]; then
    SOURCE_IPS=127.0.0.2-127.0.0.9
fi

if [[ -n ${WARM:-} ]]; then
    # Held for the whole run on their own addresses and user numbers.
    timeout $((WARM / RATE + N / RATE + HOLD + 120)) "$LOAD" connect --url "$SCHEME://$CLIENT_ADDR/ws" \
        ${TLS_ARGS[@]+"${TLS_ARGS[@]}"} \
        --connections "$WARM" --connect-rate "$RATE" --user-offset 1000000 \
        --source-ips 127.0.1.2-127.0.1.5 --settle-secs 1 \
        --hold-secs $((N / RATE + HOLD + 30)) >"$WORK/warm.log" 2>&1 &
    WARM_PID=$!
    sleep $((WARM / RATE + 4))
    echo "idle-memory: $WARM warm-up connections held (not counted)"
fi

LOAD_ARGS=(connect --url "$SCHEME://$CLIENT_ADDR/ws" --connections "$N" --connect-rate "$RATE"
    --hold-secs "$HOLD" --settle-secs 3 --server-pid "$SRV_PID" --procs "$PROCS"
    --json "$WORK/report.json")
[[ -n ${SOURCE_IPS:-} ]] && LOAD_ARGS+=(--source-ips "$SOURCE_IPS")
[[ -n ${CLAIM_TOPICS:-} ]] && LOAD_ARGS+=(--claim-topics "$CLAIM_TOPICS")
LOAD_ARGS+=(${TLS_ARGS[@]+"${TLS_ARGS[@]}"})
# Word-split on purpose: a list of flags.
# shellcheck disable=SC2206
[[ -n ${LOAD_ARGS_EXTRA:-} ]] && LOAD_ARGS+=($LOAD_ARGS_EXTRA)
LIMIT=$((N / RATE + HOLD + 120))
echo "idle-memory: $LOAD ${LOAD_ARGS[*]}"
status=0
timeout "$LIMIT" "$LOAD" "${LOAD_ARGS[@]}" || status=$?
if ((status != 0)); then
    echo "idle-memory: throng-load failed (exit $status)" >&2
    exit "$status"
fi

field() { sed -n "s/^ *\"$1\": *\([^,]*\),*$/\1/p" "$WORK/report.json" | head -1; }
OPENED=$(field connections_opened)
CONNS=$(field memory_conns)
RSS=$(field server_rss_bytes_per_conn)
ANON=$(field server_anon_bytes_per_conn)
TCP=$(field kernel_tcp_bytes_per_conn)
SLAB=$(field kernel_slab_bytes_per_conn)
CLIENT=$(field client_rss_bytes_per_conn)
echo
echo "idle-memory: $OPENED/$N connections opened; measured with $CONNS open"
echo "idle-memory: server RSS per idle connection:   ${RSS:-n/a} bytes"
echo "idle-memory: of which anonymous (RssAnon; the rest is code paged in by the first connections): ${ANON:-n/a} bytes"
echo "idle-memory: kernel TCP buffer memory per connection: ${TCP:-n/a} bytes (sockstat mem, system-wide)"
echo "idle-memory: kernel slab memory per connection: ${SLAB:-n/a} bytes (meminfo Slab, system-wide, both loopback ends)"
echo "idle-memory: load generator RSS per connection: ${CLIENT:-n/a} bytes"
if [[ -n ${JSON:-} ]]; then
    cp "$WORK/report.json" "$JSON"
    echo "idle-memory: report in $JSON"
fi
if [[ $OPENED != "$N" ]]; then
    echo "idle-memory: not every connection opened" >&2
    exit 1
fi
