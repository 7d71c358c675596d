#!/usr/bin/env bash
# Server CPU per delivered push (issue 11 items 4 and 5): N connections, `throng-load
# push` for DURATION seconds, and the server's CPU time (utime + stime from /proc) over a
# WINDOW-second window in the middle of it against `throng_pushes_delivered_total` over
# the same window. Prints the load generator's throughput and latency, the server CPU
# per delivery and the load generator's own CPU per delivery over the same window (it
# shares the host's cores). Stops what it started, by PID.
#
# Environment:
#   TARGET=user        user (one POST per push, unicast) or broadcast
#   N=10000            connections (15000 for the broadcast workload of issue 11)
#   RATE=0             pushes per second (0: as fast as the API answers; 40 for a
#                      broadcast every 25 ms)
#   CONCURRENCY=64     API requests in flight (user pushes)
#   DURATION=10 WINDOW=5 PROCS=1 (2 for 15,000 connections), SOURCE_IPS=127.0.0.2-127.0.0.9,
#   PERF=1 (profile the server over the window with perf and print the share of its time
#   that was the clients' side of loopback), NO_BUILD=1 (skip the build check), SERVER=path (another throng binary, e.g. an older
#   build to compare against), TLS=1 (wss://: a fresh self-signed certificate,
#   trusted by the load generator with --ca), API_TLS=1 (the push API over HTTPS, with
#   the same kind of certificate), LOAD_ARGS= (more throng-load push flags,
#   e.g. '--payload-bytes 2000 --payload-json --compression'), SHARDS= (the server's
#   --shards; default one per core), LOAD=path (another throng-load binary),
#   API_TLS_FLOOD=K (with API_TLS=1: K processes of scripts/tls-flood.py make full TLS
#   handshakes with the push API for the whole run, as a peer looping handshakes would),
#   API_TLS_RSA=1 (with API_TLS=1: an RSA-2048 certificate instead of ECDSA P-256),
#   FLOOR=1 (first measure this host's floor with `throng-load floor`, no Throng, then
#   print Throng's CPU per delivery against it: TARGET=broadcast, `--workload broadcast` at
#   the same connections, rate and window, frames of FLOOR_FRAME_BYTES=150, one write per
#   connection per broadcast (at rates where one thread cannot write every frame alone the
#   floor says it did not keep up); TARGET=user, `--workload unicast` at the same
#   connections, CONCURRENCY API connections each with one request in flight, and window:
#   per push one read of the request, a fixed 202 and the frame written to one connection).
# Also prints the wire bytes per delivery the load generator read (its `compression`
# report), with or without --compression.
set -euo pipefail
TARGET=${TARGET:-user}
N=${N:-10000}
RATE=${RATE:-0}
CONCURRENCY=${CONCURRENCY:-64}
DURATION=${DURATION:-10}
WINDOW=${WINDOW:-5}
PROCS=${PROCS:-1}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale push-cost
SERVER=${SERVER:-target/release/throng}
LOAD=${LOAD:-target/release/throng-load}
command -v curl >/dev/null || { echo "push-cost: needs curl" >&2; exit 1; }
((WINDOW + 3 < DURATION)) || { echo "push-cost: WINDOW must be at least 4 s shorter than DURATION" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-push-cost.XXXXXX)
SRV_PID=
LOAD_PID=
cleanup() {
    [[ -n $LOAD_PID ]] && kill "$LOAD_PID" 2>/dev/null || true
    for p in ${FLOOD_PIDS[@]+"${FLOOD_PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
    stop_server_pid push-cost "$SRV_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials push-cost
SERVER_ARGS=(--max-connections $((N + 1000)))
[[ -n ${SHARDS:-} ]] && SERVER_ARGS+=(--shards "$SHARDS")
tls_if_asked "$WORK"
api_tls_if_asked "$WORK"
if [[ $TARGET == broadcast ]]; then
    run_floor push-cost --workload broadcast --connections "$N" --rate "$RATE" \
        --window-secs "$WINDOW" --frame-bytes "${FLOOR_FRAME_BYTES:-150}" --source-ips "$SOURCE_IPS"
elif [[ $TARGET == user ]]; then
    run_floor push-cost --workload unicast --connections "$N" --in-flight "$CONCURRENCY" \
        --window-secs "$WINDOW" --frame-bytes "${FLOOR_FRAME_BYTES:-150}" --source-ips "$SOURCE_IPS"
fi
start_server push-cost "$WORK" "${SERVER_ARGS[@]}" || exit 1
HZ=$(getconf CLK_TCK)

timeout $((N / 5000 + DURATION + 120)) "$LOAD" push --url "$SCHEME://$CLIENT_ADDR/ws" \
    ${TLS_ARGS[@]+"${TLS_ARGS[@]}"} ${LOAD_API_TLS[@]+"${LOAD_API_TLS[@]}"} \
    --api "$API_SCHEME://$API_ADDR" --connections "$N" --connect-rate 10000 \
    --source-ips "$SOURCE_IPS" --procs "$PROCS" --target "$TARGET" --rate "$RATE" \
    --api-concurrency "$CONCURRENCY" --duration-secs "$DURATION" ${LOAD_ARGS:-} \
    --json "$WORK/report.json" >"$WORK/load.log" 2>&1 &
LOAD_PID=$!
wait_connections push-cost "$N" "$LOAD_PID" "$WORK/load.log" || exit 1
FLOOD_PIDS=()
if [[ -n ${API_TLS_FLOOD:-} ]]; then
    [[ -n ${API_TLS:-} ]] || { echo "push-cost: API_TLS_FLOOD needs API_TLS=1" >&2; exit 2; }
    for i in $(seq "$API_TLS_FLOOD"); do
        python3 scripts/tls-flood.py "${API_ADDR%:*}" "${API_ADDR##*:}" "$DURATION" \
            >"$WORK/flood-$i.log" 2>&1 &
        FLOOD_PIDS+=($!)
    done
fi
# Into the pushing phase, clear of the connect ramp.
sleep 2
c0=$(cpu_ticks) d0=$(api_stat pushes_delivered) l0=$(tree_cpu_ticks "$LOAD_PID")
perf_start "$SRV_PID" "$WINDOW" "$WORK/perf.data"
sleep "$WINDOW"
c1=$(cpu_ticks) d1=$(api_stat pushes_delivered) l1=$(tree_cpu_ticks "$LOAD_PID")
perf_share "$WORK/perf.data"
status=0
wait "$LOAD_PID" || status=$?
LOAD_PID=
if ((status != 0)); then
    echo "push-cost: throng-load failed (exit $status):" >&2
    tail -20 "$WORK/load.log" >&2
    exit "$status"
fi
for p in ${FLOOD_PIDS[@]+"${FLOOD_PIDS[@]}"}; do wait "$p" 2>/dev/null || true; done
FLOOD_PIDS=()
if [[ -n ${API_TLS_FLOOD:-} ]]; then
    cat "$WORK"/flood-*.log | awk '/tls-flood:/ { ok += $2; bad += $4 }
        END { printf "push-cost: TLS flood: %d handshakes with the push API (%.0f/s), %d failed\n", ok, ok / '"$DURATION"', bad }'
fi
python3 - "$WORK/report.json" "$c0" "$c1" "$d0" "$d1" "$HZ" "$WINDOW" "$TARGET" "$N" "${RX_SHARE:-}" "$l0" "$l1" \
    >"$WORK/figures" <<'PY'
import json, sys
path = sys.argv[1]
c0, c1, d0, d1, hz, window = map(float, sys.argv[2:8])
target, n, rx_share = sys.argv[8], sys.argv[9], sys.argv[10]
l0, l1 = float(sys.argv[11]), float(sys.argv[12])
r = json.load(open(path))
lat = r.get("latency_us", {})
delivered = d1 - d0
us = (c1 - c0) / hz / delivered * 1e6 if delivered else float("nan")
print(f"push-cost: {target} pushes to {n} connections: {r.get('deliveries_per_sec')} deliveries/s, "
      f"missing {r.get('messages_missing')}, duplicated {r.get('messages_duplicated')}, "
      f"out of order {r.get('messages_out_of_order')}")
print(f"push-cost: latency p50 {lat.get('p50')} us, p99 {lat.get('p99')} us, "
      f"p99.9 {lat.get('p999')} us, max {lat.get('max')} us")
print(f"push-cost: server CPU {(c1 - c0) / hz:.2f} s over {window:.0f} s for {int(delivered)} "
      f"deliveries = {us:.2f} us per delivery")
if delivered:
    print(f"push-cost: load generator CPU {(l1 - l0) / hz:.2f} s over the same window = "
          f"{(l1 - l0) / hz / delivered * 1e6:.2f} us per delivery")
if rx_share:
    share = float(rx_share) / 100
    print(f"push-cost: perf: {rx_share}% of the server's samples were the receive path run "
          f"inside its system calls (on loopback mostly the clients' TCP input); without it "
          f"{us * (1 - share):.2f} us per delivery")
c = r.get("compression") or {}
if c:
    print(f"push-cost: wire {c.get('wire_bytes_per_delivery')} B per delivery (payload "
          f"{c.get('payload_bytes_per_delivery')} B), {c.get('compressed_frames')} compressed "
          f"frames, compression negotiated on {c.get('negotiated_connections')} of "
          f"{c.get('offered_connections')} offering connections")
PY
cat "$WORK/figures"
say_floor_ratio push-cost "$(sed -n 's/^push-cost: server CPU .* = \([0-9.]*\) us per delivery$/\1/p' "$WORK/figures")"
