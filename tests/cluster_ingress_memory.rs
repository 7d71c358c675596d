//! The `throng:push` stream ingress (docs/protocol.md 5) reads entries through a script
//! that hands over a `push` only up to the 1 MiB body limit (a longer one as its length)
//! and stops a reply at a few MiB, so what a producer writes to the stream (Redis takes
//! values of up to 512 MB) never comes into the node whole (review s18b F2: twelve 40 MiB
//! entries took a node to 566 MiB, 256 valid 1 MiB entries to 1 GiB, in one read each).
//! A test binary of its own: the peak (`VmHWM`) is the whole process's, node included,
//! and no other test runs beside it. The entries are built inside Redis (a script), so
//! this process never holds them either.

mod common;

use std::time::Duration;

use common::redis_server::{wait_none_pending, RedisServer};
use common::*;

/// Adds, in one step (so that one read finds them all): for `i` in 1..=ARGV[1], a small
/// valid push `{"k": i}` to `ivy`, then (but after the last) a push to `ivy` whose data
/// makes it ARGV[2] bytes long; then ARGV[3] valid pushes to `zed` (offline) of ARGV[4]
/// bytes of data each.
const ADD: &str = r#"
local n, big, valid, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
for i = 1, n do
  redis.call('XADD', KEYS[1], '*', 'push', '{"user":"ivy","data":{"k":' .. i .. '}}')
  if i < n then
    local head = '{"user":"ivy","data":"'
    redis.call('XADD', KEYS[1], '*', 'push', head .. string.rep('x', big - #head - 2) .. '"}')
  end
end
local data = string.rep('y', size)
for i = 1, valid do
  redis.call('XADD', KEYS[1], '*', 'push', '{"user":"zed","data":"' .. data .. '"}')
end
return n
"#;

#[test]
fn oversized_and_many_large_stream_entries_never_come_into_the_node_whole() {
    const BIG: usize = 20 << 20;
    const BIGS: usize = 6;
    const VALID: usize = 48;
    const VALID_DATA: usize = 1_000_000;
    let redis = RedisServer::start();
    let url = redis.url();
    let a = TestServer::start(&[
        "--redis",
        &url,
        "--node-id",
        "node-a",
        "--shards",
        "1",
        "--max-outbound-total-bytes",
        "16777216",
    ]);
    let ready = wait_until(WAIT, || a.api("GET", "/readyz", None).status == 200);
    assert!(ready, "node never became ready");
    let mut c = a.connect("ivy");
    a.wait_stats("1 stream served", |s| {
        s["cluster"]["broker_streams"].as_u64() == Some(1)
    });
    let mut r = redis.conn();
    // The ingress at work once before the baseline.
    let _: String = redis::cmd("XADD")
        .arg("throng:push")
        .arg("*")
        .arg("push")
        .arg(r#"{"user":"ivy","data":{"k":0}}"#)
        .query(&mut r)
        .unwrap();
    assert_eq!(c.recv()["data"]["k"], 0);
    let before = peak_rss_kib();

    let _: i64 = redis::cmd("EVAL")
        .arg(ADD)
        .arg(1)
        .arg("throng:push")
        .arg(BIGS + 1)
        .arg(BIG)
        .arg(VALID)
        .arg(VALID_DATA)
        .query(&mut r)
        .unwrap();
    // The valid ones between the oversized ones come once, in order.
    for k in 1..=BIGS as u64 + 1 {
        match c.try_recv(Duration::from_secs(20)).unwrap() {
            Some(m) => assert_eq!(
                (m["type"].as_str(), m["data"]["k"].as_u64()),
                (Some("push"), Some(k)),
                "{m}"
            ),
            None => panic!("push {k} missing; stats {}", a.stats()),
        }
    }
    // Every push to the offline user is numbered in Redis.
    let numbered = wait_until(Duration::from_secs(30), || {
        let seq: Option<u64> = redis::cmd("HGET")
            .arg("throng:{u:zed}")
            .arg("seq")
            .query(&mut r)
            .unwrap();
        seq == Some(VALID as u64)
    });
    assert!(numbered, "zed's pushes not all numbered: {}", a.stats());
    a.wait_stats("every oversized entry dead", |s| {
        s["cluster"]["stream_dlq"] == BIGS as u64
    });
    wait_none_pending(&mut r);
    let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    eprintln!("peak grew by {grown_mib} MiB");

    // Each oversized entry is in the DLQ once, with its size in the error and its first
    // 16 KiB (measured in Redis: this process does not read it).
    let dlq: Vec<(String, String, i64)> = redis::cmd("EVAL")
        .arg(
            r#"local out = {}
            for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
              local f, got = e[2], {}
              for i = 1, #f, 2 do got[f[i]] = f[i + 1] end
              out[#out + 1] = {got['node'], got['error'], #got['push']}
            end
            return out"#,
        )
        .arg(1)
        .arg("throng:push:dlq")
        .query(&mut r)
        .unwrap();
    assert_eq!(dlq.len(), BIGS, "{dlq:?}");
    for (node, error, kept) in &dlq {
        assert_eq!(node, "node-a");
        assert_eq!(
            error,
            &format!("push is {BIG} bytes, larger than 1048576 bytes")
        );
        assert_eq!(*kept, 16 << 10);
    }
    c.expect_silence(Duration::from_millis(300));
    let s = a.stats();
    assert_eq!(
        s["cluster"]["stream_read"].as_u64(),
        Some((1 + 2 * BIGS + 1 + VALID) as u64),
        "every entry read once: {s}"
    );
    // Read whole, the oversized entries alone were 120 MiB, and 48 MB of valid ones in
    // one read was several times that in the node.
    assert!(
        grown_mib < 48,
        "the node's peak grew by {grown_mib} MiB for {BIGS} entries of {BIG} bytes and \
         {VALID} of {VALID_DATA}"
    );
}
