#!/usr/bin/env python3
"""Full TLS handshakes in a loop against HOST:PORT (no session resumption, nothing sent
after the handshake), for SECS seconds or COUNT handshakes, whichever ends first; prints
how many succeeded and failed. Used by push-cost.sh (API_TLS_FLOOD=) to load the push
API's TLS handshakes while pushes go through it.

Usage: tls-flood.py HOST PORT SECS [COUNT]
"""
import socket
import ssl
import sys
import time


def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    count = int(sys.argv[4]) if len(sys.argv) == 5 else 10**9
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The flood measures the server's cost, not trust: any certificate will do.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ok = failed = 0
    end = time.monotonic() + secs
    while time.monotonic() < end and ok + failed < count:
        try:
            with socket.create_connection((host, port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    ok += 1
        except OSError:
            failed += 1
    print(f"tls-flood: {ok} handshakes, {failed} failed, in {secs:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
