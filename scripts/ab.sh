#!/usr/bin/env bash
# Before/after on a noisy host: runs one measurement script against two builds,
# alternately (A B, B A, A B, ...: neither build always goes second, which on a small VM
# tends to be the slower one), and prints each run's figure and, per build, the runs,
# the median and the range.
#
# Usage: scripts/ab.sh SCRIPT BUILD_A BUILD_B [PAIRS]
#   SCRIPT   one of the scripts that take SERVER= (e.g. push-cost.sh, heartbeat-cost.sh,
#            idle-memory.sh, handshake-cost.sh, burst-memory.sh, crowd-memory.sh)
#   BUILD_A, BUILD_B  throng binaries (copy target/release/throng aside before rebuilding)
#   PAIRS    runs of each build (default 3)
#
# Environment: FIGURE= a regular expression whose first group is the figure to compare
# (the default depends on SCRIPT; see below), and whatever SCRIPT itself takes (N=,
# TARGET=, ...), passed through. The script's build check is skipped (NO_BUILD=1). The
# full output of every run is kept in a temporary directory, named at the end.
set -euo pipefail

usage() {
    sed -n '2,17p' "$0" >&2
    exit 2
}
(($# >= 3 && $# <= 4)) || usage
SCRIPT=$1 A=$2 B=$3 PAIRS=${4:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[[ $SCRIPT == */* ]] || SCRIPT=$ROOT/scripts/$SCRIPT
[[ -x $SCRIPT ]] || { echo "ab: no script $SCRIPT" >&2; exit 2; }
for bin in "$A" "$B"; do
    [[ -x $bin ]] || { echo "ab: $bin is not an executable throng build" >&2; exit 2; }
done
[[ $PAIRS =~ ^[1-9][0-9]*$ ]] || { echo "ab: PAIRS must be a positive whole number, got '$PAIRS'" >&2; exit 2; }

case $(basename "$SCRIPT") in
    push-cost.sh) DEFAULT='= ([0-9.]+) us per delivery' ;;
    heartbeat-cost.sh) DEFAULT='= ([0-9.]+) us per ping round trip' ;;
    handshake-cost.sh) DEFAULT='= ([0-9.]+) us per handshake' ;;
    idle-memory.sh) DEFAULT='server RSS per idle connection: +([0-9.]+) bytes' ;;
    burst-memory.sh) DEFAULT='B after \((-?[0-9]+) B more\)' ;;
    crowd-memory.sh) DEFAULT='left per crowd connection: (-?[0-9]+) B' ;;
    *) DEFAULT= ;;
esac
FIGURE=${FIGURE:-$DEFAULT}
[[ -n $FIGURE ]] || { echo "ab: give FIGURE= for $(basename "$SCRIPT")" >&2; exit 2; }

OUT=$(mktemp -d -t throng-ab.XXXXXX)
echo "ab: $(basename "$SCRIPT"), A=$A, B=$B, $PAIRS runs each; outputs in $OUT"
for ((i = 0; i < PAIRS; i++)); do
    if ((i % 2 == 0)); then order="A B"; else order="B A"; fi
    for which in $order; do
        bin=$A
        [[ $which == B ]] && bin=$B
        log="$OUT/$i-$which.log"
        status=0
        NO_BUILD=1 SERVER=$bin "$SCRIPT" >"$log" 2>&1 || status=$?
        if ((status != 0)); then
            echo "ab: run $((i + 1)) of $which failed (exit $status):" >&2
            tail -20 "$log" >&2
            exit 1
        fi
        figure=$(python3 - "$FIGURE" "$log" <<'PY'
import re, sys
pattern, path = sys.argv[1], sys.argv[2]
for line in open(path, errors="replace"):
    m = re.search(pattern, line)
    if m:
        print(m.group(1))
        break
PY
)
        [[ -n $figure ]] || { echo "ab: no line matching '$FIGURE' in $log" >&2; exit 1; }
        echo "ab: run $((i + 1)) $which: $figure"
        echo "$which $figure" >>"$OUT/figures"
    done
done
python3 - "$OUT/figures" "$A" "$B" <<'PY'
import statistics, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    which, value = line.split()
    runs[which].append(float(value))
for which, path in (("A", sys.argv[2]), ("B", sys.argv[3])):
    v = runs[which]
    print(f"ab: {which} ({path}): {', '.join(f'{x:g}' for x in v)}; "
          f"median {statistics.median(v):g}, range {min(v):g} to {max(v):g}")
a, b = statistics.median(runs["A"]), statistics.median(runs["B"])
if a:
    print(f"ab: B's median is {(b - a) / abs(a) * 100:+.1f}% of A's")
PY
