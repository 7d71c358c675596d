#!/usr/bin/env bash
# Bytes of history per retained push (issue 9 item 8), user streams and topic streams.
#
# Starts `throng serve` on loopback ports with a history large enough to keep everything
# (`--history-size $PUSHES`, a 10-minute TTL, a 4 GiB cap), then, with python3 as client:
#   users:  M users connect once and leave (their entries are retained offline), then
#           PUSHES direct pushes with DATA-byte data go to all of them (`"users": [...]`);
#   topics: PUSHES pushes with DATA-byte data to each of T topics (`/v1/push/batch`), no
#           subscribers (every shard keeps every topic's history).
# After each phase it prints the server's RSS growth and `throng_history_bytes` growth per
# retained push. `throng_history_bytes` counts frame bytes only (WebSocket header, JSON
# envelope, data); the RSS growth also has the bookkeeping (ring slot, FIFO record, the
# frame's shared-buffer header and allocator rounding). Stops the server by its PID.
#
# Environment:
#   M=1000 users, T=1000 topics, PUSHES=100 per user and per topic, DATA=160 bytes,
#   SHARDS=1, BIN=target/release/throng (NO_BUILD=1 skips the build check)
set -euo pipefail

M=${M:-1000}
T=${T:-1000}
PUSHES=${PUSHES:-100}
DATA=${DATA:-160}
SHARDS=${SHARDS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
if [[ -z ${BIN:-} ]]; then
    build_release_if_stale history-memory
    BIN=target/release/throng
fi
[[ -x $BIN ]] || { echo "history-memory: missing $BIN" >&2; exit 1; }
command -v python3 >/dev/null || { echo "history-memory: needs python3" >&2; exit 1; }

WORK=$(mktemp -d -t throng-history.XXXXXX)
SRV_PID=
cleanup() {
    stop_server_pid history-memory "$SRV_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials history-memory

SERVER=$BIN start_server history-memory "$WORK" --shards "$SHARDS" --history-size "$PUSHES" \
    --history-ttl-ms 600000 --history-memory-bytes 4294967296 --drain-ms 100 || exit 1
echo "history-memory: $BIN pid $SRV_PID, $SHARDS shard(s); M=$M users, T=$T topics, $PUSHES pushes each, $DATA-byte data"

timeout 600 python3 - "$SRV_PID" "$CLIENT_ADDR" "$API_ADDR" "$M" "$T" "$PUSHES" "$DATA" <<'PY'
import base64, hashlib, hmac, json, os, socket, sys, time

pid, client, api = sys.argv[1], sys.argv[2], sys.argv[3]
m, t, pushes, data_len = (int(x) for x in sys.argv[4:8])
secret, key = os.environ["THRONG_JWT_SECRET"], os.environ["THRONG_API_KEY"]

def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def token(user):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": user, "exp": int(time.time()) + 3600}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"

def recv_until(s, pred, limit=1 << 20):
    buf = b""
    while not pred(buf):
        chunk = s.recv(65536)
        if not chunk or len(buf) > limit:
            raise SystemExit(f"history-memory: connection ended early: {buf[:200]!r}")
        buf += chunk
    return buf

def api_request(method, path, body=b"", ctype="application/json"):
    s = socket.create_connection(addr(api))
    head = (f"{method} {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    s.sendall(head.encode() + body)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    status = int(buf.split(b" ", 2)[1])
    if status >= 300:
        raise SystemExit(f"history-memory: {method} {path}: {buf[:300]!r}")
    return buf.split(b"\r\n\r\n", 1)[1].decode()

def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("history-memory: no VmRSS")

def history_bytes():
    text = api_request("GET", "/metrics")
    return sum(int(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("throng_history_bytes{"))

def stats():
    return json.loads(api_request("GET", "/v1/stats"))

def wait(cond, what):
    for _ in range(200):
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"history-memory: timed out waiting for {what}")

def report(phase, n, before, after):
    (rss0, hb0), (rss1, hb1) = before, after
    per_rss = (rss1 - rss0) / n
    per_frame = (hb1 - hb0) / n
    print(f"history-memory: {phase}: {n} retained pushes; RSS +{rss1 - rss0} B, "
          f"throng_history_bytes +{hb1 - hb0} B")
    print(f"history-memory: {phase}: per push: {per_rss:.1f} B of RSS = {per_frame:.1f} B of frame "
          f"({data_len} B data + {per_frame - data_len:.1f} B header and envelope) "
          f"+ {per_rss - per_frame:.1f} B of bookkeeping")

data = json.dumps("x" * (data_len - 2))
users = [f"hm-user-{i}" for i in range(m)]

# Users: connect once (the upgrade and `welcome`), then leave; the entry is retained.
for u in users:
    s = socket.create_connection(addr(client))
    req = (f"GET /ws HTTP/1.1\r\nHost: {client}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           f"Authorization: Bearer {token(u)}\r\n\r\n")
    s.sendall(req.encode())
    recv_until(s, lambda b: b"\r\n\r\n" in b and b"welcome" in b)
    s.close()
wait(lambda: stats()["connections"] == 0, "the sessions to end")
time.sleep(0.5)
before = (rss(), history_bytes())
body = json.dumps({"users": users, "data": json.loads(data)}).encode()
for _ in range(pushes):
    api_request("POST", "/v1/push?wait=1", body)
wait(lambda: history_bytes() - before[1] >= m * pushes * data_len, "user history")
time.sleep(0.5)
after = (rss(), history_bytes())
report("users", m * pushes, before, after)

# Topics: no subscribers; pushes in batches of up to 1000 lines.
if t > 0:
    before = after
    lines = [json.dumps({"topic": f"hm.topic.{i}", "data": json.loads(data)}) for i in range(t)]
    for _ in range(pushes):
        for k in range(0, t, 1000):
            api_request("POST", "/v1/push/batch", "\n".join(lines[k:k + 1000]).encode(),
                        "application/x-ndjson")
    shards = len(stats()["shards"])
    wait(lambda: history_bytes() - before[1] >= shards * t * pushes * data_len, "topic history")
    time.sleep(0.5)
    after = (rss(), history_bytes())
    hb = (after[1] - before[1]) // shards
    n = t * pushes
    per_rss = (after[0] - before[0]) / n
    print(f"history-memory: topics: {n} retained pushes on each of {shards} shard(s); "
          f"RSS +{after[0] - before[0]} B, throng_history_bytes +{after[1] - before[1]} B "
          f"(each shard counts the shared frame)")
    print(f"history-memory: topics: per push: {per_rss:.1f} B of RSS = {hb / n:.1f} B of frame "
          f"(once) + {(per_rss - hb / n) / shards:.1f} B of bookkeeping per shard")
PY
