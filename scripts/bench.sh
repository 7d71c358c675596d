#!/usr/bin/env bash
# Criterion micro-benchmarks, then a short table of the results.
#
# Usage: scripts/bench.sh [BENCH...]
#   BENCH: frame jwt wheel push_parse fanout route replay deflate (default: all of them)
#
# Runs `cargo bench --bench BENCH` for each (release profile, so the first build is
# slow: fat LTO), then prints bench name, median time and throughput read from
# target/criterion/**/new/{estimates,benchmark}.json for the benches this run measured.
#
# Environment:
#   TIMEOUT=1800   seconds allowed for each `cargo bench` (build included)
#   NO_RUN=1       skip running; print the table from every stored result
set -euo pipefail

cd "$(dirname "$0")/.."

ALL=(frame jwt wheel push_parse fanout route replay deflate)
if [ "$#" -gt 0 ]; then
    BENCHES=("$@")
else
    BENCHES=("${ALL[@]}")
fi
TIMEOUT=${TIMEOUT:-1800}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
CRITERION_DIR="$TARGET_DIR/criterion"

for b in "${BENCHES[@]}"; do
    case " ${ALL[*]} " in
        *" $b "*) ;;
        *) echo "bench.sh: unknown bench '$b' (known: ${ALL[*]})" >&2; exit 2 ;;
    esac
done

# Results written after this moment belong to this run.
STAMP=$(mktemp)
trap 'rm -f "$STAMP"' EXIT

if [ "${NO_RUN:-}" != 1 ]; then
    for b in "${BENCHES[@]}"; do
        echo "== cargo bench --bench $b" >&2
        timeout --signal=TERM --kill-after=30 "$TIMEOUT" \
            cargo bench --bench "$b" -- --noplot
    done
fi

if [ ! -d "$CRITERION_DIR" ]; then
    echo "bench.sh: no results under $CRITERION_DIR" >&2
    exit 1
fi

SINCE_FILE="$STAMP"
[ "${NO_RUN:-}" = 1 ] && SINCE_FILE=""

python3 - "$CRITERION_DIR" "$SINCE_FILE" <<'PY'
import json
import os
import sys

root, since_file = sys.argv[1], sys.argv[2]
since = os.path.getmtime(since_file) if since_file else 0.0


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.1f} ns"


def fmt_rate(value, unit):
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.1f} {unit}"


def fmt_throughput(tp, ns):
    if not tp or ns <= 0:
        return "-"
    (kind, n), = tp.items()
    per_sec = n / (ns / 1e9)
    if kind in ("Bytes", "BytesDecimal"):
        gib = per_sec / 2**30
        return f"{gib:.2f} GiB/s" if gib >= 1 else f"{per_sec / 2**20:.1f} MiB/s"
    if kind == "Elements":
        return fmt_rate(per_sec, "elem/s")
    return f"{n} {kind}"


rows = []
for dirpath, _dirs, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
        continue
    est_path = os.path.join(dirpath, "estimates.json")
    if os.path.getmtime(est_path) < since:
        continue
    with open(est_path) as f:
        median = json.load(f)["median"]["point_estimate"]
    name = os.path.relpath(os.path.dirname(dirpath), root)
    tp = None
    try:
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        name = meta.get("full_id") or name
        tp = meta.get("throughput")
    except (OSError, ValueError):
        pass
    rows.append((name, fmt_time(median), fmt_throughput(tp, median)))

if not rows:
    sys.exit("bench.sh: no results from this run")
rows.sort()
w = max(len("benchmark"), *(len(r[0]) for r in rows))
print(f"{'benchmark':<{w}}  {'median':>10}  {'throughput':>16}")
print(f"{'-' * w}  {'-' * 10}  {'-' * 16}")
for name, t, tp in rows:
    print(f"{name:<{w}}  {t:>10}  {tp:>16}")
PY
