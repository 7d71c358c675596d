//! One `users` push fans out into a frame per user (each numbered for its user). The shard
//! writes them out as it builds them, so the process's peak memory stays near
//! `max_outbound_total_bytes` rather than users x data (review s17a: one request for 1,000
//! users of 0.9 MB each took the server to 872 MiB). A test binary of its own: the peak
//! (`VmHWM`) is the whole process's, and no other test runs beside it.

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_push_to_many_users_is_written_as_it_is_built_not_held_whole() {
    const USERS: usize = 300;
    const DATA: usize = 600_000;
    let srv = TestServer::start(&[
        "--shards",
        "1",
        "--max-outbound-total-bytes",
        "8388608",
        "--max-outbound-bytes",
        "2097152",
        "--history-memory-bytes",
        "1048576",
        // The clients read only after the push: the kernel must take each frame whole
        // (up to tcp_wmem's max), as without TCP_NOTSENT_LOWAT, whatever the host's
        // sysctl. With the default 128 KiB most of 172 MiB would rightly wait in Throng's
        // queues, past this budget.
        "--tcp-notsent-lowat",
        "2147483647",
    ]);
    let users: Vec<String> = (0..USERS).map(|i| format!("fan{i}")).collect();
    let mut clients: Vec<Client> = users.iter().map(|u| srv.connect(u)).collect();
    let data = "x".repeat(DATA);
    let body = json!({"users": users, "data": data});
    let before = peak_rss_kib();
    let answer = srv.push_wait(body);
    let grown_kib = peak_rss_kib().saturating_sub(before);
    assert_eq!(answer["delivered"], USERS, "every session got it: {answer}");
    // Held whole, the frames alone were USERS x DATA = 172 MiB; written as they are built,
    // the shard holds about 4 MiB of them (plus the budget's 8 MiB, plus the request).
    assert!(
        grown_kib < 48 * 1024,
        "peak memory grew by {grown_kib} KiB for one push (frames held: {} KiB)",
        USERS * DATA / 1024
    );
    // And each user has its own numbered push, whole.
    for i in [0, USERS - 1] {
        let m = clients[i].recv();
        assert_eq!(m["seq"], 1, "{}", m["type"]);
        assert_eq!(m["data"].as_str().map(str::len), Some(DATA));
    }
}
