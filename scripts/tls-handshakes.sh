#!/usr/bin/env bash
# TLS handshake cost (issue 15): server CPU per handshake and handshakes per second, plain
# ws:// next to wss:// with full handshakes and wss:// with resumed ones.
#
# 1. `connect`: N connections as fast as the server takes them (--connect-rate 0), for
#    ws:// and for wss:// with --tls-resume off (every handshake full).
# 2. `churn`: N connections held while every one of them disconnects and reconnects as
#    fast as possible for DURATION seconds (a reconnect storm), wss:// with --tls-resume
#    on (reconnects resume with the ticket of their last handshake) and off.
# The server's CPU time (utime + stime from /proc) over each run is divided by the
# handshakes the server counted (`/v1/stats`: the tls object, or accepted handshakes).
# Stops what it started, by PID.
#
# Environment: N=10000, CHURN_N=2000, DURATION=10, PROCS=1, ACCEPTORS= (the server's
# --acceptors; its default otherwise), NO_BUILD=1 (skip the build check), SERVER=path
# (another throng binary, e.g. an older build to compare against).
set -euo pipefail
N=${N:-10000}
CHURN_N=${CHURN_N:-2000}
DURATION=${DURATION:-10}
PROCS=${PROCS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale tls-handshakes
SERVER=${SERVER:-target/release/throng}
LOAD=target/release/throng-load
command -v openssl >/dev/null || { echo "tls-handshakes: needs openssl" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-tls-hs.XXXXXX)
SRV_PID=
cleanup() {
    stop_server_pid tls-handshakes "$SRV_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export_credentials tls-handshakes
make_test_cert "$WORK"
HZ=$(getconf CLK_TCK)

# Starts a server; with "tls" as $1 it serves wss://.
start_one() {
    local args=(--max-connections $((N + 1000)) --drain-ms 500)
    [[ $1 == tls ]] && args+=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")
    [[ -n ${ACCEPTORS:-} ]] && args+=(--acceptors "$ACCEPTORS")
    start_server tls-handshakes "$WORK" "${args[@]}" || exit 1
}
stop_server() {
    stop_server_pid tls-handshakes "$SRV_PID" 10
    SRV_PID=
}
# Handshakes the server completed: TLS ones from the tls object, else accepted upgrades.
handshakes() {
    curl -s -H "Authorization: Bearer $THRONG_API_KEY" "http://$API_ADDR/v1/stats" |
        python3 -c '
import json, sys
d = json.load(sys.stdin)
t = d.get("tls")
if t:
    print(t["handshakes_full"], t["handshakes_resumed"])
else:
    print(d["counters"]["handshakes_accepted"], 0)
'
}

# Runs throng-load ($2...) against the current server and prints a summary named $1.
measure() {
    local name=$1
    shift
    local c0 h0 c1 h1
    c0=$(cpu_ticks)
    h0=$(handshakes)
    timeout $((N / 1000 + DURATION + 120)) "$LOAD" "$@" --json "$WORK/report.json" \
        >"$WORK/load.log" 2>&1 || { echo "tls-handshakes: $name failed:" >&2; tail -20 "$WORK/load.log" >&2; exit 1; }
    c1=$(cpu_ticks)
    h1=$(handshakes)
    python3 - "$name" "$WORK/report.json" "$c0" "$c1" "$HZ" $h0 $h1 <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
c0, c1, hz = map(float, sys.argv[3:6])
f0, r0, f1, r1 = map(int, sys.argv[6:10])
r = json.load(open(path))
full, resumed = f1 - f0, r1 - r0
total = full + resumed
cpu = (c1 - c0) / hz
per = cpu / total * 1e6 if total else float("nan")
rate = r.get("connect_rate_per_sec")
churn = r.get("churn_reconnects")
what = f"{rate:.0f} connections/s" if churn is None else f"{churn} reconnects"
errors = r.get("connect_errors") or {}
print(f"tls-handshakes: {name}: {what}; server handshakes full {full}, resumed {resumed}; "
      f"server CPU {cpu:.2f} s = {per:.0f} us per handshake; connect errors {sum(errors.values()) if isinstance(errors, dict) else errors}")
PY
}

start_one plain
measure "ws:// connect" connect --url "ws://$CLIENT_ADDR/ws" --connections "$N" \
    --connect-rate 0 --settle-secs 0 --hold-secs 0 --procs "$PROCS"
stop_server

start_one tls
measure "wss:// connect, full handshakes" connect --url "wss://$CLIENT_ADDR/ws" \
    --ca "$WORK/cert.pem" --tls-resume off --connections "$N" --connect-rate 0 \
    --settle-secs 0 --hold-secs 0 --procs "$PROCS"
for resume in on off; do
    measure "wss:// reconnect storm, --tls-resume $resume" churn --url "wss://$CLIENT_ADDR/ws" \
        --ca "$WORK/cert.pem" --tls-resume "$resume" --api "http://$API_ADDR" \
        --connections "$CHURN_N" --connect-rate 2000 --rate 10 --duration-secs "$DURATION" \
        --churn-rate 100000 --churn-fraction 1
done
stop_server
