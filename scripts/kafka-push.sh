#!/usr/bin/env bash
# Pushes through the Kafka ingress (docs/protocol.md 7, issue 14 item 7), measured: a
# Kafka-protocol broker (tansu, SQLite storage in a temporary directory, on a free
# loopback port), the push topic with PARTITIONS partitions and its `.dlq`, a release
# server `throng serve --kafka`, then per rate in RATE a `throng-load push --kafka` run of
# N connections producing RATE user pushes/s for SECS seconds (one record per push, keyed
# by its user). Prints per run the pushes/s the broker acknowledged, the produce-to-client
# latency (p50/p99), missing and duplicated deliveries, produce errors, and the CPU
# seconds the server and the broker spent; a table of all runs at the end. Waits for the
# consumer to hold every partition before the first run, and before each next one and at
# the end until the server has delivered as many records as the broker acknowledged
# (its `delivered` counter, not its `lag` figure, which is read every 5 s and has read 0
# with records undelivered). A delivery later than DRAIN seconds after a run's last push
# counts as missing in that run's report, but it is no loss when the end says the
# consumer caught up. Everything it started is stopped by its PID on any exit.
#
# Environment (all optional):
#   N=1000          connections (user u<i> for connection i)
#   RATE=1000       pushes per second; several, space separated, for one run each
#   SECS=10         seconds each run produces
#   PARTITIONS=4    partitions of the push topic
#   TARGET=user     push target (user, users, topic or broadcast; topic uses TOPICS)
#   TOPICS=room:1,room:2   the topics of TARGET=topic
#   CONCURRENCY=1   driver threads sharing the producer (throng-load --api-concurrency)
#   DRAIN=10        seconds throng-load waits for deliveries after the last push
#   TANSU=tansu     the broker binary (cargo install tansu --locked --features dynostore,libsql)
#   EXTRA=          more flags for the server (e.g. "--shards 1")
#   SERVER=path     another throng binary (default target/release/throng)
#   CATCHUP=120     seconds to wait for the consumer to catch up before a run and at the end
#   JSON_DIR=       keep each run's report there as kafka-push-<run>-<rate>.json, and at the end
#                   the server's, the broker's and throng-load's logs
#   NO_BUILD=1      skip the release build (by default it runs only when sources are newer)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
N=${N:-1000} RATE=${RATE:-1000} SECS=${SECS:-10} PARTITIONS=${PARTITIONS:-4}
TARGET=${TARGET:-user} TOPICS=${TOPICS:-room:1,room:2} CONCURRENCY=${CONCURRENCY:-1}
DRAIN=${DRAIN:-10} CATCHUP=${CATCHUP:-120}
TOPIC=throng.push
TANSU=${TANSU:-tansu}
if ! command -v "$TANSU" >/dev/null; then
    if [[ -x $HOME/.cargo/bin/tansu ]]; then
        TANSU=$HOME/.cargo/bin/tansu
    else
        echo "kafka-push: needs the tansu broker: cargo install tansu --locked --features dynostore,libsql" >&2
        exit 1
    fi
fi
command -v curl >/dev/null && command -v python3 >/dev/null || {
    echo "kafka-push: needs curl and python3" >&2
    exit 1
}
build_release_if_stale kafka-push
SERVER=${SERVER:-target/release/throng}
LOAD=target/release/throng-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-kafka-push.XXXXXX)
TANSU_PID= SRV_PID=
cleanup() {
    # The server first: it commits what it delivered while the broker is still there.
    stop_server_pid kafka-push "$SRV_PID" 10
    stop_server_pid kafka-push "$TANSU_PID" 10
    if [[ -n ${JSON_DIR:-} ]]; then
        mkdir -p "$JSON_DIR" && cp "$WORK"/*.log "$JSON_DIR"/ 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials kafka-push

PORT=$(free_port)
BROKER=127.0.0.1:$PORT
"$TANSU" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
    --storage-engine "sqlite:///$WORK/tansu.db" >"$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$TANSU_PID" 2>/dev/null || { echo "kafka-push: tansu exited:" >&2; cat "$WORK/tansu.log" >&2; exit 1; }
    sleep 0.1
done
"$TANSU" topic create "$TOPIC" --partitions "$PARTITIONS" --broker "tcp://$BROKER" >/dev/null
"$TANSU" topic create "$TOPIC.dlq" --partitions 1 --broker "tcp://$BROKER" >/dev/null

# shellcheck disable=SC2086 # EXTRA is a list of flags
start_server kafka-push "$WORK" --max-connections $((N + 1000)) --kafka "$BROKER" \
    --kafka-topic "$TOPIC" ${EXTRA:-} || exit 1

# A field of the server's Kafka figures in /v1/stats (`assigned_partitions`, `lag`, ...).
kafka_stat() {
    curl -s -H "Authorization: Bearer $THRONG_API_KEY" "http://$API_ADDR/v1/stats" |
        python3 -c "import json,sys; print(json.load(sys.stdin).get('kafka', {}).get(sys.argv[1], ''))" "$1"
}
# Waits (at most $3 s) until the Kafka figure $1 is $2.
wait_kafka() {
    for _ in $(seq $(($3 * 10))); do
        [[ $(kafka_stat "$1") == "$2" ]] && return 0
        sleep 0.1
    done
    echo "kafka-push: the server's kafka $1 is $(kafka_stat "$1"), not $2, after $3 s" >&2
    return 1
}
wait_kafka assigned_partitions "$PARTITIONS" 60
acked=0
# Waits (at most CATCHUP s) until the consumer has delivered (or sent to the DLQ) every
# record the broker acknowledged so far; says how far it got when it has not.
wait_caught_up() {
    local done_ d q
    for _ in $(seq $((CATCHUP * 2))); do
        d=$(kafka_stat delivered) q=$(kafka_stat dlq)
        done_=$((${d:-0} + ${q:-0}))
        ((done_ >= acked)) && return 0
        sleep 0.5
    done
    echo "kafka-push: the consumer has not caught up after ${CATCHUP}s: $done_ of $acked records delivered or in the DLQ; kafka stats now: consumed $(kafka_stat consumed), lag $(kafka_stat lag), assigned partitions $(kafka_stat assigned_partitions), paused $(kafka_stat paused_partitions)" >&2
    return 1
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
echo "kafka-push: tansu $BROKER (pid $TANSU_PID), $TOPIC with $PARTITIONS partitions; server pid $SRV_PID; $N connections, $TARGET pushes for ${SECS}s at: $RATE /s"

topic_flags=()
[[ $TARGET == topic ]] && topic_flags=(--topics "$TOPICS")
rows=()
run=0
for rate in $RATE; do
    run=$((run + 1))
    wait_caught_up || true
    report=$WORK/report-$run-$rate.json
    log=$WORK/load-$run-$rate.log
    s0=$(cpu "$SRV_PID") b0=$(cpu "$TANSU_PID")
    rc=0
    timeout $((N / 2000 + SECS + 120)) "$LOAD" push --url "ws://$CLIENT_ADDR/ws" \
        --api "http://$API_ADDR" --kafka "$BROKER" --kafka-topic "$TOPIC" \
        --connections "$N" --connect-rate 5000 --target "$TARGET" "${topic_flags[@]}" \
        --rate "$rate" --duration-secs "$SECS" --api-concurrency "$CONCURRENCY" \
        --drain-secs "$DRAIN" --json "$report" >"$log" 2>&1 || rc=$?
    s1=$(cpu "$SRV_PID") b1=$(cpu "$TANSU_PID")
    if [[ ! -f $report ]]; then
        echo "kafka-push: throng-load at $rate/s wrote no report (exit $rc):" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    [[ -n ${JSON_DIR:-} ]] && mkdir -p "$JSON_DIR" && cp "$report" "$JSON_DIR/kafka-push-$run-$rate.json"
    # Two lines back: the table row, and the pushes the broker acknowledged.
    mapfile -t out < <(python3 - "$report" "$rate" "$((s1 - s0))" "$((b1 - b0))" "$HZ" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rate, hz = sys.argv[2], float(sys.argv[5])
srv_cpu, broker_cpu = (f"{int(t) / hz:.1f}" for t in sys.argv[3:5])
lat, ack = r.get("latency_us", {}), r.get("api_latency_us", {})
ms = lambda us: f"{(us or 0) / 1000:.1f}"
errors = " ".join(f"{k}={v}" for k, v in (r.get("push_errors") or {}).items()) or "none"
print(f"kafka-push: {rate}/s via {r.get('push_via')}: {r.get('pushes_sent')} pushes acknowledged, "
      f"{r.get('push_rate_per_sec')} pushes/s, {r.get('deliveries_per_sec')} deliveries/s; "
      f"produce-to-client latency p50 {ms(lat.get('p50'))} ms p99 {ms(lat.get('p99'))} ms "
      f"max {ms(lat.get('max'))} ms; produce-to-ack p50 {ms(ack.get('p50'))} ms "
      f"p99 {ms(ack.get('p99'))} ms; missing {r.get('messages_missing')} duplicated "
      f"{r.get('messages_duplicated')} out of order {r.get('messages_out_of_order')}; "
      f"produce errors {errors}; CPU s: server {srv_cpu} broker {broker_cpu}", file=sys.stderr)
print(f"| {rate} | {r.get('push_rate_per_sec')} | {ms(lat.get('p50'))} / {ms(lat.get('p99'))} ms "
      f"| {r.get('messages_missing')} / {r.get('messages_duplicated')} | {srv_cpu} / {broker_cpu} |")
print(r.get("pushes_sent") or 0)
PY
)
    rows+=("${out[0]}")
    acked=$((acked + ${out[1]:-0}))
    if ((rc != 0)); then
        echo "kafka-push: throng-load exited $rc at $rate/s:" >&2
        tail -20 "$log" >&2
    fi
done
if wait_caught_up; then
    echo "kafka-push: the server's consumer caught up: $(kafka_stat delivered) records delivered and $(kafka_stat dlq) sent to the DLQ, of $acked the broker acknowledged"
fi
echo
echo "| rate /s | pushes/s | produce-to-client p50 / p99 | missing / duplicated | CPU s server / broker |"
echo "|---:|---:|---|---|---|"
printf '%s\n' "${rows[@]}"
