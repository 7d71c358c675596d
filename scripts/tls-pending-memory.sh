#!/usr/bin/env bash
# Memory held by TLS handshakes that never finish, on the client listener (--tls-cert) and
# on the push API (--api-tls-cert): what one peer's junk costs until the handshake
# deadline, with no cryptography on its side.
#
# For each listener and each shape: starts `throng serve` on loopback ports, opens N
# connections that each send the same bytes and then stall, and prints the server's RSS
# before and 2 s after, per handshake still held (the server closes those it refuses).
# Shapes: `small`, the start of an ordinary ClientHello (105 B); `mid`, a whole ClientHello
# (OpenSSL's, so the server has answered and holds its handshake state), then the start
# of a record up to just under the 16 KiB a handshake may take; `cap`, a ClientHello that
# never ends, up to just under 16 KiB (12 KiB of records rustls buffers, then the start of
# a record); `big`, 64 KiB of such a ClientHello and 18 KB of a record (what a handshake
# could hold before the bound, refused now; on the API 64 KiB in all, past which rustls
# refuses it itself). Stops what it started, by PID.
#
# Environment: N=300 (at most api_max_connections, 1024 by default), NO_BUILD=1 (skip the
#   build check), SERVER=path (another throng binary), SHAPES="small mid cap big",
#   LISTENERS="client api".
set -euo pipefail
N=${N:-300}
SHAPES=${SHAPES:-small mid cap big}
LISTENERS=${LISTENERS:-client api}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
build_release_if_stale tls-pending-memory
command -v python3 >/dev/null || { echo "tls-pending-memory: needs python3" >&2; exit 1; }
command -v openssl >/dev/null || { echo "tls-pending-memory: needs openssl" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t throng-tls-pending.XXXXXX)
SRV_PID=
cleanup() {
    stop_server_pid tls-pending-memory "$SRV_PID" 10
    [[ -n ${KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export_credentials tls-pending-memory
make_test_cert "$WORK"
for listener in $LISTENERS; do
    for shape in $SHAPES; do
        if [[ $listener == client ]]; then
            args=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"
                --shards 1 --acceptors 1 --handshake-timeout-ms 20000)
        else
            args=(--api-tls-cert "$WORK/cert.pem" --api-tls-key "$WORK/key.pem"
                --shards 1 --api-request-timeout-ms 20000)
        fi
        # A fresh log, or the last server's `listening` line could be read first.
        rm -f "$WORK/server.log"
        start_server tls-pending-memory "$WORK" "${args[@]}" || exit 1
        if [[ $listener == client ]]; then addr=$CLIENT_ADDR; else addr=$API_ADDR; fi
        python3 - "$listener" "$shape" "${addr##*:}" "$N" "$SRV_PID" <<'PY'
import socket, ssl, struct, sys, time
listener, shape, port, n, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

def rec(payload):
    return bytes([22, 3, 1]) + struct.pack(">H", len(payload)) + payload

def hello_start(n):
    # A ClientHello that says it is 65,000 bytes long: rustls waits for the rest.
    return b"\x01" + (65000).to_bytes(3, "big") + b"\x03\x03" + b"A" * (n - 6)

def incomplete(claimed, sent):
    return bytes([22, 3, 3]) + struct.pack(">H", claimed) + b"E" * sent

if shape == "small":
    payload = bytes([22, 3, 1]) + struct.pack(">H", 304) + b"\x01" + (300).to_bytes(3, "big") \
        + b"\x03\x03" + b"A" * 94
elif shape == "mid":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    payload = hello + bytes([23, 3, 3]) + struct.pack(">H", 16384) \
        + b"E" * (16000 - len(hello) - 5)
elif shape == "cap":
    payload = rec(hello_start(8000)) + rec(b"B" * 4000) + incomplete(16384, 4000)
else:
    payload = rec(hello_start(16384)) + rec(b"B" * 16384) + rec(b"C" * 16384) \
        + rec(b"D" * 15000) + incomplete(18432, 18000)
    if listener == "api":
        # rustls reads the API's records itself and refuses a message past 64 KiB.
        payload = payload[:64172]

time.sleep(0.5)
before = rss_kib()
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(payload)
    except OSError:
        pass
    socks.append(s)
time.sleep(2)
after = rss_kib()
# Held: still open (the server's flight may have come; a refusal ends in EOF or a reset).
held = 0
for s in socks:
    s.setblocking(False)
    try:
        while s.recv(1 << 16):
            pass
    except BlockingIOError:
        held += 1
    except OSError:
        pass
per = f"{(after - before) / held:.1f} KiB per handshake held" if held else "none held"
print(f"tls-pending-memory: {listener} {shape}: {n} connections of {len(payload)} B, "
      f"{held} held after 2 s, RSS {before} -> {after} KiB, {per}")
for s in socks:
    s.close()
PY
        stop_server_pid tls-pending-memory "$SRV_PID" 10
        SRV_PID=
    done
done
