#!/usr/bin/env bash
# The JS client's tests: clients/js/test/ with `node --test` (the logic tests, and the
# browser tests that run throng.js in headless Chromium against a real server).
#
# Installs what is missing first: Debian's chromium (as root, with apt-get), playwright-core
# (npm in clients/js) and target/debug/throng (cargo). Exits non-zero when a test fails.
#
#   scripts/browser-tests.sh
#   CHROMIUM_PATH=/path/to/chrome THRONG_BIN=target/release/throng scripts/browser-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium}
THRONG_BIN=${THRONG_BIN:-target/debug/throng}
export CHROMIUM_PATH THRONG_BIN

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "browser-tests: $tool is missing (node 18 or later with npm)" >&2
        exit 1
    fi
done

if [ ! -x "$CHROMIUM_PATH" ]; then
    if [ "$CHROMIUM_PATH" = /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "browser-tests: installing chromium (apt-get)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "browser-tests: no browser at $CHROMIUM_PATH: apt-get install chromium, or set CHROMIUM_PATH" >&2
        exit 1
    fi
fi

if [ ! -d clients/js/node_modules/playwright-core ]; then
    echo "browser-tests: installing the JS dev dependencies (npm)" >&2
    if [ -f clients/js/package-lock.json ]; then
        (cd clients/js && npm ci --no-audit --no-fund)
    else
        (cd clients/js && npm install --no-audit --no-fund)
    fi
fi

if [ "$THRONG_BIN" = target/debug/throng ]; then
    # Up to date with the checkout (a no-op after `cargo test`).
    cargo build -q -p throng --bin throng
elif [ ! -x "$THRONG_BIN" ]; then
    echo "browser-tests: THRONG_BIN=$THRONG_BIN is missing" >&2
    exit 1
fi

# One test file at a time: the browser tests start a server and a browser of their own.
exec node --test --test-concurrency=1 clients/js/test/
