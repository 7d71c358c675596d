//! The producer marks in the scripts themselves, on a real `redis-server` (Debian's
//! package) started on a free loopback port for each test (`tests/common`'s).

use redis::Value;

use super::{stream_source, Sending, MARKS_KEPT};

// The integration tests' redis-server, started and stopped by PID the same way.
#[path = "../../../tests/common/redis_server.rs"]
#[allow(unreachable_pub)]
mod redis_server;

/// A redis-server of this test, and a connection to it.
struct Redis {
    conn: redis::Connection,
    _server: redis_server::RedisServer,
}

impl Redis {
    fn start() -> Redis {
        let server = redis_server::RedisServer::start();
        Redis {
            conn: server.conn(),
            _server: server,
        }
    }

    /// The stream script for user `u`'s stream with mark (`run`, `n`, `prev`) and `id`.
    fn push(&mut self, u: &str, run: &str, n: u64, prev: u64, id: Option<&str>) -> Reply {
        let meta = format!("throng:{{u:{u}}}");
        let dedup = id.map_or_else(|| meta.clone(), |i| format!("{meta}:id:{i}"));
        let v = redis::Script::new(&stream_source())
            .key(&meta)
            .key(format!("{meta}:h"))
            .key(dedup)
            .arg("e")
            .arg("{}")
            .arg(10)
            .arg(60_000)
            .arg(if id.is_some() { 60_000 } else { 0 })
            .arg(format!("throng:u:{u}"))
            .arg(1)
            .arg(86_400_000)
            .arg(run)
            .arg(n)
            .arg(prev)
            .invoke(&mut self.conn);
        Reply::of(v)
    }

    fn seq(&mut self, u: &str) -> u64 {
        redis::cmd("HGET")
            .arg(format!("throng:{{u:{u}}}"))
            .arg("seq")
            .query::<Option<u64>>(&mut self.conn)
            .expect("HGET")
            .unwrap_or(0)
    }

    /// The runs whose marks the hash `key` keeps, oldest first, with their `n`.
    fn marks(&mut self, key: &str) -> Vec<(String, u64)> {
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(key)
            .query(&mut self.conn)
            .expect("HGETALL");
        fields
            .into_iter()
            .filter(|(f, _)| f.len() == 16)
            .filter_map(|(f, v)| Some((f, v.parse().ok()?)))
            .collect()
    }
}

/// What a script answered, in short.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Numbered: its `seq`.
    Applied(i64),
    /// Its `id` was there (-1).
    Duplicate,
    /// Its mark was there (-2).
    Taken,
    /// Refused: behind a push not taken.
    Behind,
    Other(String),
}

impl Reply {
    fn of(v: redis::RedisResult<Value>) -> Reply {
        let v = match v {
            Ok(v) => v,
            Err(e) if e.code() == Some("BEHIND") => return Reply::Behind,
            Err(e) => return Reply::Other(e.to_string()),
        };
        match v {
            Value::Int(n) => Reply::Applied(n),
            Value::Array(parts) => match parts.first() {
                Some(Value::Int(-1)) => Reply::Duplicate,
                Some(Value::Int(-2)) => Reply::Taken,
                Some(Value::Int(seq)) => Reply::Applied(*seq),
                other => Reply::Other(format!("{other:?}")),
            },
            other => Reply::Other(format!("{other:?}")),
        }
    }
}

const RUN: &str = "00000000000000aa";

#[test]
fn a_push_sent_again_is_taken_and_one_behind_a_gap_is_refused() {
    let mut r = Redis::start();
    assert_eq!(r.push("s", RUN, 1, 0, None), Reply::Applied(1));
    // Its predecessor in the round trip (2) never ran: refused, not numbered.
    assert_eq!(r.push("s", RUN, 3, 2, None), Reply::Behind);
    assert_eq!(r.seq("s"), 1);
    // The round trip sent again: 1 is there, 2 and 3 go on, in order.
    assert_eq!(r.push("s", RUN, 1, 0, None), Reply::Taken);
    assert_eq!(r.push("s", RUN, 2, 1, None), Reply::Applied(2));
    assert_eq!(r.push("s", RUN, 3, 2, None), Reply::Applied(3));
    // And again: every one is there.
    for (n, prev) in [(1, 0), (2, 1), (3, 2)] {
        assert_eq!(r.push("s", RUN, n, prev, None), Reply::Taken);
    }
    assert_eq!(r.seq("s"), 3);
    // Another stream knows nothing of these marks; an unmarked push is never held.
    assert_eq!(r.push("t", RUN, 2, 0, None), Reply::Applied(1));
    assert_eq!(r.push("s", "", 0, 0, None), Reply::Applied(4));
    assert_eq!(r.push("s", "", 0, 0, None), Reply::Applied(5));
}

#[test]
fn a_duplicate_id_still_counts_as_taken_for_the_push_behind_it() {
    let mut r = Redis::start();
    assert_eq!(r.push("s", RUN, 1, 0, Some("x")), Reply::Applied(1));
    assert_eq!(r.push("s", RUN, 2, 1, Some("x")), Reply::Duplicate);
    assert_eq!(r.push("s", RUN, 3, 2, None), Reply::Applied(2));
    assert_eq!(r.push("s", RUN, 2, 1, Some("x")), Reply::Taken);
}

#[test]
fn a_stream_keeps_the_last_marks_of_its_latest_runs() {
    let mut r = Redis::start();
    let runs: Vec<String> = (0..=MARKS_KEPT).map(|i| format!("{i:016x}")).collect();
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(
            r.push("s", run, 7, 0, None),
            Reply::Applied(i as i64 + 1),
            "{run}"
        );
    }
    let kept: Vec<String> = r
        .marks("throng:{u:s}")
        .into_iter()
        .map(|(run, _)| run)
        .collect();
    assert_eq!(kept, runs[1..], "the oldest run makes way");
    // Pushed out, that run's push sent again is numbered again (the one case of a
    // repeat, as without marks); the others are known.
    for run in &runs[1..] {
        assert_eq!(r.push("s", run, 7, 0, None), Reply::Taken, "{run}");
    }
    let next = MARKS_KEPT as i64 + 2;
    assert_eq!(r.push("s", &runs[0], 7, 0, None), Reply::Applied(next));
    // A later mark of a known run takes its place: no new field, nobody pushed out.
    assert_eq!(r.push("s", &runs[0], 8, 7, None), Reply::Applied(next + 1));
    let marks = r.marks("throng:{u:s}");
    assert_eq!(marks.len(), MARKS_KEPT, "{marks:?}");
    assert_eq!(marks.last(), Some(&(runs[0].clone(), 8)), "{marks:?}");
    assert_eq!(marks[0].0, runs[2], "{marks:?}");
}

/// Fills user `u`'s hash with the marks of `MARKS_KEPT` runs; their names.
fn full_of_runs(r: &mut Redis, u: &str) -> Vec<String> {
    let runs: Vec<String> = (0..MARKS_KEPT).map(|i| format!("{i:016x}")).collect();
    for run in &runs {
        assert!(matches!(r.push(u, run, 5, 0, None), Reply::Applied(_)));
    }
    runs
}

#[test]
fn a_push_refused_behind_another_pushes_no_mark_out() {
    let mut r = Redis::start();
    let runs = full_of_runs(&mut r, "s");
    assert_eq!(r.push("s", RUN, 6, 5, None), Reply::Behind);
    let kept: Vec<String> = r
        .marks("throng:{u:s}")
        .into_iter()
        .map(|(run, _)| run)
        .collect();
    assert_eq!(kept, runs);
}

#[test]
fn out_of_memory_refuses_a_new_run_on_a_full_hash_and_still_answers_a_taken_push() {
    let mut r = Redis::start();
    let runs = full_of_runs(&mut r, "s");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut r.conn)
        .expect("CONFIG SET");
    // Its first write would push a mark out: refused before anything changed.
    match r.push("s", RUN, 1, 0, None) {
        Reply::Other(e) => assert!(e.contains("OOM"), "{e}"),
        other => panic!("applied under OOM: {other:?}"),
    }
    assert_eq!(r.seq("s"), MARKS_KEPT as u64);
    assert_eq!(r.marks("throng:{u:s}").len(), MARKS_KEPT);
    // Reads only: a push sent again is still found taken.
    assert_eq!(r.push("s", &runs[0], 5, 0, None), Reply::Taken);
}

/// A sequencer of run `RUN` on `r`'s Redis, its script loaded.
fn sequencer(r: &mut Redis) -> super::Sequencer {
    let mut seq = super::Sequencer::new(
        super::Retention {
            history_size: 10,
            user_ms: 60_000,
            topic_ms: 60_000,
            dedup_ms: 60_000,
        },
        crate::broker::keys::Channels::for_db(0),
    );
    seq.run = RUN.to_string();
    seq.load(&mut r.conn).expect("SCRIPT LOAD");
    seq
}

fn user_push(u: &str, data: &str) -> crate::api::ParsedPush {
    crate::api::ParsedPush {
        target: crate::api::Target::User(u.into()),
        data: format!("\"{data}\""),
        id: None,
        from: None,
    }
}

/// A refusal of `error` on stream `s`, nothing reached.
fn refusal(s: &str, error: &str) -> (super::Published, Option<super::Refused>) {
    (
        Err(super::PublishError::NotPublished(error.into())),
        Some(super::Refused {
            reached: Vec::new(),
            errors: vec![(s.into(), error.into())],
        }),
    )
}

#[test]
fn the_rerun_after_noscript_keeps_each_push_behind_the_one_before_it() {
    let mut r = Redis::start();
    let seq = sequencer(&mut r);
    let (p4, p5, p6) = (
        user_push("s", "4"),
        user_push("s", "5"),
        user_push("s", "6"),
    );
    let round = [
        Sending {
            push: &p4,
            mark: Some(4),
        },
        Sending {
            push: &p5,
            mark: Some(5),
        },
        Sending {
            push: &p6,
            mark: Some(6),
        },
    ];
    // The first run as Redis answered it: 4 numbered, 5 refused for lack of memory, 6
    // stopped by NOSCRIPT (the script cache went in between).
    let mut first = seq
        .publish_between(&mut r.conn, redis::pipe(), &round[..1], None)
        .expect("a round trip");
    for (published, refused) in [
        refusal("s", "OOM command not allowed"),
        refusal("s", "NOSCRIPT No matching script"),
    ] {
        first.published.push(published);
        first.refused.push(refused);
    }
    // The rerun: 6 only, still behind 5, which Redis never took.
    seq.rerun(&mut r.conn, &round, &mut first)
        .expect("a round trip");
    match &first.published[2] {
        Err(super::PublishError::NotPublished(e)) => assert!(e.starts_with("BEHIND"), "{e}"),
        other => panic!("applied past a push Redis did not take: {other:?}"),
    }
    assert!(first.refused[2].as_ref().is_some_and(|r| r.has("BEHIND")));
    assert!(first.refused[1].as_ref().is_some_and(|r| r.has("OOM")));
    assert!(first.published[0].is_ok());
    assert_eq!(r.seq("s"), 1);
    // The whole round trip again: 4 is taken, 5 and 6 go in, in order.
    let again = seq
        .publish_between(&mut r.conn, redis::pipe(), &round, None)
        .expect("a round trip");
    let results = &again.published;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(r.seq("s"), 3);
}

#[test]
fn a_rerun_with_nothing_left_to_send_is_no_round_trip() {
    let mut r = Redis::start();
    let seq = sequencer(&mut r);
    let p = user_push("s", "1");
    let round = [Sending {
        push: &p,
        mark: Some(1),
    }];
    let mut first = seq
        .publish_between(&mut r.conn, redis::pipe(), &[], None)
        .expect("nothing to send");
    // Stopped after it reached its only stream: nothing is left for the rerun.
    first
        .published
        .push(Err(super::PublishError::NotPublished("NOSCRIPT".into())));
    first.refused.push(Some(super::Refused {
        reached: vec![super::Outcome::Duplicate { stream: "s".into() }],
        errors: vec![("s".into(), "NOSCRIPT No matching script".into())],
    }));
    seq.rerun(&mut r.conn, &round, &mut first)
        .expect("no round trip");
    assert!(first.published[0].is_ok(), "{:?}", first.published[0]);
}
