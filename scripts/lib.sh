# Shared by the measurement scripts: builds the release binaries only when a source is
# newer than them. (Fat LTO on a small machine takes minutes, and `cargo bench` builds the
# same dependencies with other features, so even a no-change `cargo build` after a bench
# run relinks everything.)

# Builds target/release/throng and throng-load unless both exist and nothing under src/,
# loadtest/src/ or a Cargo file is newer. NO_BUILD=1 skips the build; FORCE_BUILD=1 forces
# it. $1 names the calling script in messages.
build_release_if_stale() {
    local who=$1 stale=
    if [[ -n ${NO_BUILD:-} ]]; then return 0; fi
    for bin in target/release/throng target/release/throng-load; do
        if [[ ! -x $bin ]]; then stale="$bin is missing"; break; fi
        if [[ -n $(find src loadtest/src Cargo.toml Cargo.lock loadtest/Cargo.toml \
            -newer "$bin" -print -quit 2>/dev/null) ]]; then
            stale="sources are newer than $bin"
            break
        fi
    done
    if [[ -z $stale && -z ${FORCE_BUILD:-} ]]; then
        echo "$who: release binaries are up to date (FORCE_BUILD=1 rebuilds)"
        return 0
    fi
    echo "$who: cargo build --release -p throng -p throng-load (${stale:-forced})"
    timeout 1800 cargo build --release -p throng -p throng-load
}

# Stops the server this script started, by its PID: SIGTERM (the server drains), then
# SIGKILL after $3 seconds (default 10). $1 names the calling script in messages.
stop_server_pid() {
    local who=$1 pid=$2 secs=${3:-10}
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq $((secs * 10))); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$who: server $pid still running after $secs s; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

# Waits (at most 20 s) for the server's JSON `listening` log line in $3 and sets
# CLIENT_ADDR and API_ADDR from it. Returns 1, with the log on stderr, if the server (PID
# $2) exits first or never says where it listens. $1 names the calling script.
wait_listening() {
    local who=$1 pid=$2 log=$3 line
    CLIENT_ADDR=
    API_ADDR=
    for _ in $(seq 200); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$who: server exited early:" >&2
            cat "$log" >&2
            return 1
        fi
        line=$(grep -m1 '"listening"' "$log" 2>/dev/null || true)
        if [[ -n $line ]]; then
            CLIENT_ADDR=$(sed -n 's/.*"client_addr":"\([^"]*\)".*/\1/p' <<<"$line")
            API_ADDR=$(sed -n 's/.*"api_addr":"\([^"]*\)".*/\1/p' <<<"$line")
            [[ -n $CLIENT_ADDR && -n $API_ADDR ]] && return 0
        fi
        sleep 0.1
    done
    echo "$who: server did not report listening within 20 s:" >&2
    cat "$log" >&2
    return 1
}

# Starts ${SERVER:-target/release/throng} on free loopback ports with JSON logs and the
# flags given after $2, its output in $2/server.out and $2/server.log; sets SRV_PID (for
# the caller's cleanup to stop with stop_server_pid), CLIENT_ADDR and API_ADDR. $1 names
# the calling script. Returns 1, with the log on stderr, if the server does not come up.
# SERVER_CPUS=list (taskset's, e.g. 0-7) runs the server on those cores only: on a host
# with cores to spare, run the script itself under `taskset -c` on the others, and the
# load generator stays off the server's cores.
start_server() {
    local who=$1 work=$2 pin=()
    shift 2
    if [[ -n ${SERVER_CPUS:-} ]]; then pin=(taskset -c "$SERVER_CPUS"); fi
    ${pin[@]+"${pin[@]}"} "${SERVER:-target/release/throng}" serve --listen 127.0.0.1:0 \
        --api-listen 127.0.0.1:0 --log-format json "$@" \
        >"$work/server.out" 2>"$work/server.log" &
    SRV_PID=$!
    wait_listening "$who" "$SRV_PID" "$work/server.log"
}

# A field of the server's `/v1/stats` at $API_ADDR (a counter, or a top-level gauge); over
# HTTPS after api_tls_if_asked with API_TLS=1.
api_stat() {
    curl -s ${CURL_TLS[@]+"${CURL_TLS[@]}"} -H "Authorization: Bearer $THRONG_API_KEY" \
        "${API_SCHEME:-http}://$API_ADDR/v1/stats" |
        python3 -c "import json,sys; d=json.load(sys.stdin); print(d['counters'].get(sys.argv[1], d.get(sys.argv[1])))" "$1"
}

# Waits (at most 60 s) until the server holds $2 connections; fails, with the load
# generator's log ($4), if the load generator (pid $3) ends first.
wait_connections() {
    local who=$1 want=$2 load_pid=$3 log=$4
    for _ in $(seq 600); do
        [[ $(api_stat connections) -ge $want ]] && return 0
        if ! kill -0 "$load_pid" 2>/dev/null; then
            echo "$who: throng-load ended early" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$who: $want connections not open within 60 s" >&2
    return 1
}

# Exports a fresh THRONG_JWT_SECRET (over 32 bytes) and THRONG_API_KEY for the servers
# a script starts, named after the script ($1).
export_credentials() {
    THRONG_JWT_SECRET="$1-$$-$RANDOM$RANDOM-$RANDOM$RANDOM-$RANDOM$RANDOM-$RANDOM"
    THRONG_API_KEY="$1-key-$$-$RANDOM"
    export THRONG_JWT_SECRET THRONG_API_KEY
}

# Prints a TCP port free right now on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Writes a self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost (a leaf, not a
# CA, as rustls clients require) to DIR/cert.pem and its key to DIR/key.pem.
make_test_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
}

# With API_TLS=1 set: HTTPS on the push API with the test certificate in DIR ($1) (made
# unless there; RSA-2048 with API_TLS_RSA=1), its flags added to the SERVER_ARGS array;
# API_SCHEME=https, CURL_TLS for api_stat, and LOAD_API_TLS=(--ca DIR/cert.pem) for
# throng-load (empty when TLS=1 gave it --ca already). Otherwise API_SCHEME=http and both
# arrays empty.
api_tls_if_asked() {
    API_SCHEME=http
    CURL_TLS=()
    LOAD_API_TLS=()
    if [[ -n ${API_TLS:-} ]]; then
        if [[ -n ${API_TLS_RSA:-} ]]; then
            openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
                -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
                -addext basicConstraints=critical,CA:FALSE \
                -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
        fi
        [[ -f $1/cert.pem ]] || make_test_cert "$1"
        SERVER_ARGS+=(--api-tls-cert "$1/cert.pem" --api-tls-key "$1/key.pem")
        API_SCHEME=https
        CURL_TLS=(--cacert "$1/cert.pem")
        [[ -n ${TLS:-} ]] || LOAD_API_TLS=(--ca "$1/cert.pem")
    fi
}

# With TLS=1 set: a test certificate in DIR ($1), its flags added to the SERVER_ARGS array,
# SCHEME=wss and TLS_ARGS=(--ca DIR/cert.pem) for throng-load; otherwise SCHEME=ws and no
# TLS_ARGS.
tls_if_asked() {
    SCHEME=ws
    TLS_ARGS=()
    if [[ -n ${TLS:-} ]]; then
        make_test_cert "$1"
        SERVER_ARGS+=(--tls-cert "$1/cert.pem" --tls-key "$1/key.pem")
        SCHEME=wss
        TLS_ARGS=(--ca "$1/cert.pem")
    fi
}

# CPU time (utime + stime, in clock ticks: getconf CLK_TCK) the server this script started
# ($SRV_PID) has used so far, from /proc.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SRV_PID/stat"; }

# CPU time (utime + stime, in clock ticks) of process $1 and all of its live descendants:
# the load generator with its worker processes.
tree_cpu_ticks() {
    local pids=("$1") all=() list
    while ((${#pids[@]})); do
        all+=("${pids[@]}")
        list=$(IFS=,; echo "${pids[*]}")
        mapfile -t pids < <(pgrep -P "$list" 2>/dev/null || true)
    done
    local p
    for p in "${all[@]}"; do
        awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true
    done | awk '{s += $1} END {print s + 0}'
}

# With PERF=1 (and perf installed): samples the server (PID $1) for $2 seconds in the
# background into $3 and sets PERF_PID; otherwise does nothing. Wait with `perf_share`.
# Sampling adds to the server's CPU time (most visibly under light loads such as
# heartbeats): take the share from a PERF=1 run and absolute figures from plain ones.
perf_start() {
    PERF_PID=
    [[ -n ${PERF:-} ]] || return 0
    if ! command -v perf >/dev/null 2>&1; then
        echo "PERF=1: perf is not installed; skipping the profile" >&2
        return 0
    fi
    perf record -F 250 -g -p "$1" -o "$3" -- sleep "$2" >/dev/null 2>&1 &
    PERF_PID=$!
}

# After perf_start (not in a subshell: it waits for perf): sets RX_SHARE to the
# percentage of the server's samples in $1 spent in the network receive path run inside
# its own system calls (the softirq `net_rx_action`); empty without a profile. With
# PERF_KEEP=path the profile is also copied there for `perf report -i path`. On
# loopback that is mostly the clients' TCP input, which on a real network runs on the
# client machines.
perf_share() {
    RX_SHARE=
    [[ -n ${PERF_PID:-} ]] || return 0
    wait "$PERF_PID" 2>/dev/null || true
    [[ -z ${PERF_KEEP:-} ]] || cp "$1" "$PERF_KEEP"
    RX_SHARE=$(perf report -i "$1" --children --sort sym --stdio -g none 2>/dev/null |
        awk '$NF == "net_rx_action" && !done { sub("%", "", $1); print $1; done = 1 }') || true
}

# FLOOR=1: runs `throng-load floor` (a minimal epoll server and its clients, no Throng)
# with the flags in "$@" before the server starts, prints its summary prefixed with $1,
# and sets FLOOR_US to its CPU per operation (empty without FLOOR=1 or when it could not
# run). A floor that could not keep up (exit 1) still gives its figure, marked so. Uses
# $LOAD and $WORK.
FLOOR_US=
run_floor() {
    local who=$1 rc=0 out
    shift
    [[ -n ${FLOOR:-} ]] || return 0
    out=$("$LOAD" floor "$@" --json "$WORK/floor.json" 2>&1) || rc=$?
    grep -E '^(floor|result):|^throng-load: ' <<<"$out" | grep -v 'wrote\|measuring' | sed "s/^/$who: /"
    if ((rc == 2)) || [[ ! -s $WORK/floor.json ]]; then
        echo "$who: throng-load floor could not run (exit $rc); going on without it" >&2
        return 0
    fi
    ((rc == 0)) || echo "$who: the floor did not keep up (exit $rc): its figure is of less work than asked"
    FLOOR_US=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["us_per_op"])' \
        "$WORK/floor.json")
}

# Prints how $2 (µs per operation of the server) compares with FLOOR_US, prefixed $1.
say_floor_ratio() {
    [[ -n $FLOOR_US && -n ${2:-} ]] || return 0
    python3 -c 'import sys; who, us, fl = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]);
print(f"{who}: Throng {us:.2f} us against this host'"'"'s floor {fl:.2f} us (throng-load floor): {us / fl:.2f}x")' \
        "$1" "$2" "$FLOOR_US"
}
