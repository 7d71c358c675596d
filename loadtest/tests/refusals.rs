//! Flags a run cannot use are refused before it starts (exit 2, a message that names
//! the problem), rather than found per connection or after the run. No server needed:
//! every case must end before the first connection.

use std::process::{Command, Output};

/// Runs throng-load with `args` (a closed port as the server) and returns its output.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_throng-load"))
        .args(args)
        .env("THRONG_JWT_SECRET", "s")
        .output()
        .expect("run throng-load")
}

/// Asserts `args` is refused up front with a message containing each of `want`.
fn refused(args: &[&str], want: &[&str]) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}\n{stdout}");
    for w in want {
        assert!(err.contains(w), "{args:?}: no {w:?} in: {err}");
    }
    assert_not_run(&out);
}

const CLOSED: &str = "ws://127.0.0.1:1/ws";

#[test]
fn a_json_path_that_cannot_be_written_is_refused_before_the_run() {
    refused(
        &[
            "connect",
            "--url",
            CLOSED,
            "--json",
            "/nonexistent-dir/x.json",
        ],
        &["--json /nonexistent-dir/x.json", "cannot be created"],
    );
    let dir = std::env::temp_dir().join(format!("throng-load-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    refused(
        &["push", "--url", CLOSED, "--json", dir.to_str().unwrap()],
        &["is a directory"],
    );
    // A report already there is not truncated by the check.
    let old = dir.join("old.json");
    std::fs::write(&old, "{\"old\":1}\n").unwrap();
    refused(
        &[
            "connect",
            "--url",
            CLOSED,
            "--connections",
            "0",
            "--json",
            old.to_str().unwrap(),
        ],
        &["--connections must be at least 1"],
    );
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "{\"old\":1}\n");
    // A path that can be written is left as it was: nothing is created before the run.
    let new = dir.join("new.json");
    refused(
        &[
            "connect",
            "--url",
            CLOSED,
            "--connections",
            "0",
            "--json",
            new.to_str().unwrap(),
        ],
        &["--connections must be at least 1"],
    );
    assert!(!new.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn zero_connections_are_refused() {
    for mode in ["connect", "push", "churn"] {
        refused(
            &[mode, "--url", CLOSED, "--connections", "0"],
            &["--connections must be at least 1"],
        );
    }
}

#[test]
fn a_port_out_of_range_is_named() {
    refused(
        &["connect", "--url", "ws://127.0.0.1:99999/ws"],
        &["port 99999 is out of range (1 to 65535)"],
    );
    refused(
        &["push", "--url", CLOSED, "--api", "http://127.0.0.1:70000"],
        &["port 70000 is out of range"],
    );
}

#[test]
fn source_addresses_are_checked_before_the_run() {
    refused(
        &["connect", "--url", CLOSED, "--source-ips", "::1"],
        &["--source-ips: ::1 is an IPv6 address", "(IPv4)"],
    );
    if cfg!(target_os = "linux") {
        refused(
            &[
                "connect",
                "--url",
                CLOSED,
                "--source-ips",
                "127.0.0.2,192.0.2.77",
            ],
            &["cannot bind 192.0.2.77", "no such address"],
        );
    }
}

/// `throng-load connect` to a closed port with `args`, under an open-file limit of
/// `limit` (prlimit on the child); None, said, where prlimit is missing.
fn connect_under_file_limit(limit: u32, args: &[&str]) -> Option<std::process::Output> {
    let out = Command::new("prlimit")
        .arg(format!("--nofile={limit}:{limit}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_throng-load"))
        .args(["connect", "--url", CLOSED])
        .args(args)
        .env("THRONG_JWT_SECRET", "s")
        .output();
    match out {
        Ok(out) => Some(out),
        Err(_) => {
            eprintln!("no prlimit here; skipped");
            None
        }
    }
}

#[test]
fn the_open_file_check_suggests_a_procs_that_fits() {
    // Under a limit of 1,000 open files (prlimit on this process's child), 1,900
    // connections over --procs 2 need 3 processes: the check is the parent's, once.
    let Some(out) = connect_under_file_limit(1000, &["--connections", "1900", "--procs", "2"])
    else {
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("over --procs 2 (the largest process has 950)"),
        "{err}"
    );
    assert!(err.contains("use --procs 3,"), "{err}");
    assert_eq!(err.matches("RLIMIT_NOFILE").count(), 1, "{err}");
    assert_not_run(&out);
}

#[test]
fn the_open_file_check_counts_the_event_loops() {
    // Review s23 N2: 236 connections on 64 event loops under a limit of 300 passed the
    // check (236 + 64 reserved), then ran out of files: each loop holds an epoll
    // descriptor. Refused before the run now, naming the loops.
    let Some(out) = connect_under_file_limit(300, &["--connections", "236", "--threads", "64"])
    else {
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "236 connections need about 364 open files per process (with 64 event loops each)"
        ),
        "{err}"
    );
    assert!(err.contains("use --procs 2,"), "{err}");
    assert_not_run(&out);
}

/// Refused before the run: no summary, so no connection was tried.
fn assert_not_run(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("result:"), "ran: {stdout}");
}
