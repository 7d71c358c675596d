#!/usr/bin/env bash
# Server CPU per WebSocket handshake (issue 11 item 3): N connections opened as fast as
# the server takes them (`throng-load connect --connect-rate 0`, tokens verified as JWTs),
# and the server's CPU time (utime + stime from /proc) from before the first connection
# until the server holds all N, divided by N. Prints the load generator's connection
# rate and handshake latency, the server CPU per handshake and the load generator's own
# CPU time (its whole run: connect, hold and close). Stops what it started, by PID.
#
# Environment: N=18000, PROCS=2 (load-generator processes; one cannot hold 18,000 sockets
#   under a 20,000-file limit), SOURCE_IPS=127.0.0.2-127.0.0.9, SERVER=path (another
#   throng binary, e.g. an older build to compare against), NO_BUILD=1 (skip the build
#   check), FLOOR=1 (first measure this host's floor with `throng-load floor --workload
#   handshake` over the same N: a minimal epoll server that accepts, reads, registers and
#   answers with fixed bytes, against minimal clients; then print Throng's figure
#   against it).
set -euo pipefail
N=${N:-18000}
PROCS=${PROCS:-2}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale handshake-cost
SERVER=${SERVER:-target/release/throng}
LOAD=target/release/throng-load
command -v curl >/dev/null || { echo "handshake-cost: needs curl" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-handshake-cost.XXXXXX)
SRV_PID=
LOAD_PID=
cleanup() {
    [[ -n $LOAD_PID ]] && kill "$LOAD_PID" 2>/dev/null || true
    stop_server_pid handshake-cost "$SRV_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials handshake-cost
run_floor handshake-cost --workload handshake --connections "$N" --source-ips "$SOURCE_IPS"
start_server handshake-cost "$WORK" --max-connections $((N + 1000)) || exit 1
HZ=$(getconf CLK_TCK)

c0=$(cpu_ticks)
# GNU time is not everywhere; bash's `times` in the subshell reports its children.
timeout $((N / 1000 + 120)) bash -c '"$@"; times' _ "$LOAD" connect \
    --url "ws://$CLIENT_ADDR/ws" --connections "$N" --connect-rate 0 --procs "$PROCS" \
    --source-ips "$SOURCE_IPS" --hold-secs 3 --json "$WORK/report.json" \
    >"$WORK/load.log" 2>&1 &
LOAD_PID=$!
# Polls the connections gauge; each poll costs the server one API request, a few in all.
for _ in $(seq 6000); do
    conns=$(api_stat connections 2>/dev/null || echo 0)
    ((conns >= N)) && break
    kill -0 "$LOAD_PID" 2>/dev/null || break
    sleep 0.05
done
c1=$(cpu_ticks)
status=0
wait "$LOAD_PID" || status=$?
LOAD_PID=
if ((status != 0)) || ((conns < N)); then
    echo "handshake-cost: throng-load failed (exit $status, $conns of $N connected):" >&2
    tail -20 "$WORK/load.log" >&2
    exit 1
fi
load_cpu=$(tail -1 "$WORK/load.log")
python3 - "$WORK/report.json" "$c0" "$c1" "$HZ" "$N" "$load_cpu" >"$WORK/figures" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
c0, c1, hz, n = map(float, sys.argv[2:6])
# `times` prints the children's user and system time as "XmY.YYYs XmY.YYYs".
t = [int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", sys.argv[6])]
lat = r.get("handshake_latency_us", {})
print(f"handshake-cost: {int(n)} connections, {r.get('connect_rate_per_sec')} connections/s, "
      f"connect errors {r.get('connect_errors')}, handshake p50 {lat.get('p50')} us, "
      f"p99 {lat.get('p99')} us")
print(f"handshake-cost: server CPU {(c1 - c0) / hz:.2f} s = "
      f"{(c1 - c0) / hz / n * 1e6:.1f} us per handshake")
if len(t) == 2:
    print(f"handshake-cost: load generator CPU (connect, hold 3 s, close) {t[0] + t[1]:.2f} s "
          f"= {(t[0] + t[1]) / n * 1e6:.1f} us per connection")
PY
cat "$WORK/figures"
say_floor_ratio handshake-cost "$(sed -n 's/^handshake-cost: server CPU .* = \([0-9.]*\) us per handshake$/\1/p' "$WORK/figures")"
