#!/usr/bin/env bash
# Memory under clients that never read, and after they are gone (issue 7).
#
# Starts `throng serve` on loopback ports, opens N WebSocket clients that never read (raw
# sockets from Python, SO_RCVBUF shrunk so the kernel takes little and the server's queues
# fill), records the server's RSS with them idle, then sends each of them distinct 50 KB
# pushes through POST /v1/push/batch, round after round, until every client has been closed
# (4008 from max_outbound_bytes or from the max_outbound_total_bytes budget) or ROUNDS
# rounds are done. It records the peak RSS, closes the clients, and records RSS again
# SETTLE seconds after the server reports no connections. Only the server PID it started is
# stopped (SIGTERM, then SIGKILL after 10 s).
#
# Environment:
#   N=2000              clients
#   BUDGET=             --max-outbound-total-bytes (default: the server's default)
#   SERVER=target/release/throng   the binary to run (this script never builds)
#   PUSH_BYTES=50000    bytes of data per push
#   ROUNDS=80           at most this many pushes per client (the kernel takes about 130 KB of
#                       each never-reading client before the server queues anything; 1-2 MB
#                       with EXTRA="--tcp-notsent-lowat 0" on a host without the sysctl)
#   SETTLE=10           seconds after the clients are gone before the last RSS
#   SHARDS=             --shards (default: the server's default)
#   EXTRA=              more server flags, e.g. "--max-outbound-bytes 2097152"
#   LIMIT=600           seconds the whole measurement may take
#   KEEP_LOG=           copy the server log here at the end
#   PAUSE=              seconds to hold the clients open after the pushes (to inspect with ss)
set -euo pipefail

N=${N:-2000}
PUSH_BYTES=${PUSH_BYTES:-50000}
ROUNDS=${ROUNDS:-80}
SETTLE=${SETTLE:-10}
LIMIT=${LIMIT:-600}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SERVER=${SERVER:-target/release/throng}
[[ -x $SERVER ]] || { echo "slow-consumers: no $SERVER (build it first)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "slow-consumers: needs python3" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-slow.XXXXXX)
SRV_PID=
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
cleanup() {
    stop_server_pid slow-consumers "$SRV_PID" 10
    [[ -n ${KEEP_LOG:-} && -f $WORK/server.log ]] && cp "$WORK/server.log" "$KEEP_LOG"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Test-only credentials, passed through the environment (not visible in `ps`).
export_credentials slow-consumers

# Long heartbeats: clients that never read never answer a ping, and the measurement is
# about the outbound limits, not the 4002 idle close.
SERVER_ARGS=(--drain-ms 1000 --max-connections $((N + 1000))
    --ping-interval-ms 600000 --idle-timeout-ms 1200000)
[[ -n ${BUDGET:-} ]] && SERVER_ARGS+=(--max-outbound-total-bytes "$BUDGET")
[[ -n ${SHARDS:-} ]] && SERVER_ARGS+=(--shards "$SHARDS")
# shellcheck disable=SC2206
[[ -n ${EXTRA:-} ]] && SERVER_ARGS+=($EXTRA)
echo "slow-consumers: $SERVER serve ${SERVER_ARGS[*]}"
start_server slow-consumers "$WORK" "${SERVER_ARGS[@]}" || exit 1

cat >"$WORK/clients.py" <<'EOF'
import base64, hashlib, hmac, http.client, json, os, socket, sys, threading, time

pid = int(os.environ["SRV_PID"])
n = int(os.environ["N"])
push_bytes = int(os.environ["PUSH_BYTES"])
rounds = int(os.environ["ROUNDS"])
settle = float(os.environ["SETTLE"])
secret = os.environ["THRONG_JWT_SECRET"].encode()
api_key = os.environ["THRONG_API_KEY"]
ws_host, ws_port = os.environ["CLIENT_ADDR"].rsplit(":", 1)
api_host, api_port = os.environ["API_ADDR"].rsplit(":", 1)

def status(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0

def mib(b):
    return f"{b / 1048576:.1f} MiB"

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def token(sub):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 3600}).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"

api = http.client.HTTPConnection(api_host, int(api_port), timeout=30)

def request(method, path, body=None):
    for _ in range(200):
        api.request(method, path, body=body, headers={"Authorization": f"Bearer {api_key}"})
        r = api.getresponse()
        data = r.read()
        if r.status != 503:
            return r.status, data
        time.sleep(0.05)
    sys.exit(f"slow-consumers: {path} kept answering 503")

def stats():
    s, d = request("GET", "/v1/stats")
    return json.loads(d)

def wait_conns(want, secs):
    end = time.time() + secs
    while time.time() < end:
        if stats()["connections"] == want:
            return True
        time.sleep(0.1)
    return False

socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect((ws_host, int(ws_port)))
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {ws_host}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token(f'u{i}')}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: leave the welcome frame unread
        if not chunk:
            sys.exit(f"slow-consumers: client {i} refused: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        sys.exit(f"slow-consumers: client {i} refused: {head!r}")
    socks.append(s)
if not wait_conns(n, 30):
    sys.exit("slow-consumers: not every client was accepted")
time.sleep(1)
idle = status("VmRSS")
print(f"idle baseline: {n} idle connections, VmRSS {mib(idle)}")

def kernel_tcp_bytes():
    # Host-wide: every TCP socket's buffers (here mostly the server's send side, since the
    # clients' receive buffers are 4 KiB), in pages.
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    return 0

kernel_idle = kernel_tcp_bytes()
peak = [0]
kernel_peak = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], status("VmRSS"))
        kernel_peak[0] = max(kernel_peak[0], kernel_tcp_bytes())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()

def post_batch(lines):
    """Posts pushes; retries the lines refused as overloaded (bounded)."""
    for _ in range(200):
        st, d = request("POST", "/v1/push/batch", "\n".join(lines).encode())
        if st != 200:
            sys.exit(f"slow-consumers: batch answered {st}: {d[:200]!r}")
        rejected = json.loads(d)["rejected"]
        if not rejected:
            return len(lines)
        if any(not r["error"].startswith("overloaded") for r in rejected):
            sys.exit(f"slow-consumers: batch lines rejected: {rejected[:3]}")
        retry = {r["line"] for r in rejected}
        lines = [l for k, l in enumerate(lines, 1) if k in retry]
        time.sleep(0.05)
    sys.exit("slow-consumers: shard queues stayed full")

pad = "z" * (push_bytes - 24)
per_batch = max(1, (1_000_000 - 1000) // (push_bytes + 64))
max_out = 0
sent = 0
t0 = time.time()
for r in range(1, rounds + 1):
    lines = []
    for i in range(n):
        lines.append(json.dumps({"user": f"u{i}", "data": f"{r:04}-{i:06}-{pad}"}))
        if len(lines) == per_batch or i == n - 1:
            sent += post_batch(lines)
            lines = []
    s = stats()
    max_out = max(max_out, s["outbound_bytes"])
    c = s["counters"]
    print(f"round {r}: {sent} pushes, {s['connections']} open, outbound_bytes {mib(s['outbound_bytes'])}, "
          f"delivered {c['pushes_delivered']}, 4008 {c['slow_consumer_closes']} (budget {c['budget_closes']}), 4002 {c['heartbeat_closes']}, VmRSS {mib(status('VmRSS'))}")
    if s["connections"] == 0:
        break
time.sleep(0.5)
stop.set()
peak_rss = max(peak[0], status("VmRSS"))
hwm = status("VmHWM")
s = stats()
c = s["counters"]
print(f"peak: VmRSS {mib(peak_rss)} (VmHWM {mib(hwm)}), outbound_bytes max seen {mib(max_out)}, "
      f"{sent} pushes in {time.time() - t0:.1f} s")
print(f"peak kernel TCP memory (sockstat, host-wide): {mib(kernel_peak[0])}, "
      f"{mib(kernel_idle)} idle")
if os.environ.get("PAUSE"): time.sleep(float(os.environ["PAUSE"]))
for s_ in socks:
    s_.close()
if not wait_conns(0, 30):
    print("slow-consumers: connections still open 30 s after the clients closed", file=sys.stderr)
time.sleep(settle)
after = status("VmRSS")
s = stats()
c = s["counters"]
print(f"after: VmRSS {mib(after)} {settle:.0f} s after the clients are gone "
      f"(outbound_bytes {s['outbound_bytes']}, partial_bytes {s['partial_bytes']})")
print(f"SUMMARY n={n} idle={mib(idle)} peak={mib(peak_rss)} after={mib(after)} "
      f"kernel_peak={mib(kernel_peak[0])} "
      f"slow_consumer_closes={c['slow_consumer_closes']} budget_closes={c['budget_closes']}")
EOF

export SRV_PID N PUSH_BYTES ROUNDS SETTLE CLIENT_ADDR API_ADDR
timeout "$LIMIT" python3 "$WORK/clients.py" || { echo "slow-consumers: client script failed" >&2; tail -5 "$WORK/server.log" >&2; exit 1; }
if grep -q -i 'panick' "$WORK/server.log"; then
    echo "slow-consumers: the server panicked:" >&2
    grep -i -m5 -A3 'panick' "$WORK/server.log" >&2
    exit 1
fi
