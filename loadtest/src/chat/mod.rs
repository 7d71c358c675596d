//! The `chat` scenario (PROTOCOL.md 6): rooms, each a topic `room:<i>`, of members who
//! each connect, subscribe to their room and publish to it at a steady pace for a bounded
//! time. Every member, the publisher included (it is subscribed too), must receive every
//! message its room accepted (`published`) exactly once, in the room's `seq` order; the
//! report counts per room what went missing or came twice, and the fan-out latency from a
//! message's send to each member's receipt (the send time and a sender-local id travel
//! in `data`).
//!
//! Each event loop owns whole rooms, so a room's accounting never leaves its thread, and
//! `--procs K` gives each worker process whole rooms the same way. This file runs the
//! scenario in one process or over workers; [`plan`] says who publishes when, [`driver`]
//! takes one process through its phases, [`event_loop`] and [`messages`] do the
//! publishing and reading (with the counters of [`shared`]), [`accounting`] judges each
//! room, and [`measurements`], [`report`] and [`summary`] sum it up.

mod accounting;
mod driver;
mod event_loop;
mod measurements;
mod messages;
mod plan;
mod report;
mod shared;
mod summary;

pub use report::ChatReport;

use crate::cli::{secs, ChatArgs};
use crate::report::Report;
use crate::util;
use crate::worker::{sock_args, WorkerIo, Workers};
use driver::Local;
use plan::{share, Pace};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How long the parent gives workers to start publishing together after `GO`.
const GO_AHEAD: Duration = Duration::from_millis(300);

/// The `chat` scenario: in this process, over `--procs` workers, or as a worker (which
/// answers its parent and returns `None`). Returns the report and the exit status (1 when
/// the delivery gate failed).
pub fn run(a: &ChatArgs) -> Result<Option<(Report, i32)>, String> {
    if a.worker {
        run_worker(a)?;
        return Ok(None);
    }
    let rep = if a.procs > 1 {
        run_parent(a)?
    } else {
        run_single(a)?
    };
    let ok = rep.chat.as_ref().is_some_and(|c| c.delivery_ok);
    Ok(Some((rep, i32::from(!ok))))
}

/// A chat run in this process.
fn run_single(a: &ChatArgs) -> Result<Report, String> {
    let mut l = Local::start(a)?;
    l.ticker.note(&format!(
        "throng-load chat: {} rooms x {} members on {} at {} msg/s per member for {}s on {} threads",
        a.rooms,
        a.members,
        a.url,
        l.cfg.pace.rate,
        a.duration_secs,
        l.cfg.dial.threads
    ));
    l.wait_joined();
    let at = Instant::now();
    l.go(at);
    l.wait_sent(at);
    l.drain(secs(a.drain_secs));
    Ok(l.close(false))
}

/// A worker: connects its rooms, says READY, publishes from the parent's `GO <µs>` (on the host's monotonic clock),
/// drains, says DRAINED, and on CLOSE sends its RESULT.
fn run_worker(a: &ChatArgs) -> Result<(), String> {
    let io = WorkerIo::start();
    let mut l = Local::start(a)?;
    l.wait_joined();
    WorkerIo::send(&format!("READY {}", l.sh.conns.open_now.load(Relaxed)));
    // Bounded: the parent drives the phases; a silent parent ends the run.
    let bound = Instant::now()
        + secs(l.cfg.pace.span_secs() + a.drain_secs + a.sock.handshake_timeout_secs + 600.0);
    let mut started = false;
    while Instant::now() < bound {
        let Some(cmd) = io.recv(Duration::from_millis(200)) else {
            l.tick();
            continue;
        };
        let mut words = cmd.split_whitespace();
        match words.next() {
            Some("GO") if !started => {
                started = true;
                // The start on the host's monotonic clock, which parent and workers share.
                let go_us: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let at =
                    Instant::now() + Duration::from_micros(go_us.saturating_sub(util::now_us()));
                l.go(at);
                l.wait_sent(at);
                l.drain(secs(a.drain_secs));
                WorkerIo::send("DRAINED");
            }
            Some("CLOSE") | Some("EOF") => break,
            _ => {}
        }
    }
    let rep = l.close(true);
    WorkerIo::send(&format!(
        "RESULT {}",
        serde_json::to_string(&rep).map_err(|e| e.to_string())?
    ));
    Ok(())
}

/// The command line of the worker with `rooms` rooms from `room_before` on.
fn worker_args(a: &ChatArgs, room_before: u64, rooms: u64) -> Vec<String> {
    let n = a.connections();
    let first = room_before * a.members;
    let mine = rooms * a.members;
    let mut v: Vec<String> = vec!["chat".into()];
    let mut kv = |k: &str, x: String| {
        v.push(format!("--{k}"));
        v.push(x);
    };
    // Rotated so that member g of the worker goes where the parent's member first + g
    // would: URL (first + g) mod n.
    kv("url", util::rotate_url_list(&a.url, first));
    kv("rooms", rooms.to_string());
    kv("members", a.members.to_string());
    kv("room-prefix", a.room_prefix.clone());
    kv("room-offset", (a.room_offset + room_before).to_string());
    kv("user-offset", (a.user_offset + first).to_string());
    kv("rate", a.rate_per_member().to_string());
    kv("duration-secs", a.duration_secs.to_string());
    if let Some(c) = a.count {
        kv("count", share(c, n, first, mine).to_string());
    }
    kv("payload-bytes", a.payload_bytes.to_string());
    kv("drain-secs", a.drain_secs.to_string());
    if a.no_publish_claim {
        v.push("--no-publish-claim".into());
    }
    let of_all = mine as f64 / n.max(1) as f64;
    v.extend(sock_args(&a.sock, of_all, a.procs, first));
    v.push("--worker".into());
    v
}

/// A chat run over `--procs` workers, each with whole rooms.
fn run_parent(a: &ChatArgs) -> Result<Report, String> {
    let k = a.procs as u64;
    let mut args = Vec::new();
    let mut before = 0;
    for i in 0..k {
        let rooms = share(a.rooms, k, i, 1);
        let what = format!(
            "rooms {}{}..{}{}",
            a.room_prefix,
            a.room_offset + before,
            a.room_prefix,
            a.room_offset + before + rooms - 1
        );
        args.push((worker_args(a, before, rooms), what));
        before += rooms;
    }
    let n = a.connections();
    let mut ws = Workers::spawn(args, &[("THRONG_JWT_SECRET", a.jwt_secret.as_str())], n)?;
    ws.note(&format!(
        "throng-load chat: {} rooms x {} members on {} at {} msg/s per member for {}s over {} workers",
        a.rooms,
        a.members,
        a.url,
        a.rate_per_member(),
        a.duration_secs,
        a.procs
    ));
    let pace = Pace::of(a);
    let connect = a.sock.connect_secs(n);
    let r = (|| -> Result<(), String> {
        ws.await_all(
            Some("READY"),
            Instant::now() + secs(connect + a.sock.handshake_timeout_secs + 60.0),
        )?;
        let go = util::now_us() + GO_AHEAD.as_micros() as u64;
        ws.send_all(&format!("GO {go}"));
        ws.await_all(
            Some("DRAINED"),
            Instant::now() + secs(pace.span_secs() + a.drain_secs + 60.0),
        )?;
        Ok(())
    })();
    let results = ws.close(secs(a.sock.close_timeout_secs + 30.0));
    r?;
    let reports = results?;
    let parts: Vec<&ChatReport> = reports.iter().filter_map(|r| r.chat.as_ref()).collect();
    if parts.len() < reports.len() {
        return Err("a worker's result has no chat section".into());
    }
    let mut chat = ChatReport::merge(&parts);
    let mut m = Report::merge(&reports);
    chat.rooms = a.rooms;
    chat.rate_per_member = a.rate_per_member();
    m.chat = Some(chat);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_args_split_rooms_users_and_count() {
        let cli = <crate::cli::Cli as clap::Parser>::parse_from([
            "throng-load",
            "chat",
            "--jwt-secret",
            "s",
            "--rooms",
            "5",
            "--members",
            "4",
            "--count",
            "30",
            "--total-rate",
            "40",
            "--procs",
            "2",
            "--url",
            "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws,ws://127.0.0.1:3/ws",
        ]);
        let crate::cli::Cmd::Chat(a) = cli.cmd else {
            unreachable!()
        };
        let v = worker_args(&a, 3, 2);
        let get = |k: &str| {
            let i = v.iter().position(|x| x == k).unwrap();
            v[i + 1].clone()
        };
        assert_eq!(get("--rooms"), "2");
        assert_eq!(get("--room-offset"), "3");
        assert_eq!(get("--user-offset"), "12");
        assert_eq!(get("--rate"), "2", "40/s over 20 members");
        assert_eq!(
            get("--count"),
            "8",
            "members 12..20 get 1 each of 30 over 20"
        );
        assert_eq!(get("--url").split(',').next(), Some("ws://127.0.0.1:1/ws"));
        assert!(v.contains(&"--worker".to_string()));
        assert!(!v.iter().any(|x| x == "--total-rate"));
    }
}
