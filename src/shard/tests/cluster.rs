//! Cluster mode on one shard, the test playing the broker: the first session waits for
//! its stream, gaps reload and deliver what was missed in order, a restarted stream closes
//! with 1012, a failed load with 1013, and topic subscribes wait for the topic's stream.

use super::*;
use crate::broker::StreamState;
use crate::command::Resume;
use crate::wire::Wire;

const EPOCH: &str = "00000000000000aa";
const OTHER: &str = "00000000000000bb";

fn user_frame(seq: u64) -> Wire {
    crate::messages::push_frame(&seq.to_string(), 0, Some(seq), None, None)
}

fn topic_frame(topic: &str, seq: u64) -> Wire {
    crate::messages::push_frame(&seq.to_string(), 0, Some(seq), Some(topic), None)
}

/// A stream at `seq` in `epoch` holding pushes `held` (user frames, or topic frames).
fn state(
    seq: u64,
    epoch: &str,
    held: std::ops::RangeInclusive<u64>,
    topic: Option<&str>,
) -> StreamState {
    StreamState {
        seq,
        epoch: epoch.into(),
        entries: held
            .map(|s| {
                (
                    s,
                    topic.map_or_else(|| user_frame(s), |t| topic_frame(t, s)),
                )
            })
            .collect(),
    }
}

/// A stream never pushed to.
fn fresh_state() -> StreamState {
    StreamState {
        seq: 0,
        epoch: EPOCH.into(),
        entries: Vec::new(),
    }
}

fn user_push(user: &str, seq: u64, epoch: &str) -> Remote {
    Remote::UserPush {
        user: user.into(),
        seq,
        epoch: crate::broker::user_epoch(epoch),
        frame: user_frame(seq),
        accepted_at: Instant::now(),
    }
}

fn loaded(user: &str, st: Result<StreamState, String>) -> Remote {
    Remote::UserLoaded {
        user: user.into(),
        state: st,
    }
}

/// A session handed over and upgraded (the 101 is read), with no `welcome` yet.
fn parked(h: &mut Harness, user: &str, resume: Option<Resume>) -> Peer {
    parked_until(h, user, None, resume)
}

/// Like `parked`, with a token that expires at `exp` (unix seconds).
fn parked_until(h: &mut Harness, user: &str, exp: Option<u64>, resume: Option<Resume>) -> Peer {
    let mut p = h.handoff(user, exp, Vec::new(), None, resume);
    for _ in 0..MAX_TURNS {
        h.turn();
        p.fill();
        if let Some(head) = p.take_head() {
            assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
            return p;
        }
    }
    panic!("no 101");
}

/// Everything the shard asked the broker for so far, but the streams it keeps (once a
/// second, `keeps`).
fn asked(rx: &Receiver<Interest>) -> Vec<Interest> {
    rx.try_iter()
        .filter(|i| !matches!(i, Interest::Keep(_)))
        .collect()
}

/// The streams the shard asked the broker to keep so far: users, then topics.
fn keeps(rx: &Receiver<Interest>) -> (Vec<String>, Vec<String>) {
    let (mut users, mut topics) = (Vec::new(), Vec::new());
    for i in rx.try_iter() {
        if let Interest::Keep(slice) = i {
            users.extend(slice.users.iter().map(|u| u.to_string()));
            topics.extend(slice.topics.iter().map(|t| t.to_string()));
        }
    }
    (users, topics)
}

fn watch(user: &str, fresh: bool) -> Interest {
    Interest::WatchUser {
        user: user.into(),
        fresh,
    }
}

/// A session of `user` whose stream is at `st`.
fn online(h: &mut Harness, tx: &RemoteTx, user: &str, st: StreamState) -> Peer {
    let mut p = parked(h, user, None);
    tx.send(loaded(user, Ok(st))).unwrap();
    let w = h.recv_json(&mut p);
    assert_eq!(w["type"], "welcome", "{w}");
    p
}

fn seq_of(v: &Value) -> u64 {
    assert_eq!(v["type"], "push", "{v}");
    v["seq"].as_u64().unwrap()
}

#[test]
fn first_session_waits_for_its_stream_then_resumes_from_it() {
    let (mut h, interests, tx) = Harness::cluster(&[]);
    let resume = Resume {
        since: 3,
        epoch: EPOCH.into(),
    };
    let mut p = parked(&mut h, "ann", Some(resume));
    assert_eq!(asked(&interests), vec![watch("ann", true)]);
    // What the client sends before `welcome` waits in the socket.
    p.send_json(json!({"type": "ping", "ref": "early"}));
    h.quiet(&mut p);
    tx.send(loaded("ann", Ok(state(5, EPOCH, 2..=5, None))))
        .unwrap();
    let w = h.recv_json(&mut p);
    assert_eq!(
        (
            w["type"].as_str(),
            w["seq"].as_u64(),
            w["epoch"].as_str(),
            w["resumed"].as_bool()
        ),
        (Some("welcome"), Some(5), Some(EPOCH), Some(true)),
        "{w}"
    );
    assert_eq!(seq_of(&h.recv_json(&mut p)), 4);
    assert_eq!(seq_of(&h.recv_json(&mut p)), 5);
    assert_eq!(h.recv_json(&mut p), json!({"type": "pong", "ref": "early"}));
    // Live pushes follow; the overlap of load and channel is dropped.
    tx.send(user_push("ann", 5, EPOCH)).unwrap();
    tx.send(user_push("ann", 6, EPOCH)).unwrap();
    assert_eq!(seq_of(&h.recv_json(&mut p)), 6);
    h.quiet(&mut p);
    // A second session of a served user needs no load.
    let q = h.connect("ann");
    assert_eq!(q.welcome["seq"], 6);
    assert!(asked(&interests).is_empty());
}

#[test]
fn the_shard_takes_the_bytes_of_what_it_takes_off_the_queue_gauge() {
    let (mut h, _interests, tx) = Harness::cluster(&[]);
    let mut p = parked(&mut h, "ann", None);
    tx.send(loaded("ann", Ok(state(2, EPOCH, 1..=2, None))))
        .unwrap();
    tx.send(user_push("ann", 3, EPOCH)).unwrap();
    assert!(tx.queued_bytes() > 0, "the broker counted what it sent");
    let w = h.recv_json(&mut p);
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(seq_of(&h.recv_json(&mut p)), 3);
    assert_eq!(tx.queued_bytes(), 0, "taken, so given back");
}

#[test]
fn a_shard_that_stops_gives_back_the_bytes_of_what_it_never_took() {
    let (mut h, _interests, tx) = Harness::cluster(&[]);
    tx.send(user_push("ann", 1, EPOCH)).unwrap();
    tx.send(user_push("bo", 1, EPOCH)).unwrap();
    assert!(tx.queued_bytes() > 0);
    h.shard.abandon_all();
    assert_eq!(tx.queued_bytes(), 0);
}

#[test]
fn a_gap_reloads_and_sessions_get_what_they_missed_in_order() {
    let (mut h, interests, tx) = Harness::cluster(&[]);
    let mut p = online(&mut h, &tx, "bo", state(2, EPOCH, 1..=2, None));
    asked(&interests);
    tx.send(user_push("bo", 3, EPOCH)).unwrap();
    assert_eq!(seq_of(&h.recv_json(&mut p)), 3);
    // 4 and 5 were missed (a reconnect of the broker, say): 6 waits for a reload.
    tx.send(user_push("bo", 6, EPOCH)).unwrap();
    tx.send(user_push("bo", 7, EPOCH)).unwrap();
    h.quiet(&mut p);
    assert_eq!(asked(&interests), vec![Interest::ReloadUser("bo".into())]);
    tx.send(loaded("bo", Ok(state(6, EPOCH, 1..=6, None))))
        .unwrap();
    for want in 4..=7 {
        assert_eq!(seq_of(&h.recv_json(&mut p)), want);
    }
    h.quiet(&mut p);
}

#[test]
fn a_resume_past_the_node_history_reloads_and_pushes_meanwhile_fill_the_gap() {
    // Review s17g: the reload a resume starts decided from Redis's snapshot alone, so a
    // burst that moved Redis's short history past the live session's position closed
    // every session with 1012, though the pushes were all there, held on the channel.
    let (mut h, interests, tx) = Harness::cluster(&["--history-size", "2"]);
    let mut live = online(&mut h, &tx, "di", state(5, EPOCH, 4..=5, None));
    asked(&interests);
    let resume = Resume {
        since: 1,
        epoch: EPOCH.into(),
    };
    let mut back = parked(&mut h, "di", Some(resume));
    assert_eq!(asked(&interests), vec![Interest::ReloadUser("di".into())]);
    // A burst while it loads; Redis, keeping 2, has moved on to 9..=10 by then.
    for seq in 6..=10 {
        tx.send(user_push("di", seq, EPOCH)).unwrap();
    }
    h.quiet(&mut live);
    tx.send(loaded("di", Ok(state(10, EPOCH, 9..=10, None))))
        .unwrap();
    for want in 6..=10 {
        assert_eq!(seq_of(&h.recv_json(&mut live)), want);
    }
    let w = h.recv_json(&mut back);
    assert_eq!(
        (w["type"].as_str(), w["resumed"].as_bool()),
        (Some("welcome"), Some(false)),
        "{w}"
    );
    h.quiet(&mut live);
}

#[test]
fn a_resume_from_before_what_redis_held_reloads_once_not_at_every_handshake() {
    // Review s21a: a client reconnecting with `since` 0 to a user whose early pushes had
    // expired made each handshake load the user's whole history from Redis again.
    let (mut h, interests, tx) = Harness::cluster(&[]);
    let _live = online(&mut h, &tx, "ed", state(8, EPOCH, 5..=8, None));
    asked(&interests);
    let from_zero = || Resume {
        since: 0,
        epoch: EPOCH.into(),
    };
    let mut first = parked(&mut h, "ed", Some(from_zero()));
    assert_eq!(asked(&interests), vec![Interest::ReloadUser("ed".into())]);
    tx.send(loaded("ed", Ok(state(8, EPOCH, 5..=8, None))))
        .unwrap();
    let w = h.recv_json(&mut first);
    assert_eq!(
        (w["type"].as_str(), w["resumed"].as_bool()),
        (Some("welcome"), Some(false)),
        "{w}"
    );
    // Redis held nothing before 5: the next such resume is answered here, at once.
    let again = h.connect_resume("ed", from_zero());
    assert_eq!(again.welcome["resumed"], false, "{}", again.welcome);
    assert!(asked(&interests).is_empty(), "loaded again");
    // One this node holds is replayed from here; one it does not, but Redis may, loads.
    let mut held = h.connect_resume(
        "ed",
        Resume {
            since: 6,
            epoch: EPOCH.into(),
        },
    );
    assert_eq!(held.welcome["resumed"], true, "{}", held.welcome);
    assert_eq!(seq_of(&h.recv_json(&mut held)), 7);
    assert!(asked(&interests).is_empty(), "loaded again");
}

#[test]
fn a_resume_from_before_this_nodes_shorter_ring_reloads_once_not_at_every_handshake() {
    // Review s22a: the floor was where Redis's history began, but a node with a shorter
    // `history_size` than the pushing node keeps less of it; resumes between the two
    // loaded the user again at every handshake.
    let (mut h, interests, tx) = Harness::cluster(&["--history-size", "2"]);
    let _live = online(&mut h, &tx, "gil", state(8, EPOCH, 5..=8, None));
    asked(&interests);
    let from_five = || Resume {
        since: 5,
        epoch: EPOCH.into(),
    };
    let mut first = parked(&mut h, "gil", Some(from_five()));
    assert_eq!(asked(&interests), vec![Interest::ReloadUser("gil".into())]);
    tx.send(loaded("gil", Ok(state(8, EPOCH, 5..=8, None))))
        .unwrap();
    let w = h.recv_json(&mut first);
    assert_eq!(w["resumed"], false, "{w}");
    for _ in 0..2 {
        let again = h.connect_resume("gil", from_five());
        assert_eq!(again.welcome["resumed"], false, "{}", again.welcome);
        assert!(asked(&interests).is_empty(), "loaded again");
    }
    // What the ring holds (7, 8) is still replayed from here.
    let mut held = h.connect_resume(
        "gil",
        Resume {
            since: 6,
            epoch: EPOCH.into(),
        },
    );
    assert_eq!(held.welcome["resumed"], true, "{}", held.welcome);
    assert_eq!(seq_of(&h.recv_json(&mut held)), 7);
}

#[test]
fn pushes_held_during_a_reload_are_bounded_and_nothing_is_skipped() {
    let (mut h, interests, tx) = Harness::cluster(&[]);
    let mut p = online(&mut h, &tx, "fay", state(1, EPOCH, 1..=1, None));
    asked(&interests);
    // A gap (2 missed), then far more pushes than are held while the reload runs.
    for seq in 3..=600 {
        tx.send(user_push("fay", seq, EPOCH)).unwrap();
    }
    h.quiet(&mut p);
    assert_eq!(asked(&interests), vec![Interest::ReloadUser("fay".into())]);
    tx.send(loaded("fay", Ok(state(2, EPOCH, 1..=2, None))))
        .unwrap();
    // 2 from the load, then the held ones in order up to the bound.
    let mut last = 1;
    for _ in 0..(1 + super::super::cluster::MAX_BUFFERED) {
        let s = seq_of(&h.recv_json(&mut p));
        assert_eq!(s, last + 1);
        last = s;
    }
    h.quiet(&mut p);
    // The next live push shows the gap: the stream loads again and nothing is skipped.
    tx.send(user_push("fay", 601, EPOCH)).unwrap();
    h.quiet(&mut p);
    assert_eq!(asked(&interests), vec![Interest::ReloadUser("fay".into())]);
    tx.send(loaded("fay", Ok(state(601, EPOCH, 1..=601, None))))
        .unwrap();
    for want in last + 1..=601 {
        assert_eq!(seq_of(&h.recv_json(&mut p)), want);
    }
}

#[test]
fn a_stream_restarted_in_redis_closes_live_sessions_1012() {
    let (mut h, interests, tx) = Harness::cluster(&[]);
    let mut p = online(&mut h, &tx, "cy", state(4, EPOCH, 1..=4, None));
    asked(&interests);
    tx.send(user_push("cy", 1, OTHER)).unwrap();
    h.quiet(&mut p);
    assert_eq!(asked(&interests), vec![Interest::ReloadUser("cy".into())]);
    tx.send(loaded("cy", Ok(state(1, OTHER, 1..=1, None))))
        .unwrap();
    // A new session starts from the new numbering.
    closed_then_new_at(&mut h, &mut p, "cy", (1, OTHER));
}

/// `p` is closed with 1012 (its stream started again) and a new session of `user` is
/// welcomed at `(seq, epoch)`.
fn closed_then_new_at(h: &mut Harness, p: &mut Peer, user: &str, (seq, epoch): (u64, &str)) {
    assert_eq!(h.recv_close(p), 1012);
    let q = h.connect(user);
    assert_eq!(
        (q.welcome["seq"].as_u64(), q.welcome["epoch"].as_str()),
        (Some(seq), Some(epoch))
    );
}

#[test]
fn a_load_that_fails_closes_the_waiting_session_1013_and_a_later_one_retries() {
    let (mut h, interests, tx) = Harness::cluster(&[]);
    let mut p = parked(&mut h, "di", None);
    assert_eq!(asked(&interests), vec![watch("di", true)]);
    tx.send(loaded("di", Err("Redis is unavailable".into())))
        .unwrap();
    assert_eq!(h.recv_close(&mut p), 1013);
    let mut q = parked(&mut h, "di", None);
    assert_eq!(asked(&interests).len(), 1, "asked again");
    tx.send(loaded("di", Ok(fresh_state()))).unwrap();
    assert_eq!(h.recv_json(&mut q)["type"], "welcome");
}

#[test]
fn subscribe_waits_for_the_topic_stream_and_unsubscribe_lets_it_go() {
    let (mut h, interests, tx) = Harness::cluster(&["--public-topics", "room.*"]);
    let mut p = online(&mut h, &tx, "ed", fresh_state());
    asked(&interests);
    p.send_json(
        json!({"type": "subscribe", "topic": "room.1", "since": 1, "epoch": OTHER, "ref": 7}),
    );
    h.quiet(&mut p);
    let topic: Arc<str> = "room.1".into();
    assert_eq!(
        asked(&interests),
        vec![Interest::WatchTopic {
            shard: 0,
            topic: Arc::clone(&topic)
        }]
    );
    tx.send(Remote::TopicLoaded {
        topic: Arc::clone(&topic),
        state: Ok(state(3, OTHER, 1..=3, Some("room.1"))),
    })
    .unwrap();
    let s = h.recv_json(&mut p);
    assert_eq!(
        s,
        json!({"type": "subscribed", "topic": "room.1", "seq": 3, "epoch": OTHER, "resumed": true, "ref": 7})
    );
    assert_eq!(seq_of(&h.recv_json(&mut p)), 2);
    assert_eq!(seq_of(&h.recv_json(&mut p)), 3);
    let push = |seq| Remote::TopicPush {
        topic: Arc::clone(&topic),
        seq,
        epoch: OTHER.into(),
        frame: topic_frame("room.1", seq),
        compressed: Arc::default(),
        accepted_at: Instant::now(),
    };
    tx.send(push(4)).unwrap();
    tx.send(push(4)).unwrap();
    assert_eq!(seq_of(&h.recv_json(&mut p)), 4);
    h.quiet(&mut p);
    p.send_json(json!({"type": "unsubscribe", "topic": "room.1"}));
    assert_eq!(h.recv_json(&mut p)["type"], "unsubscribed");
    assert_eq!(
        asked(&interests),
        vec![Interest::UnwatchTopic { shard: 0, topic }]
    );
}

/// A refused handoff's whole HTTP answer, read until the shard closes the socket.
fn refusal(h: &mut Harness, p: &mut Peer) -> String {
    for _ in 0..MAX_TURNS {
        h.turn();
        p.fill();
        if p.eof {
            return String::from_utf8_lossy(&std::mem::take(&mut p.buf)).into_owned();
        }
    }
    panic!("no close");
}

#[test]
fn a_broker_far_behind_refuses_new_streams_and_keeps_serving_the_others() {
    // The broker counts as behind once two stream changes wait for it.
    let (mut h, interests, tx) = Harness::cluster_with_limit(&["--public-topics", "room.*"], 2);
    let mut ann = online(&mut h, &tx, "ann", fresh_state());
    ann.send_json(json!({"type": "subscribe", "topic": "room.1", "ref": 1}));
    h.quiet(&mut ann);
    // Two changes wait (ann's stream, room.1's): nothing new is asked for.
    let mut bob = h.handoff("bob", None, Vec::new(), None, None);
    let answer = refusal(&mut h, &mut bob);
    assert!(
        answer.starts_with("HTTP/1.1 503 ") && answer.contains("Redis is behind"),
        "{answer}"
    );
    use crate::metrics::HandshakeOutcome::{Accepted, OverCapacity};
    let counted = |h: &Harness, o: crate::metrics::HandshakeOutcome| {
        h.shard.shared.metrics.handshakes[o as usize].load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        counted(&h, OverCapacity),
        1,
        "counted as a refused handshake"
    );
    // Only what the shard took counts as accepted: ann, not bob (a counter that the
    // acceptor raised and the shard lowered again would look like a reset).
    assert_eq!(counted(&h, Accepted), 1);
    // Streams already asked for go on: room.1's subscribe is answered once its stream
    // arrives, and ann's second session is welcomed.
    tx.send(Remote::TopicLoaded {
        topic: "room.1".into(),
        state: Ok(fresh_state()),
    })
    .unwrap();
    assert_eq!(h.recv_json(&mut ann)["type"], "subscribed");
    let mut ann2 = parked(&mut h, "ann", None);
    assert_eq!(h.recv_json(&mut ann2)["type"], "welcome");
    assert_eq!(counted(&h, Accepted), 2);
    // A topic not served here is a new stream: refused, the connection goes on, however
    // often it asks (the node's state is not a refusal of the client's doing).
    ann.send_json(json!({"type": "subscribe", "topic": "room.2", "ref": 2}));
    let e = h.recv_json(&mut ann);
    assert_eq!(e["code"], "broker_unavailable", "{e}");
    assert_eq!(e["ref"], 2);
    for n in 0..12 {
        ann.send_json(json!({"type": "subscribe", "topic": format!("room.x{n}")}));
        assert_eq!(h.recv_json(&mut ann)["code"], "broker_unavailable");
    }
    h.ping_pong(&mut ann, "still here");
    // A topic the token does not grant is still refused for that.
    ann.send_json(json!({"type": "subscribe", "topic": "secret.1", "ref": 4}));
    assert_eq!(h.recv_json(&mut ann)["code"], "forbidden_topic");
    assert_eq!(
        h.shard
            .shared
            .metrics
            .broker
            .behind_refusals
            .load(std::sync::atomic::Ordering::Relaxed),
        14
    );
    // The broker catches up: new streams are asked for again.
    asked(&interests);
    let _bob = parked(&mut h, "bob", None);
    assert_eq!(asked(&interests), vec![watch("bob", true)]);
    ann.send_json(json!({"type": "subscribe", "topic": "room.2", "ref": 3}));
    h.quiet(&mut ann);
    assert_eq!(
        asked(&interests),
        vec![Interest::WatchTopic {
            shard: 0,
            topic: "room.2".into()
        }]
    );
}

#[test]
fn a_session_waiting_for_its_stream_gets_its_drain_and_expiry_hints_after_welcome() {
    // Review s21a: a session parked for its stream load was sent `reconnect` (drain) and
    // `token_expiring` before its `welcome`, which a client reads as out of protocol.
    let (mut h, _interests, tx) = Harness::cluster(&["--drain-ms", "60000"]);
    // Within the default 60 s `refresh_ahead`: due at once.
    let mut p = parked_until(&mut h, "ann", Some(unix_now() + 20), None);
    h.draining.store(true, Relaxed);
    h.quiet(&mut p);
    tx.send(loaded("ann", Ok(fresh_state()))).unwrap();
    let w = h.recv_json(&mut p);
    assert_eq!(w["type"], "welcome", "{w}");
    let expiring = h.recv_json(&mut p);
    assert_eq!(expiring["type"], "token_expiring", "{expiring}");
    let hint = h.recv_json(&mut p);
    assert_eq!(hint["type"], "reconnect", "{hint}");
    assert!(
        hint["after_ms"].as_u64().is_some_and(|ms| ms < 60000),
        "{hint}"
    );
    h.quiet(&mut p);
}

#[test]
fn the_streams_a_shard_serves_are_kept_in_redis_once_a_second_a_slice() {
    // A user or topic served and quiet for the meta TTL (24 h) lost its `seq` and epoch
    // in Redis: the next push started a new epoch and closed its sessions 1012.
    let flags = ["--public-topics", "room.*"];
    let (mut h, interests, tx) = Harness::cluster(&flags);
    let mut ann = online(&mut h, &tx, "ann", fresh_state());
    let _bo = online(&mut h, &tx, "bo", fresh_state());
    ann.send_json(json!({"type": "subscribe", "topic": "room.k"}));
    h.quiet(&mut ann);
    tx.send(Remote::TopicLoaded {
        topic: "room.k".into(),
        state: Ok(fresh_state()),
    })
    .unwrap();
    assert_eq!(h.recv_json(&mut ann)["type"], "subscribed");
    // A topic never pushed has no key in Redis: nothing to keep.
    ann.send_json(json!({"type": "subscribe", "topic": "room.p"}));
    h.quiet(&mut ann);
    tx.send(Remote::TopicLoaded {
        topic: "room.p".into(),
        state: Ok(bare_state(0, crate::api::sequencer::NO_EPOCH)),
    })
    .unwrap();
    assert_eq!(h.recv_json(&mut ann)["type"], "subscribed");
    let _ = keeps(&interests);
    // One slice a second: at this size, one user and the topic.
    let start = h.clock.now_ms();
    h.at(start + 1000);
    let (users, topics) = keeps(&interests);
    assert_eq!((users.len(), &topics[..]), (1, &["room.k".to_string()][..]));
    h.at(start + 1500);
    assert_eq!(keeps(&interests), (vec![], vec![]), "not twice a second");
    // The sweep goes on over every user, and around again.
    let mut seen = users;
    for s in 2..=4 {
        h.at(start + s * 1000);
        let (users, topics) = keeps(&interests);
        assert!(!topics.iter().any(|t| t == "room.p"), "{topics:?}");
        seen.extend(users);
    }
    seen.sort();
    assert_eq!(seen, ["ann", "ann", "bo", "bo"]);
}

fn user_push_of(user: &str, seq: u64, data: &str) -> Remote {
    Remote::UserPush {
        user: user.into(),
        seq,
        epoch: crate::broker::user_epoch(EPOCH),
        frame: crate::messages::push_frame(data, 0, Some(seq), None, None),
        accepted_at: Instant::now(),
    }
}

fn rewound(stream: crate::broker::RewindOf, epoch: &str, seq: u64) -> Interest {
    Interest::Rewound(Box::new(crate::broker::Rewind {
        stream,
        epoch: epoch.into(),
        seq,
    }))
}

/// A stream at `seq` in `epoch` with nothing held: what Redis shows after a new epoch.
fn bare_state(seq: u64, epoch: &str) -> StreamState {
    StreamState {
        seq,
        epoch: epoch.into(),
        entries: Vec::new(),
    }
}

#[test]
fn a_push_numbered_again_with_other_content_asks_for_a_new_epoch_and_sessions_start_again() {
    // A Redis that lost its last writes (failover to a replica behind) numbers the next
    // pushes 2, 3 again: a session at 3 would take them for repeats and lose them.
    let (mut h, interests, tx) = Harness::cluster(&[]);
    let mut p = online(&mut h, &tx, "fa", state(3, EPOCH, 1..=3, None));
    asked(&interests);
    // The same push twice (a load and the channel overlapping) is only a repeat.
    tx.send(user_push("fa", 3, EPOCH)).unwrap();
    h.quiet(&mut p);
    assert_eq!(asked(&interests), vec![]);
    tx.send(user_push_of("fa", 2, "\"another\"")).unwrap();
    tx.send(user_push_of("fa", 3, "\"and another\"")).unwrap();
    h.quiet(&mut p);
    let user = crate::broker::RewindOf::User("fa".into());
    assert_eq!(asked(&interests), vec![rewound(user, EPOCH, 3)]);
    // The broker gave it a new epoch, numbering on from 3.
    tx.send(loaded("fa", Ok(bare_state(3, OTHER)))).unwrap();
    closed_then_new_at(&mut h, &mut p, "fa", (3, OTHER));
}

#[test]
fn a_reload_below_what_the_shard_had_asks_for_a_new_epoch_once() {
    let (mut h, interests, tx) = Harness::cluster(&[]);
    let mut p = online(&mut h, &tx, "gi", state(5, EPOCH, 1..=5, None));
    asked(&interests);
    // A gap (the broker's link was cut), and Redis came back at 3 in the same epoch.
    tx.send(user_push("gi", 7, EPOCH)).unwrap();
    h.quiet(&mut p);
    assert_eq!(asked(&interests), vec![Interest::ReloadUser("gi".into())]);
    tx.send(loaded("gi", Ok(state(3, EPOCH, 1..=3, None))))
        .unwrap();
    h.quiet(&mut p);
    let user = crate::broker::RewindOf::User("gi".into());
    assert_eq!(asked(&interests), vec![rewound(user, EPOCH, 5)]);
    // The new epoch did not take (nothing changed in Redis): the session starts again
    // without another ask.
    tx.send(loaded("gi", Ok(state(3, EPOCH, 1..=3, None))))
        .unwrap();
    assert_eq!(h.recv_close(&mut p), 1012);
    assert_eq!(asked(&interests), vec![]);
    let q = h.connect("gi");
    assert_eq!(q.welcome["seq"].as_u64(), Some(3));
}

/// A member of `room.1` whose stream is at `st`.
fn member(h: &mut Harness, tx: &RemoteTx, user: &str, st: StreamState) -> Peer {
    let mut p = online(h, tx, user, fresh_state());
    p.send_json(json!({"type": "subscribe", "topic": "room.1"}));
    h.quiet(&mut p);
    tx.send(Remote::TopicLoaded {
        topic: "room.1".into(),
        state: Ok(st),
    })
    .unwrap();
    assert_eq!(h.recv_json(&mut p)["type"], "subscribed");
    p
}

fn topic_push_of(seq: u64, data: &str) -> Remote {
    Remote::TopicPush {
        topic: "room.1".into(),
        seq,
        epoch: OTHER.into(),
        frame: crate::messages::push_frame(data, 0, Some(seq), Some("room.1"), None),
        compressed: Arc::default(),
        accepted_at: Instant::now(),
    }
}

#[test]
fn a_topic_push_numbered_again_asks_for_a_new_epoch_and_members_start_again() {
    let (mut h, interests, tx) = Harness::cluster(&["--public-topics", "room.*"]);
    let mut p = member(&mut h, &tx, "ho", state(3, OTHER, 1..=3, Some("room.1")));
    asked(&interests);
    tx.send(topic_push_of(3, "3")).unwrap();
    h.quiet(&mut p);
    assert_eq!(asked(&interests), vec![], "a repeat of the same push");
    tx.send(topic_push_of(3, "\"another\"")).unwrap();
    // Ignored while its new epoch is asked for: the members start again.
    tx.send(topic_push_of(4, "4")).unwrap();
    h.quiet(&mut p);
    let topic = crate::broker::RewindOf::Topic {
        shard: 0,
        topic: "room.1".into(),
    };
    assert_eq!(asked(&interests), vec![rewound(topic, OTHER, 3)]);
    tx.send(Remote::TopicLoaded {
        topic: "room.1".into(),
        state: Ok(bare_state(4, EPOCH)),
    })
    .unwrap();
    assert_eq!(h.recv_close(&mut p), 1012);
}

#[test]
fn a_topic_reload_with_other_content_at_the_shards_seq_asks_and_a_failed_load_restarts() {
    let (mut h, interests, tx) = Harness::cluster(&["--public-topics", "room.*"]);
    let mut p = member(&mut h, &tx, "iv", state(3, OTHER, 1..=3, Some("room.1")));
    asked(&interests);
    // Redis went back to 1 and took pushes 2 to 5 again before this reload (a broker
    // reconnect): its push 3 is not the one held here.
    let mut st = state(5, OTHER, 1..=5, Some("room.1"));
    st.entries[2].1 = crate::messages::push_frame("\"other\"", 0, Some(3), Some("room.1"), None);
    tx.send(Remote::TopicLoaded {
        topic: "room.1".into(),
        state: Ok(st),
    })
    .unwrap();
    h.quiet(&mut p);
    let topic = crate::broker::RewindOf::Topic {
        shard: 0,
        topic: "room.1".into(),
    };
    assert_eq!(asked(&interests), vec![rewound(topic, OTHER, 3)]);
    tx.send(Remote::TopicLoaded {
        topic: "room.1".into(),
        state: Err("Redis is unavailable".into()),
    })
    .unwrap();
    assert_eq!(h.recv_close(&mut p), 1012);
}

#[test]
fn a_reload_that_only_adds_to_what_the_shard_had_asks_for_nothing() {
    let (mut h, interests, tx) = Harness::cluster(&["--public-topics", "room.*"]);
    let mut p = member(&mut h, &tx, "jo", state(3, OTHER, 1..=3, Some("room.1")));
    asked(&interests);
    tx.send(Remote::TopicLoaded {
        topic: "room.1".into(),
        state: Ok(state(5, OTHER, 1..=5, Some("room.1"))),
    })
    .unwrap();
    assert_eq!(seq_of(&h.recv_json(&mut p)), 4);
    assert_eq!(seq_of(&h.recv_json(&mut p)), 5);
    h.quiet(&mut p);
    assert_eq!(asked(&interests), vec![]);
}

fn first_topic_push(seq: u64) -> Remote {
    // A topic's first push names the epoch it starts.
    let frame = crate::messages::PushFields {
        seq: Some(seq),
        topic: Some("room.1"),
        id: None,
        from: None,
        epoch: (seq == 1).then_some(OTHER),
    };
    Remote::TopicPush {
        topic: "room.1".into(),
        seq,
        epoch: OTHER.into(),
        frame: crate::messages::push_frame_with(&seq.to_string(), 0, &frame),
        compressed: Arc::default(),
        accepted_at: Instant::now(),
    }
}

#[test]
fn a_topic_loaded_before_its_first_push_takes_the_epoch_it_names_without_a_restart() {
    // Redis holds nothing for a topic never pushed to: it loads as the placeholder at 0.
    let no_epoch = crate::api::sequencer::NO_EPOCH;
    let (mut h, interests, tx) = Harness::cluster(&["--public-topics", "room.*"]);
    let mut p = member(&mut h, &tx, "ka", bare_state(0, no_epoch));
    asked(&interests);
    tx.send(first_topic_push(1)).unwrap();
    let m = h.recv_json(&mut p);
    assert_eq!((seq_of(&m), m["epoch"].as_str()), (1, Some(OTHER)), "{m}");
    tx.send(first_topic_push(2)).unwrap();
    assert_eq!(seq_of(&h.recv_json(&mut p)), 2);
    h.quiet(&mut p);
    assert_eq!(asked(&interests), vec![], "no new epoch asked for");
    // A later member resumes in that epoch.
    let mut q = online(&mut h, &tx, "lu", fresh_state());
    q.send_json(json!({"type": "subscribe", "topic": "room.1", "since": 1, "epoch": OTHER}));
    let s = h.recv_json(&mut q);
    assert_eq!(
        (s["resumed"].as_bool(), s["seq"].as_u64()),
        (Some(true), Some(2)),
        "{s}"
    );
    assert_eq!(seq_of(&h.recv_json(&mut q)), 2);
}

#[test]
fn members_at_the_placeholder_get_the_first_pushes_a_reload_finds() {
    // The broker reconnected after the topic's first pushes: they come from the reload.
    let no_epoch = crate::api::sequencer::NO_EPOCH;
    let (mut h, interests, tx) = Harness::cluster(&["--public-topics", "room.*"]);
    let mut p = member(&mut h, &tx, "mo", bare_state(0, no_epoch));
    asked(&interests);
    tx.send(Remote::TopicLoaded {
        topic: "room.1".into(),
        state: Ok(state(2, OTHER, 1..=2, Some("room.1"))),
    })
    .unwrap();
    assert_eq!(seq_of(&h.recv_json(&mut p)), 1);
    assert_eq!(seq_of(&h.recv_json(&mut p)), 2);
    h.quiet(&mut p);
}

#[test]
fn a_first_session_resuming_past_what_redis_holds_in_its_epoch_asks_for_a_new_epoch() {
    // No node served the user when Redis went back; its client had seq 5 from Redis.
    let (mut h, interests, tx) = Harness::cluster(&[]);
    let resume = Resume {
        since: 5,
        epoch: EPOCH.into(),
    };
    let mut p = parked(&mut h, "na", Some(resume));
    asked(&interests);
    tx.send(loaded("na", Ok(state(3, EPOCH, 1..=3, None))))
        .unwrap();
    h.quiet(&mut p);
    let user = crate::broker::RewindOf::User("na".into());
    assert_eq!(asked(&interests), vec![rewound(user, EPOCH, 5)]);
    tx.send(loaded("na", Ok(bare_state(5, OTHER)))).unwrap();
    let w = h.recv_json(&mut p);
    assert_eq!(
        (
            w["resumed"].as_bool(),
            w["seq"].as_u64(),
            w["epoch"].as_str()
        ),
        (Some(false), Some(5), Some(OTHER)),
        "{w}"
    );
    // A resume from within what Redis holds asks for nothing.
    let resume = Resume {
        since: 4,
        epoch: OTHER.into(),
    };
    let mut q = parked(&mut h, "ob", Some(resume));
    asked(&interests);
    tx.send(loaded("ob", Ok(state(5, OTHER, 1..=5, None))))
        .unwrap();
    assert_eq!(h.recv_json(&mut q)["resumed"], true);
    assert_eq!(seq_of(&h.recv_json(&mut q)), 5);
    assert_eq!(asked(&interests), vec![]);
}
