//! examples/chat: its selftest, run against the `throng` binary of this build. The
//! example's modules are compiled into this test (an example is not a library a test can
//! link), so the script that `cargo run --example chat -- selftest` runs is the one
//! checked here, and the modules' own unit tests (rooms.rs) run here too.

// The test drives the selftest only; the rest of each module serves the interactive
// commands.
#[allow(dead_code)]
#[path = "../examples/chat/conn.rs"]
mod conn;
#[allow(dead_code)]
#[path = "../examples/chat/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../examples/chat/pushapi.rs"]
mod pushapi;
#[allow(dead_code)]
#[path = "../examples/chat/rooms.rs"]
mod rooms;
#[allow(dead_code)]
#[path = "../examples/chat/selftest.rs"]
mod selftest;
#[allow(dead_code)]
#[path = "../examples/chat/server.rs"]
mod server;
#[allow(dead_code)]
#[path = "../examples/chat/upstream.rs"]
mod upstream;
#[allow(dead_code)]
#[path = "../examples/chat/view.rs"]
mod view;

use std::path::PathBuf;

/// Two members join, talk, one drops and gets the missed messages as history, one drops
/// past the history and is told `resumed:false`, one leaves; the online count follows.
#[test]
fn chat_selftest_passes() {
    let opts = selftest::Options {
        throng: PathBuf::from(env!("CARGO_BIN_EXE_throng")),
    };
    if let Err(e) = selftest::run(&opts) {
        panic!("the chat example's selftest failed: {e}");
    }
}
