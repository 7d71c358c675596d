//! `floor`: this host's kernel floor for a server's per-connection work. A minimal epoll
//! server (no parsing, no token check, no routing, no JSON) makes only the system calls a
//! heartbeat, a broadcast delivery, a handshake or a unicast push through an HTTP API
//! needs, against a child process of clients; its CPU per operation is
//! what any epoll server pays on this host, so Throng's figures can be read against it.

mod clients;
mod cpu;
mod io;
mod server;

use crate::cli::{FloorArgs, FloorWorkload};
use serde::Serialize;
use server::{Server, Tally};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Connections a heartbeat run projects to, and the interval it projects at (Throng's
/// default `ping_interval_ms`).
const PROJECT_CONNECTIONS: f64 = 1_000_000.0;
const PROJECT_INTERVAL_S: f64 = 25.0;
/// Share of the window's pings that must be answered for the figure to hold.
const ANSWERED_MIN: f64 = 0.99;
/// Share of the window's broadcasts that must have gone out.
const ROUNDS_MIN: f64 = 0.90;

/// The JSON report of a floor run.
#[derive(Debug, Serialize)]
pub struct FloorReport {
    pub workload: &'static str,
    pub connections: u64,
    pub interval_ms: Option<u64>,
    pub rate: Option<f64>,
    pub frame_bytes: Option<usize>,
    pub in_flight: Option<u64>,
    pub window_secs: f64,
    /// Round trips answered (heartbeat), whole frames written (broadcast), handshakes
    /// answered or pushes answered (unicast).
    pub operations: u64,
    /// Pings written or frames due in the window.
    pub asked: u64,
    pub operations_per_sec: f64,
    pub broadcasts: Option<u64>,
    pub broadcasts_due: Option<u64>,
    pub short_writes: u64,
    pub user_us_per_op: f64,
    pub system_us_per_op: f64,
    pub us_per_op: f64,
    /// The clients' process's CPU per operation (what a load generator pays).
    pub clients_us_per_op: Option<f64>,
    /// Heartbeat: cores for 1,000,000 connections pinged every 25 s at this cost.
    pub projected_cores_1m_25s: Option<f64>,
    pub result: &'static str,
    pub failures: Vec<String>,
}

/// Runs `floor` (or, with the hidden `--peer`, its clients' process); returns the exit
/// status.
pub fn run(a: &FloorArgs) -> Result<i32, String> {
    crate::cli::validate_floor(a)?;
    if let Some(peer) = a.peer {
        return clients::run(a, peer);
    }
    let limit = crate::util::raise_nofile_limit();
    if limit < a.connections + 64 {
        return Err(format!(
            "--connections {} needs {} open files in this process (and as many in its clients' \
             process); the limit here is {limit}",
            a.connections,
            a.connections + 64
        ));
    }
    // TCP_DEFER_ACCEPT as on Throng's client listener only where clients send a request
    // first: the other workloads' clients send nothing, and each would wait out its 10 s.
    let (listener, addr) = listen(a.workload == FloorWorkload::Handshake)?;
    let url = crate::util::parse_ws_url(&format!("ws://{addr}/"))?;
    crate::sources::check(
        a.source_ips.as_deref(),
        "the floor's listener",
        &[url],
        a.connections,
    )?;
    // unicast: the API connections have a listener of their own, as Throng's push API.
    let api = match a.workload {
        FloorWorkload::Unicast => Some(listen(false)?),
        _ => None,
    };
    let mut child = spawn_clients(a, addr, api.as_ref().map(|(_, addr)| *addr))?;
    let out = measure(a, listener, api.map(|(l, _)| l), &mut child);
    // The server side is gone (its connections closed): the clients end by themselves.
    let status = reap(&mut child, Duration::from_secs(10));
    let tally = out?;
    if let Some(Some(code)) = status.map(|s| s.code()).filter(|c| *c != Some(0)) {
        return Err(format!("the clients' process exited with {code}"));
    }
    let rep = report(a, &tally);
    println!("{}", summary(&rep).trim_end());
    if let Some(path) = &a.json {
        let j = serde_json::to_string_pretty(&rep).map_err(|e| e.to_string())?;
        std::fs::write(path, j + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("throng-load: wrote {}", path.display());
    }
    Ok(if rep.failures.is_empty() { 0 } else { 1 })
}

/// A listener on an ephemeral loopback port with the largest backlog the kernel allows
/// (`defer`: with `TCP_DEFER_ACCEPT`, as Throng's client listener).
fn listen(defer: bool) -> Result<(mio::net::TcpListener, std::net::SocketAddr), String> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("socket: {e}"))?;
    let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    sock.bind(&SockAddr::from(any))
        .map_err(|e| format!("bind 127.0.0.1: {e}"))?;
    // As Throng's client listener: accepted sockets inherit TCP_NODELAY, and (`defer`) are
    // handed over once their first bytes came (TCP_DEFER_ACCEPT), read at once.
    sock.set_tcp_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    if defer {
        defer_accept(&sock)?;
    }
    sock.listen(65535).map_err(|e| format!("listen: {e}"))?;
    sock.set_nonblocking(true)
        .map_err(|e| format!("non-blocking: {e}"))?;
    let addr = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("the listener has no address")?;
    Ok((mio::net::TcpListener::from_std(sock.into()), addr))
}

/// `TCP_DEFER_ACCEPT` of 10 s on `sock`, as Throng sets on its client listener.
fn defer_accept(sock: &socket2::Socket) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = 10;
    // SAFETY: a live socket, and a `c_int` with its size as the length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "TCP_DEFER_ACCEPT: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Starts this executable as the clients' process (unicast: with the API's address).
fn spawn_clients(
    a: &FloorArgs,
    addr: std::net::SocketAddr,
    api: Option<std::net::SocketAddr>,
) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let workload = workload_name(a.workload);
    let mut cmd = Command::new(exe);
    cmd.args(["floor", "--peer", &addr.to_string(), "--workload", workload])
        .args(["--connections", &a.connections.to_string()])
        .args(["--interval-ms", &a.interval_ms.to_string()])
        .args(["--window-secs", &a.window_secs.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(s) = &a.source_ips {
        cmd.args(["--source-ips", s]);
    }
    if let Some(api) = api {
        cmd.args(["--api-peer", &api.to_string()])
            .args(["--in-flight", &a.in_flight.to_string()]);
    }
    cmd.spawn()
        .map_err(|e| format!("starting the clients' process: {e}"))
}

/// The workload's name on the command line and in the report.
fn workload_name(w: FloorWorkload) -> &'static str {
    match w {
        FloorWorkload::Heartbeat => "heartbeat",
        FloorWorkload::Broadcast => "broadcast",
        FloorWorkload::Handshake => "handshake",
        FloorWorkload::Unicast => "unicast",
    }
}

/// Accepts the clients' connections and runs the workload.
fn measure(
    a: &FloorArgs,
    listener: mio::net::TcpListener,
    api: Option<mio::net::TcpListener>,
    child: &mut Child,
) -> Result<Tally, String> {
    let n = a.connections as usize;
    let deadline = Instant::now() + Duration::from_secs(30 + a.connections / 1000);
    let window = Duration::from_secs_f64(a.window_secs);
    let mut up = |listener| {
        let srv = Server::accept(listener, n, deadline, child)?;
        eprintln!("throng-load floor: {n} connections up; measuring");
        Ok::<_, String>(srv)
    };
    match a.workload {
        // The connections are held until the answers are counted, then closed.
        FloorWorkload::Handshake => {
            server::handshakes(listener, n, deadline, child).map(|(t, _held)| t)
        }
        FloorWorkload::Heartbeat => {
            let mut srv = up(listener)?;
            let interval = Duration::from_millis(a.interval_ms);
            srv.heartbeat(
                interval,
                interval + Duration::from_secs(1),
                window,
                child.id(),
            )
        }
        FloorWorkload::Broadcast => {
            let mut srv = up(listener)?;
            let frame = broadcast_frame(a.frame_bytes);
            srv.broadcast(a.rate, &frame, Duration::from_secs(1), window, child.id())
        }
        FloorWorkload::Unicast => {
            let api = api.ok_or("no API listener")?;
            let mut srv = up(listener)?;
            let frame = broadcast_frame(a.frame_bytes);
            let k = a.in_flight as usize;
            let times = (Duration::from_secs(1), window);
            srv.unicast(api, k, &frame, times, deadline, child)
        }
    }
}

/// A whole WebSocket text frame of `len` bytes in all (at least 2), header included, as
/// a server writes one; the clients only count bytes.
fn broadcast_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x81];
    if len - 2 <= 125 {
        f.push((len - 2) as u8);
    } else if len - 4 <= 0xffff {
        f.push(126);
        f.extend_from_slice(&((len - 4) as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&((len - 10) as u64).to_be_bytes());
    }
    f.resize(len, b'x');
    f
}

/// Waits up to `limit` for the child to end, then kills it.
fn reap(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// The report of a finished window, with its verdict.
fn report(a: &FloorArgs, t: &Tally) -> FloorReport {
    let ops = t.ops.max(1) as f64;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / ops;
    let us = per(t.user + t.system);
    let heartbeat = a.workload == FloorWorkload::Heartbeat;
    let broadcast = a.workload == FloorWorkload::Broadcast;
    let unicast = a.workload == FloorWorkload::Unicast;
    let mut failures = Vec::new();
    if t.ops == 0 {
        failures.push("no operation in the window".to_string());
    }
    if heartbeat && (t.ops as f64) < t.asked as f64 * ANSWERED_MIN {
        failures.push(format!(
            "{} of {} pings answered in the window (under {}%): the host could not keep up",
            t.ops,
            t.asked,
            ANSWERED_MIN * 100.0
        ));
    }
    if broadcast && (t.rounds as f64) < t.rounds_due as f64 * ROUNDS_MIN {
        failures.push(format!(
            "{} of {} broadcasts went out in the window (under {}%): the host could not keep up",
            t.rounds,
            t.rounds_due,
            ROUNDS_MIN * 100.0
        ));
    }
    if (broadcast || unicast) && t.short_writes > 0 {
        failures.push(format!(
            "{} writes did not take their whole frame (a client fell behind)",
            t.short_writes
        ));
    }
    FloorReport {
        workload: workload_name(a.workload),
        connections: a.connections,
        interval_ms: heartbeat.then_some(a.interval_ms),
        rate: broadcast.then_some(a.rate),
        frame_bytes: (broadcast || unicast).then_some(a.frame_bytes),
        in_flight: unicast.then_some(a.in_flight),
        window_secs: t.elapsed.as_secs_f64(),
        operations: t.ops,
        asked: t.asked,
        operations_per_sec: t.ops as f64 / t.elapsed.as_secs_f64().max(1e-9),
        broadcasts: broadcast.then_some(t.rounds),
        broadcasts_due: broadcast.then_some(t.rounds_due),
        short_writes: t.short_writes,
        user_us_per_op: per(t.user),
        system_us_per_op: per(t.system),
        us_per_op: us,
        clients_us_per_op: t.clients.map(per),
        projected_cores_1m_25s: heartbeat
            .then(|| PROJECT_CONNECTIONS / PROJECT_INTERVAL_S * us / 1e6),
        result: if failures.is_empty() { "OK" } else { "FAILED" },
        failures,
    }
}

/// The human summary.
fn summary(r: &FloorReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let what = match (r.interval_ms, r.rate, r.in_flight) {
        (Some(ms), _, _) => format!("a 2-byte ping every {ms} ms, a 6-byte pong back"),
        (_, Some(rate), _) => format!(
            "{rate} broadcasts/s of {} bytes",
            r.frame_bytes.unwrap_or_default()
        ),
        (_, _, Some(k)) => format!(
            "{k} API connections with a push request each in flight, a 202 back and a \
             {}-byte frame to one connection per push",
            r.frame_bytes.unwrap_or_default()
        ),
        _ => "all at once (512 in flight), an upgrade request each, a 101 and a frame back"
            .to_string(),
    };
    let (op, ops) = match r.workload {
        "heartbeat" => ("round trip", "round trips"),
        "broadcast" => ("delivery", "deliveries"),
        "unicast" => ("push", "pushes"),
        _ => ("handshake", "handshakes"),
    };
    let _ = writeln!(
        s,
        "floor: {}, {} connections, {what}, {:.1} s {}",
        r.workload,
        r.connections,
        r.window_secs,
        if r.workload == "handshake" {
            "from the first accept to the last answer"
        } else {
            "window"
        }
    );
    if let (Some(b), Some(due)) = (r.broadcasts, r.broadcasts_due) {
        let _ = writeln!(
            s,
            "floor: {b} of {due} broadcasts made, {} writes short",
            r.short_writes
        );
    }
    let _ = writeln!(
        s,
        "floor: {} {ops} ({:.0}/s) of {} asked; server side {:.2} us per {op} (user {:.2}, system {:.2})",
        r.operations, r.operations_per_sec, r.asked, r.us_per_op, r.user_us_per_op, r.system_us_per_op
    );
    if let Some(c) = r.clients_us_per_op {
        let _ = writeln!(s, "floor: clients' process {c:.2} us per {op}");
    }
    if let Some(p) = r.projected_cores_1m_25s {
        let _ = writeln!(
            s,
            "floor: projected for 1,000,000 idle connections at a 25 s interval: {p:.3} cores"
        );
    }
    for f in &r.failures {
        let _ = writeln!(s, "floor: FAILED: {f}");
    }
    let _ = writeln!(s, "result: {}", r.result);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_frame_has_a_text_header_and_its_length() {
        assert_eq!(broadcast_frame(2), vec![0x81, 0]);
        assert_eq!(&broadcast_frame(127)[..2], &[0x81, 125]);
        let f = broadcast_frame(180);
        assert_eq!((f.len(), &f[..4]), (180, &[0x81, 126, 0, 176][..]));
        let f = broadcast_frame(70_000);
        assert_eq!((f.len(), f[1]), (70_000, 127));
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 69_990);
    }
}
