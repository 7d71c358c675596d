#!/usr/bin/env bash
# Server CPU per heartbeat (issue 11 item 6): N idle connections, pinged every
# PING_MS (shortened so a short window holds many pings; the client answers each with a
# Pong), the server's CPU time (utime + stime from /proc) and `throng_pings_total` over
# WINDOW seconds, then the projection for 1,000,000 idle connections at the default
# 25 s interval. Stops what it started, by PID.
#
# Environment: N=15000 PING_MS=2000 WINDOW=30, SOURCE_IPS=127.0.0.2-127.0.0.9,
#   PERF=1 (profile the server over the window with perf and print the share of its time
#   that was the clients' side of loopback), FLOOR=1 (first measure this host's floor with
#   `throng-load floor` over the same connections, interval and window: a minimal epoll
#   server that only pings and reads pongs; then print Throng's figure against it),
#   NO_BUILD=1 (skip the build check), SERVER=path (another throng binary, e.g. an older
#   build to compare against).
set -euo pipefail
N=${N:-15000}
PING_MS=${PING_MS:-2000}
WINDOW=${WINDOW:-30}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale heartbeat-cost
SERVER=${SERVER:-target/release/throng}
LOAD=target/release/throng-load
command -v curl >/dev/null || { echo "heartbeat-cost: needs curl" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-heartbeat.XXXXXX)
SRV_PID=
LOAD_PID=
cleanup() {
    [[ -n $LOAD_PID ]] && kill "$LOAD_PID" 2>/dev/null || true
    stop_server_pid heartbeat-cost "$SRV_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials heartbeat-cost
run_floor heartbeat-cost --connections "$N" --interval-ms "$PING_MS" --window-secs "$WINDOW" \
    --source-ips "$SOURCE_IPS"
start_server heartbeat-cost "$WORK" --max-connections $((N + 1000)) \
    --ping-interval-ms "$PING_MS" --idle-timeout-ms $((PING_MS * 3)) || exit 1
HZ=$(getconf CLK_TCK)

timeout $((N / 5000 + WINDOW + 90)) "$LOAD" connect --url "ws://$CLIENT_ADDR/ws" \
    --connections "$N" --connect-rate 5000 --source-ips "$SOURCE_IPS" --settle-secs 2 \
    --hold-secs $((WINDOW + 20)) >"$WORK/load.log" 2>&1 &
LOAD_PID=$!
wait_connections heartbeat-cost "$N" "$LOAD_PID" "$WORK/load.log" || exit 1
# A full interval first, so the window sees steady pinging, not the connect ramp.
sleep $(((PING_MS + 999) / 1000 + 2))
c0=$(cpu_ticks) p0=$(api_stat pings)
perf_start "$SRV_PID" "$WINDOW" "$WORK/perf.data"
sleep "$WINDOW"
c1=$(cpu_ticks) p1=$(api_stat pings)
perf_share "$WORK/perf.data"
conns=$(api_stat connections)
python3 - "$c0" "$c1" "$p0" "$p1" "$HZ" "$WINDOW" "$conns" "$PING_MS" "${RX_SHARE:-}" \
    >"$WORK/figures" <<'PY'
import sys
c0, c1, p0, p1, hz, window, conns, ping_ms = map(float, sys.argv[1:9])
rx_share = sys.argv[9]
cpu_s = (c1 - c0) / hz
pings = p1 - p0
us = cpu_s / pings * 1e6 if pings else float("nan")
rate_1m = 1_000_000 / 25.0
print(f"heartbeat-cost: {int(conns)} idle connections, ping every {int(ping_ms)} ms, {int(window)} s window")
print(f"heartbeat-cost: {int(pings)} pings ({pings / window:.0f}/s), server CPU {cpu_s:.2f} s = {us:.2f} us per ping round trip")
print(f"heartbeat-cost: projected for 1,000,000 idle connections at the default 25 s interval: {rate_1m * us / 1e6:.3f} cores")
if rx_share:
    rest = us * (1 - float(rx_share) / 100)
    print(f"heartbeat-cost: perf: {rx_share}% of the server's samples were the receive path run "
          f"inside its system calls (on loopback mostly the clients' TCP input); without it "
          f"{rest:.2f} us per round trip, {rate_1m * rest / 1e6:.3f} cores projected")
PY
cat "$WORK/figures"
say_floor_ratio heartbeat-cost "$(sed -n 's/.* = \([0-9.]*\) us per ping round trip/\1/p' "$WORK/figures")"
