//! The scripted end-to-end check: a real `throng serve` wired to the upstream, and two
//! members driven step by step from one thread. Each step waits (bounded) for what a
//! person would see in the terminal; the first step that does not see it fails the run
//! with a message naming the step.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::conn::{Auth, Chat, Event, Options as ChatOptions, Resume};
use crate::server::{random_hex, ServeOptions, Throng};
use crate::upstream::Upstream;
use crate::view;

/// The longest any one step may wait.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Topic history kept by the server under test: small, so that the second drop misses
/// more than it holds and must be told `resumed:false`.
const HISTORY: usize = 8;

pub struct Options {
    /// The `throng` binary to run.
    pub throng: PathBuf,
}

/// Runs the whole script; Err says which step failed and why.
pub fn run(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    let secret = random_hex(32);
    let api_key = random_hex(24);
    let events_key = random_hex(24);
    let upstream = Upstream::start("127.0.0.1:0", Some(events_key.clone()))?;
    let mut throng = Throng::start(&ServeOptions {
        bin: opts.throng.clone(),
        listen: "127.0.0.1:0".into(),
        api_listen: "127.0.0.1:0".into(),
        secret: secret.clone(),
        api_key: api_key.clone(),
        events_url: upstream.events_url(),
        events_key,
        extra: vec![
            "--history-size".into(),
            HISTORY.to_string(),
            // Within any open-file limit, so the log has no warning about it.
            "--max-connections".into(),
            "1000".into(),
        ],
        echo_log: false,
    })?;
    upstream.set_push_api(&throng.api_url, &api_key);
    println!(
        "selftest: throng {} (pid {}), push API {}, upstream {}",
        throng.ws_url,
        throng.pid(),
        throng.api_url,
        upstream.events_url()
    );
    let member = |user: &str| {
        Chat::new(ChatOptions {
            url: throng.ws_url.clone(),
            user: user.into(),
            room: "lobby".into(),
            auth: Auth::Secret(secret.clone()),
        })
    };
    let (mut alice, mut bob) = (member("alice"), member("bob"));
    let result = script(&mut alice, &mut bob, &upstream);
    alice.leave();
    bob.leave();
    // Let the upstream take the last leave before the server goes, so the run ends
    // quietly (it counts 4: the 3 of the script and alice's).
    let leaves = || upstream.counts().leaves.load(Ordering::Relaxed);
    let deadline = Instant::now() + STEP_TIMEOUT;
    while leaves() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = match result {
        Ok(()) => Ok(()),
        Err(e) => Err(format!(
            "{e}\nthe server's last log lines:\n{}",
            throng.log_tail()
        )),
    };
    upstream.stop();
    throng.stop();
    if outcome.is_ok() {
        println!(
            "selftest passed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    outcome
}

fn script(alice: &mut Chat, bob: &mut Chat, upstream: &Upstream) -> Result<(), String> {
    step("alice joins an empty room; the upstream pushes the online count");
    expect(alice, "alice's subscription", |e| {
        matches!(
            e,
            Event::Joined {
                resume: Resume::Fresh,
                ..
            }
        )
    })?;
    expect(alice, "online 1 (alice)", |e| {
        presence(e, 1, &[], &[], false)
    })?;

    step("bob joins; both see the count go to 2");
    expect(bob, "bob's subscription", |e| {
        matches!(
            e,
            Event::Joined {
                resume: Resume::Fresh,
                ..
            }
        )
    })?;
    expect(bob, "online 2", |e| presence(e, 2, &[], &[], false))?;
    expect(alice, "bob joined, online 2", |e| {
        presence(e, 2, &["bob"], &[], false)
    })?;

    step("they talk: each message reaches both, numbered in the room");
    alice.say("hi bob");
    for m in [&mut *alice, &mut *bob] {
        expect(m, "alice's message", |e| {
            message(e, "alice", "hi bob", false)
        })?;
    }
    bob.say("hello alice");
    for m in [&mut *alice, &mut *bob] {
        expect(m, "bob's message", |e| {
            message(e, "bob", "hello alice", false)
        })?;
    }
    // alice joined a room without pushes, whose epoch `subscribed` could not tell; she
    // learns it by subscribing again after the first push. Without it she could not resume.
    wait_until(alice, "alice knows the room's epoch", Chat::resumable)?;

    step("alice asks /who: the upstream answers her alone");
    alice.who();
    expect(
        alice,
        "the answer to /who",
        |e| matches!(e, Event::Who { members, .. } if *members == ["alice", "bob"]),
    )?;

    step("alice's connection drops without a close frame; bob sees her leave");
    alice.drop_connection(Duration::from_millis(200));
    expect(alice, "alice's disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })?;
    expect(bob, "alice left, online 1", |e| {
        presence(e, 1, &[], &["alice"], false)
    })?;

    step("bob talks while alice is away (she is not polled, so she stays away)");
    let missed = ["are you there?", "the build is green", "see you"];
    for text in missed {
        bob.say(text);
        expect(bob, "bob's own message", |e| message(e, "bob", text, false))?;
    }

    step("alice reconnects with since/epoch: the missed messages come back as history");
    expect(
        alice,
        "alice's resumed subscription",
        |e| matches!(e, Event::Joined { resume: Resume::Replaying { since, upto }, .. } if upto > since),
    )?;
    for text in missed {
        expect(alice, "a missed message as history", |e| {
            message(e, "bob", text, true)
        })?;
    }
    expect(alice, "alice joined again, online 2 (live)", |e| {
        presence(e, 2, &["alice"], &[], false)
    })?;
    expect(bob, "alice joined again, online 2", |e| {
        presence(e, 2, &["alice"], &[], false)
    })?;

    step(&format!(
        "bob drops and misses more than the {HISTORY} pushes the server keeps: resumed:false"
    ));
    wait_until(bob, "bob knows the room's epoch", Chat::resumable)?;
    bob.drop_connection(Duration::from_millis(200));
    expect(bob, "bob's disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })?;
    expect(alice, "bob left, online 1", |e| {
        presence(e, 1, &[], &["bob"], false)
    })?;
    for i in 1..=HISTORY {
        let text = format!("flood {i}");
        alice.say(&text);
        expect(alice, "alice's own message", |e| {
            message(e, "alice", &text, false)
        })?;
    }
    expect(bob, "bob's subscription without history", |e| {
        matches!(
            e,
            Event::Joined {
                resume: Resume::Unavailable { since: Some(_) },
                ..
            }
        )
    })?;
    expect(
        bob,
        "bob joined again, online 2, and no history before it",
        |e| {
            if let Event::Message { history: true, .. } = e {
                return Some(Err("a history message after resumed:false".to_string()));
            }
            presence(e, 2, &[], &[], false).then_some(Ok(()))
        },
    )?;

    step("bob leaves with a close handshake; alice sees the count go back to 1");
    bob.leave();
    expect(alice, "bob left, online 1", |e| {
        presence(e, 1, &[], &["bob"], false)
    })?;

    let counts = upstream.counts();
    let (joins, leaves, sends, pushes) = (
        counts.joins.load(Ordering::Relaxed),
        counts.leaves.load(Ordering::Relaxed),
        counts.sends.load(Ordering::Relaxed),
        counts.presence_pushes.load(Ordering::Relaxed),
    );
    println!(
        "selftest: the upstream saw {joins} joins, {leaves} leaves and {sends} send, and \
         pushed the online count {pushes} times"
    );
    if joins < 4 || leaves < 3 || sends < 1 {
        return Err(format!(
            "the upstream's counts are short: {joins} joins (want 4), {leaves} leaves \
             (want 3), {sends} sends (want 1)"
        ));
    }
    Ok(())
}

fn step(what: &str) {
    println!("== {what}");
}

/// What a step waits for: `Some(Ok)` it came, `Some(Err)` something came that must not,
/// `None` not this one (keep waiting). A plain `bool` works too.
trait Check {
    fn check(self) -> Option<Result<(), String>>;
}

impl Check for bool {
    fn check(self) -> Option<Result<(), String>> {
        self.then_some(Ok(()))
    }
}

impl Check for Option<Result<(), String>> {
    fn check(self) -> Option<Result<(), String>> {
        self
    }
}

/// Polls `m` until an event passes `want`, printing every event on the way (the
/// transcript); fails after `STEP_TIMEOUT`, or at once when the member is gone, naming
/// the last events that came instead.
fn expect<C: Check>(m: &mut Chat, what: &str, want: impl Fn(&Event) -> C) -> Result<(), String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut seen: Vec<String> = Vec::new();
    let failed = |m: &Chat, why: String, seen: &[String]| {
        let seen = if seen.is_empty() {
            "nothing".to_string()
        } else {
            seen.join(" | ")
        };
        Err(format!(
            "{}: waiting for {what}: {why}; came instead: {seen}",
            m.user()
        ))
    };
    while Instant::now() < deadline {
        let Some(e) = m.next(Duration::from_millis(50)) else {
            if m.is_gone() {
                return failed(m, "the member gave up".into(), &seen);
            }
            continue;
        };
        let shown = view::line(&e);
        if let Some(line) = &shown {
            println!("{:>5} | {line}", m.user());
        }
        // What the terminal does not show (a replayed presence) still explains a failure.
        let line = shown.unwrap_or_else(|| format!("{e:?}"));
        match want(&e).check() {
            Some(Ok(())) => return Ok(()),
            Some(Err(why)) => return failed(m, why, &seen),
            None => {
                if seen.len() == 5 {
                    seen.remove(0);
                }
                seen.push(line);
            }
        }
    }
    failed(m, format!("not within {STEP_TIMEOUT:?}"), &seen)
}

/// Polls `m` (printing what comes) until `cond` holds.
fn wait_until(m: &mut Chat, what: &str, cond: impl Fn(&Chat) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !cond(m) {
        if Instant::now() >= deadline {
            return Err(format!("{}: {what}: not within {STEP_TIMEOUT:?}", m.user()));
        }
        if let Some(line) = m
            .next(Duration::from_millis(50))
            .as_ref()
            .and_then(view::line)
        {
            println!("{:>5} | {line}", m.user());
        }
    }
    Ok(())
}

fn presence(e: &Event, n: u64, joined_: &[&str], left_: &[&str], history_: bool) -> bool {
    matches!(e, Event::Presence { online, joined, left, history, .. }
        if *online == n
            && joined_.iter().all(|u| joined.iter().any(|j| j == u))
            && left_.iter().all(|u| left.iter().any(|l| l == u))
            && *history == history_)
}

fn message(e: &Event, from_: &str, text_: &str, history_: bool) -> bool {
    matches!(e, Event::Message { from, text, history, .. }
        if from == from_ && text == text_ && *history == history_)
}
