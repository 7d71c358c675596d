#!/usr/bin/env bash
# Capacity of this host: a connection ramp, then a push run.
#
# Builds release binaries, starts `throng serve` on free loopback ports with a generated
# JWT secret and API key, waits for /readyz, then runs
#   1. `throng-load capacity`: ramps idle connections up in steps towards TARGET,
#      measuring the server's RSS and the kernel's TCP memory per connection and push
#      latency at every step, until TARGET is held or something gives out;
#   2. `throng-load push`: PUSH_CONNECTIONS connections, PUSH_RATE pushes/s for PUSH_SECS.
# Reports go to target/reports/ with a timestamp in the name (capacity-STAMP.json,
# capacity-STAMP.svg, push-STAMP.json, server-STAMP.log, doctor-STAMP.txt) plus
# *-latest.* symlinks to the newest. At the end it prints a summary of each step and
# why the ramp stopped. The server is stopped (SIGTERM, by its PID) on any exit.
#
# Environment (all optional):
#   TARGET=            connections to ramp to (default: the server's client ceiling
#                      under this shell's hard open-file limit: the limit minus 256
#                      minus its API reserve (1024, or a quarter of limit - 256 when
#                      that is less), the `client_ceiling` it logs at start)
#   STEP=              connections added per step (default: TARGET/10, rounded)
#   PROCS=             load generator processes (default: enough that each stays below
#                      its own open-file limit: ceil(TARGET / (limit - 500)))
#   SOURCE_IPS=127.0.0.2-127.0.0.9
#                      client source addresses (spreads ephemeral ports)
#   CONNECT_RATE=2000  connection attempts per second during the ramp and the push run
#   PROBE_RATE=        pushes per second while probing latency at each step
#                      (default: throng-load's)
#   MAX_SECS=          bound on the whole ramp (default: derived from TARGET and rate)
#   PUSH_CONNECTIONS=  connections for the push run (default: min(TARGET, 10000))
#   PUSH_RATE=1000     pushes per second in the push run
#   PUSH_SECS=10       seconds of pushing
#   SHARDS=            server shard threads (default: the server's, one per core)
#   NO_BUILD=1         skip the build (by default it runs only when a source is newer
#                      than the binaries; FORCE_BUILD=1 always builds)
#   SERVER=, LOAD=     other throng and throng-load binaries (e.g. an older build)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

log() { echo "capacity: $*"; }
die() { echo "capacity: $*" >&2; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
need_uint() { is_uint "$2" || die "$1 must be a whole number, got '$2'"; }

# --- Open-file limits ----------------------------------------------------------------------

# Raise the soft limit to the hard limit; the server and the load generator inherit it.
HARD=$(ulimit -Hn)
if [[ $HARD == unlimited ]]; then
    # The kernel caps RLIMIT_NOFILE at fs.nr_open anyway.
    HARD=$(cat /proc/sys/fs/nr_open 2>/dev/null || echo 1048576)
fi
ulimit -n "$HARD" 2>/dev/null || log "cannot raise the soft open-file limit to $HARD; keeping $(ulimit -n)"
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=$HARD
need_uint "open-file limit" "$NOFILE"

# --- Parameters --------------------------------------------------------------------------

# The server's client ceiling (src/fdlimit.rs client_ceiling): RLIMIT_NOFILE minus a
# headroom of 256, minus the push API's reserve: api_max_connections (1024 by default),
# but at most a quarter of what the headroom leaves. Clients beyond it get 503
# over_capacity. The server logs the figure it uses as `client_ceiling`; it is checked
# against this once the server is up.
HEADROOM=256
API_MAX_CONNECTIONS=1024
ALLOWED=$((NOFILE > HEADROOM ? NOFILE - HEADROOM : 0))
API_RESERVE=$((API_MAX_CONNECTIONS < ALLOWED / 4 ? API_MAX_CONNECTIONS : ALLOWED / 4))
DEFAULT_TARGET=$((ALLOWED - API_RESERVE))
TARGET=${TARGET:-$DEFAULT_TARGET}
need_uint TARGET "$TARGET"
((TARGET >= 1)) || die "TARGET must be at least 1 (open-file limit here: $NOFILE)"
if ((TARGET > DEFAULT_TARGET)); then
    log "warning: TARGET=$TARGET is above the server's client ceiling under this open-file" \
        "limit ($NOFILE - $HEADROOM - $API_RESERVE API reserve = $DEFAULT_TARGET); the ramp" \
        "will stop there with 503 over_capacity"
fi

STEP=${STEP:-$(((TARGET + 5) / 10))}
need_uint STEP "$STEP"
((STEP >= 1)) || STEP=1
NSTEPS=$(((TARGET + STEP - 1) / STEP))

# Each load generator process holds its share of connections plus a few hundred files of
# its own; keep every one below the per-process limit.
PER_PROC=$((NOFILE - 500))
((PER_PROC >= 1)) || die "open-file limit $NOFILE is too low for the load generator"
procs_for() { local n=$1 p; p=$(((n + PER_PROC - 1) / PER_PROC)); ((p >= 1)) || p=1; echo "$p"; }
PROCS=${PROCS:-$(procs_for "$TARGET")}
need_uint PROCS "$PROCS"
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}

CONNECT_RATE=${CONNECT_RATE:-2000}
need_uint CONNECT_RATE "$CONNECT_RATE"
RAMP_RATE=$CONNECT_RATE
((RAMP_RATE >= 1)) || RAMP_RATE=10000 # 0 = as fast as possible; estimate generously
PROBE_RATE=${PROBE_RATE:-}
[[ -z $PROBE_RATE ]] || need_uint PROBE_RATE "$PROBE_RATE"
# Connecting at the given rate, plus half a minute per step for settling and probing.
MAX_SECS=${MAX_SECS:-$((TARGET / RAMP_RATE + 30 * NSTEPS + 60))}
need_uint MAX_SECS "$MAX_SECS"

PUSH_CONNECTIONS=${PUSH_CONNECTIONS:-$((TARGET < 10000 ? TARGET : 10000))}
PUSH_RATE=${PUSH_RATE:-1000}
PUSH_SECS=${PUSH_SECS:-10}
need_uint PUSH_CONNECTIONS "$PUSH_CONNECTIONS"
need_uint PUSH_RATE "$PUSH_RATE"
need_uint PUSH_SECS "$PUSH_SECS"
PUSH_PROCS=$(procs_for "$PUSH_CONNECTIONS")
if [[ -n ${SHARDS:-} ]]; then need_uint SHARDS "$SHARDS"; fi

# --- Build -------------------------------------------------------------------------------

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale capacity
SERVER=${SERVER:-target/release/throng}
LOAD=${LOAD:-target/release/throng-load}
[[ -x $SERVER && -x $LOAD ]] || die "missing $SERVER or $LOAD (build them, or unset NO_BUILD)"
"$LOAD" capacity --help >/dev/null 2>&1 ||
    die "$LOAD has no 'capacity' subcommand; rebuild from a newer tree"

# --- Reports -----------------------------------------------------------------------------

REPORTS=target/reports
mkdir -p "$REPORTS"
STAMP=$(date +%Y%m%d-%H%M%S)
CAP_JSON=$REPORTS/capacity-$STAMP.json
CAP_SVG=$REPORTS/capacity-$STAMP.svg
PUSH_JSON=$REPORTS/push-$STAMP.json
SERVER_LOG=$REPORTS/server-$STAMP.log
DOCTOR_TXT=$REPORTS/doctor-$STAMP.txt

# Points REPORTS/NAME-latest.EXT at REPORTS/NAME-STAMP.EXT when that file exists.
link_latest() {
    local file=$1 name ext
    [[ -e $file ]] || return 0
    name=$(basename "$file")
    ext=${name##*.}
    ln -sfn "$name" "$REPORTS/${name%%-*}-latest.$ext"
}

# --- Server ------------------------------------------------------------------------------

SRV_PID=
stop_server() {
    [[ -n $SRV_PID ]] || return 0
    log "stopping server $SRV_PID (SIGTERM)"
    # The drain closes every connection and flushes for up to shutdown_grace_ms (5 s).
    stop_server_pid capacity "$SRV_PID" 15
    SRV_PID=
}
# shellcheck disable=SC2317  # invoked by the trap
on_exit() {
    local status=$?
    stop_server
    link_latest "$SERVER_LOG"
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Test-only credentials, generated per run. The server and throng-load read them from the
# environment (THRONG_JWT_SECRET, THRONG_API_KEY).
rand_hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
THRONG_JWT_SECRET="capacity-$(rand_hex)"
THRONG_API_KEY="capacity-key-$(rand_hex)"
export THRONG_JWT_SECRET THRONG_API_KEY

log "$SERVER doctor --target-connections $TARGET (report only, not fatal)"
timeout 30 "$SERVER" doctor --target-connections "$TARGET" >"$DOCTOR_TXT" 2>&1 || true
sed -n '/^FAIL\|^WARN/p;$p' "$DOCTOR_TXT"
link_latest "$DOCTOR_TXT"

# Port 0: the kernel picks free ports; the bound addresses are in the `listening` line.
SERVER_ARGS=(serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --drain-ms 1000
    --max-connections $((TARGET > PUSH_CONNECTIONS ? TARGET + 1000 : PUSH_CONNECTIONS + 1000))
    --log-format json)
if [[ -n ${SHARDS:-} ]]; then SERVER_ARGS+=(--shards "$SHARDS"); fi
log "$SERVER ${SERVER_ARGS[*]}"
"$SERVER" "${SERVER_ARGS[@]}" >"$SERVER_LOG" 2>&1 &
SRV_PID=$!

wait_listening capacity "$SRV_PID" "$SERVER_LOG" ||
    die "server did not start (log above, also in $SERVER_LOG)"
URL="ws://$CLIENT_ADDR/ws"
API="http://$API_ADDR"

# /readyz needs no API key (nor does /healthz); sending it does no harm.
ready() {
    if command -v curl >/dev/null; then
        curl -fsS -m 2 -o /dev/null -H "Authorization: Bearer $THRONG_API_KEY" "$API/readyz"
    else
        local host=${API_ADDR%:*} port=${API_ADDR##*:} status
        exec 3<>"/dev/tcp/$host/$port" || return 1
        printf 'GET /readyz HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n' \
            "$API_ADDR" "$THRONG_API_KEY" >&3
        status=$(timeout 2 head -c 12 <&3 || true)
        exec 3<&-
        [[ $status == "HTTP/1.1 200" ]]
    fi
}
READY=
for _ in $(seq 100); do # at most ~20 s
    if ready 2>/dev/null; then READY=1; break; fi
    kill -0 "$SRV_PID" 2>/dev/null || die "server exited (see $SERVER_LOG)"
    sleep 0.2
done
[[ -n $READY ]] || die "$API/readyz did not answer 200 within 20 s (see $SERVER_LOG)"
log "server pid $SRV_PID ready: clients $URL, API $API"
# The ceiling the server actually uses (its open-file limit may differ from this shell's).
CEILING=$(sed -n 's/.*"client_ceiling":\([0-9]*\).*/\1/p' "$SERVER_LOG" | head -1)
if [[ -n $CEILING ]]; then
    log "server client_ceiling: $CEILING"
    if ((TARGET > CEILING)); then
        log "warning: TARGET=$TARGET is above the server's client_ceiling ($CEILING);" \
            "the ramp will stop there with 503 over_capacity"
    fi
else
    log "the server did not log its client_ceiling (see $SERVER_LOG)"
fi

# Prints a throng-load command line with the secrets masked.
show_cmd() {
    local args=("$@")
    args=("${args[@]//"$THRONG_JWT_SECRET"/***}")
    args=("${args[@]//"$THRONG_API_KEY"/***}")
    log "$LOAD ${args[*]}"
}

STATUS=0

# --- Phase 1: capacity ramp -------------------------------------------------------------

CAP_ARGS=(capacity --url "$URL" --api "$API" --api-key "$THRONG_API_KEY"
    --jwt-secret "$THRONG_JWT_SECRET" --target "$TARGET" --step "$STEP"
    --connect-rate "$CONNECT_RATE" --procs "$PROCS" --source-ips "$SOURCE_IPS"
    --server-pid "$SRV_PID" --max-secs "$MAX_SECS" --json "$CAP_JSON" --plot "$CAP_SVG")
if [[ -n $PROBE_RATE ]]; then CAP_ARGS+=(--probe-rate "$PROBE_RATE"); fi
# The ramp bounds itself with --max-secs; the extra time covers closing and plotting.
CAP_LIMIT=$((MAX_SECS + 180))
log "phase 1: ramp to $TARGET connections in steps of $STEP ($NSTEPS steps, $PROCS" \
    "load process(es), at most $MAX_SECS s)"
show_cmd "${CAP_ARGS[@]}"
# --foreground keeps throng-load in this process group, so Ctrl-C reaches it directly.
cap_status=0
timeout --foreground --kill-after=30 "$CAP_LIMIT" "$LOAD" "${CAP_ARGS[@]}" || cap_status=$?
if ((cap_status != 0)); then
    echo "capacity: throng-load capacity exited with status $cap_status" >&2
    STATUS=$cap_status
fi
[[ -s $CAP_JSON ]] || die "no capacity report at $CAP_JSON"
link_latest "$CAP_JSON"
link_latest "$CAP_SVG"
kill -0 "$SRV_PID" 2>/dev/null || die "the server died during the ramp (see $SERVER_LOG)"

# --- Phase 2: push run ------------------------------------------------------------------

if ((PUSH_CONNECTIONS > 0 && PUSH_SECS > 0)); then
    PUSH_ARGS=(push --url "$URL" --api "$API" --api-key "$THRONG_API_KEY"
        --jwt-secret "$THRONG_JWT_SECRET" --connections "$PUSH_CONNECTIONS"
        --connect-rate "$CONNECT_RATE" --procs "$PUSH_PROCS" --source-ips "$SOURCE_IPS"
        --server-pid "$SRV_PID" --rate "$PUSH_RATE" --duration-secs "$PUSH_SECS"
        --json "$PUSH_JSON")
    PUSH_LIMIT=$((PUSH_CONNECTIONS / RAMP_RATE + PUSH_SECS + 180))
    log "phase 2: $PUSH_CONNECTIONS connections, $PUSH_RATE pushes/s for $PUSH_SECS s"
    show_cmd "${PUSH_ARGS[@]}"
    push_status=0
    timeout --foreground --kill-after=30 "$PUSH_LIMIT" "$LOAD" "${PUSH_ARGS[@]}" ||
        push_status=$?
    if ((push_status != 0)); then
        echo "capacity: throng-load push exited with status $push_status" >&2
        ((STATUS != 0)) || STATUS=$push_status
    fi
    link_latest "$PUSH_JSON"
fi

stop_server
link_latest "$SERVER_LOG"

# --- Summary ---------------------------------------------------------------------------

echo
echo "== capacity ramp ($CAP_JSON)"
if command -v jq >/dev/null; then
    JQ_NUM='def n: if . == null then "-" elif type == "number" then (. * 10 | round / 10 | tostring) else tostring end;'
    {
        printf 'connections\tRSS B/conn\tkernel TCP B/conn\tp99 us\n'
        jq -r "$JQ_NUM"' .steps[] | [(.connections | n), (.server_rss_bytes_per_conn | n),
            (.kernel_tcp_bytes_per_conn | n), (.latency_us.p99 | n)] | @tsv' "$CAP_JSON"
    } | if command -v column >/dev/null; then column -t -s $'\t'; else cat; fi
    # Memory per connection is the ramp's figure (RSS growth over the idle server, divided by
    # the connections held). The push run starts on a server that already grew for the ramp
    # and reuses that memory, so its RSS delta says nothing per connection.
    jq -r "$JQ_NUM"' (.steps | last) as $s |
        "server memory per idle connection: \($s.server_rss_bytes_per_conn | n) B of user space at \($s.connections | n) connections"' "$CAP_JSON"
    jq -r "$JQ_NUM"' "max connections held: \(.max_connections_held | n)",
        "stopped because:      \(.stopped_because | n)"' "$CAP_JSON"
elif command -v python3 >/dev/null; then
    python3 - "$CAP_JSON" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def n(v):
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
print(f"{'connections':>12} {'RSS B/conn':>11} {'kernel TCP B/conn':>18} {'p99 us':>8}")
for s in r.get("steps", []):
    print(f"{n(s.get('connections')):>12} {n(s.get('server_rss_bytes_per_conn')):>11} "
          f"{n(s.get('kernel_tcp_bytes_per_conn')):>18} {n((s.get('latency_us') or {}).get('p99')):>8}")
last = (r.get("steps") or [{}])[-1]
print(f"\nserver memory per idle connection: {n(last.get('server_rss_bytes_per_conn'))} B of user space at {n(last.get('connections'))} connections")
print(f"max connections held: {n(r.get('max_connections_held'))}")
print(f"stopped because:      {n(r.get('stopped_because'))}")
PY
else
    grep -E '"(connections|server_rss_bytes_per_conn|kernel_tcp_bytes_per_conn|p99|stopped_because|max_connections_held)"' "$CAP_JSON" |
        sed 's/^ *//'
fi

if [[ -s $PUSH_JSON ]]; then
    echo
    echo "== push run ($PUSH_JSON)"
    if command -v jq >/dev/null; then
        jq -r '
            "connections opened: \(.connections_opened) / \(.connections_target)",
            "pushes sent:        \(.pushes_sent) at \(.push_rate_per_sec // 0 | round)/s",
            "messages received:  \(.messages_received) / \(.messages_expected) (missing \(.messages_missing))",
            "delivery latency:   p50 \(.latency_us.p50 // "-") us, p99 \(.latency_us.p99 // "-") us, p99.9 \(.latency_us.p999 // "-") us"
        ' "$PUSH_JSON"
    else
        grep -E '"(connections_opened|pushes_sent|messages_expected|messages_received|messages_missing|p99)"' "$PUSH_JSON" |
            sed 's/^ *//'
    fi
fi

echo
log "reports in $REPORTS/:"
for f in "$CAP_JSON" "$CAP_SVG" "$PUSH_JSON" "$SERVER_LOG" "$DOCTOR_TXT"; do
    [[ -e $f ]] && echo "  $f"
done
echo "  (newest also as $REPORTS/{capacity,push,server,doctor}-latest.*)"
exit "$STATUS"
