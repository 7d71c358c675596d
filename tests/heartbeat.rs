//! docs/protocol.md 3.3: heartbeat pings and the 4002 idle close, end to end on real time.
//! The exact timing (to the tick) is unit-tested on a manual clock in src/shard/tests.rs;
//! these keep short windows and only check the behaviour holds on a running server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const PING_MS: u64 = 100;
const IDLE_MS: u64 = 300;
const FLAGS: [&str; 4] = ["--ping-interval-ms", "100", "--idle-timeout-ms", "300"];
/// How long the clients that keep the connection alive are watched: well past the idle
/// timeout.
const ALIVE_WINDOW: Duration = Duration::from_millis(IDLE_MS * 5 / 2);
/// How often the talking client talks: well within the idle timeout.
const TALK_EVERY: Duration = Duration::from_millis(PING_MS / 2);

#[test]
fn silent_client_gets_ping_then_4002() {
    let srv = TestServer::start(&FLAGS);
    let mut ws = RawWs::connect(srv.ws, &token("quiet"));
    assert_eq!(ws.welcome["ping_interval_ms"], PING_MS);
    assert_eq!(ws.welcome["idle_timeout_ms"], IDLE_MS);
    let start = Instant::now();
    let mut pings = 0;
    let closed = loop {
        let f = ws.read_frame().expect("frame before the close");
        match f.opcode {
            OP_PING => {
                pings += 1;
                if pings == 1 {
                    let t = start.elapsed();
                    assert!(
                        t >= Duration::from_millis(PING_MS / 2),
                        "ping too early: {t:?}"
                    );
                    assert!(t < Duration::from_millis(1500), "ping too late: {t:?}");
                }
            }
            OP_CLOSE => break f,
            _ => panic!("unexpected frame {f:?}"),
        }
    };
    let t = start.elapsed();
    assert!(pings >= 1, "the server pings before giving up");
    assert_eq!(closed.close_code(), Some(4002), "{closed:?}");
    assert!(
        t >= Duration::from_millis(IDLE_MS * 3 / 4),
        "closed too early: {t:?}"
    );
    assert!(t < Duration::from_millis(3000), "closed too late: {t:?}");
    ws.expect_eof();
    let s = srv.wait_stats("heartbeat close counted", |s| {
        s["counters"]["heartbeat_closes"].as_u64() >= Some(1)
    });
    assert_eq!(s["connections"], 0, "{s}");
}

#[test]
fn tungstenite_client_answering_pings_stays_open() {
    let srv = TestServer::start(&FLAGS);
    let mut c = srv.connect("chatty");
    // Reading makes tungstenite answer the server's pings; stay well past idle_timeout.
    let start = Instant::now();
    while start.elapsed() < ALIVE_WINDOW {
        match c.try_recv(Duration::from_millis(50)) {
            Ok(None) => {}
            Ok(Some(m)) => panic!("unexpected message {m}"),
            Err(closed) => panic!("closed after {:?}: {closed:?}", start.elapsed()),
        }
        // tungstenite writes the pong lazily; flush it.
        let _ = c.ws.flush();
    }
    c.barrier("alive");
    assert_eq!(srv.counter("heartbeat_closes"), 0);
}

#[test]
fn any_inbound_frame_counts_as_traffic() {
    let srv = TestServer::start(&FLAGS);
    let mut ws = RawWs::connect(srv.ws, &token("talker"));
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < ALIVE_WINDOW {
        // JSON pings only, never a Pong frame.
        ws.send_json(json!({"type": "ping", "ref": i}));
        loop {
            let f = ws.read_frame().expect("still open");
            assert_ne!(
                f.opcode, OP_CLOSE,
                "closed although the client talks: {f:?}"
            );
            if f.opcode == OP_TEXT {
                assert_eq!(f.json(), json!({"type": "pong", "ref": i}));
                break;
            }
        }
        i += 1;
        std::thread::sleep(TALK_EVERY);
    }
}

#[test]
fn pong_frames_keep_a_raw_client_alive() {
    let srv = TestServer::start(&FLAGS);
    let mut ws = RawWs::connect(srv.ws, &token("ponger"));
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < ALIVE_WINDOW {
        let f = ws.read_frame().expect("still open");
        match f.opcode {
            OP_PING => {
                ws.send_frame(true, OP_PONG, &f.payload);
                answered += 1;
            }
            OP_CLOSE => panic!("closed although pings are answered: {f:?}"),
            _ => panic!("unexpected frame {f:?}"),
        }
    }
    assert!(answered >= 2, "expected repeated pings, got {answered}");
}
