//! Accept failures on the push API listener: out of file descriptors, the API counts
//! the failure, pauses instead of spinning, and accepts the waiting client once a
//! descriptor frees.
//!
//! This file is its own test process because it lowers the process-wide RLIMIT_NOFILE.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use common::*;
use throng::config::Config;
use throng::server::Server;

#[test]
fn api_accept_out_of_descriptors_is_counted_paused_and_recovers() {
    let args = base_args(&["--shards", "1"]);
    let server = Server::start(Config::from_args(args).expect("config")).expect("start");
    let api = server.api_addr();
    let metrics = std::sync::Arc::clone(server.metrics());
    assert_eq!(
        HttpConn::connect(api)
            .request("GET", "/healthz", Some(API_KEY), None)
            .status,
        200
    );

    // Take every descriptor but one, then let the client take that one: the server has
    // none left for accept.
    let (open, max_fd) = open_fds();
    set_soft_nofile((open + 16).max(max_fd + 1));
    let mut placeholders = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        placeholders.push(f);
    }
    assert!(!placeholders.is_empty(), "no descriptor was free");
    placeholders.pop();
    let started = Instant::now();
    let mut client = std::net::TcpStream::connect(api).expect("client socket");
    client
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n\r\n").as_bytes(),
        )
        .expect("write");

    assert!(
        wait_until(WAIT, || metrics.accept_errors_api.load(Relaxed) >= 3),
        "accept failures on the API listener are counted and retried: {}",
        metrics.accept_errors_api.load(Relaxed)
    );
    // Each failure is followed by a 100 ms pause; a spinning loop would count thousands.
    let errors = metrics.accept_errors_api.load(Relaxed);
    let pauses = started.elapsed().as_millis() as u64 / 100;
    assert!(
        errors <= pauses + 2,
        "{errors} accept failures in {pauses} pauses: the API spins on EMFILE"
    );

    // A descriptor frees: the waiting client is accepted and served.
    drop(placeholders);
    set_soft_nofile(open + 1000);
    client.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut conn = HttpConn::connect(api);
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    conn.stream = client;
    assert_eq!(conn.read().status, 200, "the waiting client is served");

    server.shutdown();
    server.wait();
}
