#!/usr/bin/env bash
# Memory per keep-alive push API connection, plain HTTP against HTTPS (--api-tls-cert).
#
# For each mode: starts `throng serve` on loopback ports, opens N keep-alive connections
# with Python's http.client (OpenSSL for HTTPS), each sending one push and staying open,
# and prints the server's RSS before and after, per connection. Stops what it started,
# by PID.
#
# Environment: N=800 (at most api_max_connections, 1024 by default), NO_BUILD=1 (skip the
#   build check), SERVER=path (another throng binary).
set -euo pipefail
N=${N:-800}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale api-tls-memory
command -v python3 >/dev/null || { echo "api-tls-memory: needs python3" >&2; exit 1; }
command -v openssl >/dev/null || { echo "api-tls-memory: needs openssl" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-api-tls.XXXXXX)
SRV_PID=
cleanup() {
    stop_server_pid api-tls-memory "$SRV_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials api-tls-memory
make_test_cert "$WORK"
for mode in http https; do
    args=()
    ca=-
    if [[ $mode == https ]]; then
        args=(--api-tls-cert "$WORK/cert.pem" --api-tls-key "$WORK/key.pem")
        ca=$WORK/cert.pem
    fi
    start_server api-tls-memory "$WORK" "${args[@]}" || exit 1
    python3 - "$mode" "${API_ADDR##*:}" "$N" "$ca" "$SRV_PID" <<'PY'
import http.client, json, os, ssl, sys, time
mode, port, n, ca, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
key = os.environ["THRONG_API_KEY"]
ctx = ssl.create_default_context(cafile=ca) if mode == "https" else None

def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

def conn():
    if ctx:
        return http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)

def push(c, i):
    body = json.dumps({"user": "u%d" % i, "data": "x"})
    c.request("POST", "/v1/push", body=body, headers={"Authorization": "Bearer " + key})
    r = c.getresponse()
    r.read()
    assert r.status == 202, r.status

# One connection first, so that what the first one allocates once is not counted.
c = conn()
push(c, -1)
c.close()
time.sleep(0.5)
before = rss_kib()
held = []
for i in range(n):
    c = conn()
    push(c, i)
    held.append(c)
time.sleep(0.5)
after = rss_kib()
print(f"api-tls-memory: {mode}: {n} keep-alive connections, RSS {before} -> {after} KiB, "
      f"{(after - before) * 1024 / n:.0f} B per connection")
PY
    stop_server_pid api-tls-memory "$SRV_PID" 10
    SRV_PID=
done
