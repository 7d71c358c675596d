//! Cluster faults with real processes (issue 10, item 6; docs/protocol.md 5): `throng`
//! nodes run as child processes of the test and `redis-server`s as well, so a node can be
//! killed with SIGKILL, stopped with SIGTERM and started again, Redis can crash and come
//! back from its append-only file, and a node can be cut off from Redis (a TCP relay in
//! the test between the node and Redis). Clients are real WebSocket clients over loopback.
//!
//! What each test proves: clients of a dead or restarted node resume on another node (or
//! its replacement) and get every push exactly once, in order; stream entries a dead
//! consumer left pending are claimed; a node without Redis keeps its clients, refuses
//! pushes with 503 `broker_unavailable` and is not ready, then reconnects by itself and
//! gives its sessions what they missed from Redis history; the stream ingress stops
//! reading while the shards are full and loses nothing.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_throng");
/// Deadline for what waits on a reconnect to Redis (the broker backs off up to 2 s).
const RECONNECT_WAIT: Duration = Duration::from_secs(15);
/// The epoch a topic shows before its first push.
const NO_EPOCH: &str = "0000000000000000";

// ---------------------------------------------------------------------------------------
// A node: a `throng serve` child process

/// A `throng serve` process in cluster mode (SIGKILL when dropped).
struct Node(ServerProcess);

impl std::ops::Deref for Node {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.0
    }
}

impl Node {
    /// Starts `throng serve --redis <redis> ...` with the test flags plus `extra` (which
    /// may give `--listen`/`--api-listen` to reuse an address) and waits for its
    /// `listening` line.
    fn start(redis: &str, extra: &[&str]) -> Node {
        let mut args = vec!["--redis", redis];
        args.extend_from_slice(extra);
        Node(ServerProcess::start(&args))
    }

    /// Waits until `/readyz` answers `status`.
    fn wait_ready_status(&self, status: u16) {
        let ok = wait_until(RECONNECT_WAIT, || self.readyz() == status);
        assert!(
            ok,
            "readyz never answered {status}: {}\nnode output:\n{}",
            self.api("GET", "/readyz", None).text(),
            self.output()
        );
    }

    /// Waits until it is ready (its publisher reached Redis).
    fn ready(self) -> Node {
        self.wait_ready_status(200);
        self
    }

    /// Waits until it serves `n` streams (users and topics: subscribed and loaded).
    fn wait_streams(&self, n: u64) {
        self.wait_stats(&format!("{n} streams served"), WAIT, |s| {
            s["cluster"]["broker_streams"].as_u64() == Some(n)
        });
    }

    /// `POST /v1/push?wait=1`; asserts 200 and returns the body (`seq`, `epoch`).
    fn push_wait(&self, push: Value) -> Value {
        let r = self.api("POST", "/v1/push?wait=1", Some(&push.to_string()));
        assert_eq!(r.status, 200, "push?wait=1 {push}: {}", r.text());
        r.json()
    }

    /// Cuts every link it has to `redis` (`CLIENT KILL`), as a failover or a network
    /// fault does.
    fn cut_links_to(&self, redis: &RedisServer) {
        let links = self.ports_to(redis.port);
        assert!(!links.is_empty(), "no Redis links\n{}", self.output());
        let mut r = redis.conn();
        for port in links {
            // A link gone already (a reconnect of its own) is no error here.
            let _: redis::RedisResult<u64> = redis::cmd("CLIENT")
                .arg(&[
                    "KILL",
                    "ADDR",
                    &format!("127.0.0.1:{port}"),
                    "SKIPME",
                    "yes",
                ])
                .query(&mut r);
        }
    }

    /// Connects `user` with `?since=&epoch=`.
    fn resume(&self, user: &str, since: u64, epoch: &str) -> Client {
        Client::connect_with(
            self.ws,
            &format!("/ws?since={since}&epoch={epoch}"),
            &[("Authorization", &format!("Bearer {}", token(user)))],
        )
        .unwrap_or_else(|e| panic!("resume {user}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------
// Clients

fn epoch_of(v: &Value) -> String {
    v["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch in {v}"))
        .to_string()
}

/// Subscribes to `topic` (resuming when `resume` is given) and returns the `subscribed`.
fn subscribe(c: &mut Client, topic: &str, resume: Option<(u64, &str)>) -> Value {
    let mut m = json!({"type": "subscribe", "topic": topic});
    if let Some((since, epoch)) = resume {
        m["since"] = since.into();
        m["epoch"] = epoch.into();
    }
    c.send(m);
    let s = c.recv();
    assert_eq!(s["type"], "subscribed", "{s}");
    s
}

/// Upgrades as `user` and reads until the server closes, expecting no `welcome` first.
fn upgrade_then_close(ws: SocketAddr, user: &str) -> Closed {
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{ws}/ws"))
            .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", token(user)).parse().unwrap(),
    );
    let (ws, _) = tungstenite::client(req, tcp(ws)).expect("upgrade");
    let mut c = Client {
        ws,
        welcome: Value::Null,
    };
    match c.try_recv(IO_TIMEOUT) {
        Err(closed) => closed,
        Ok(m) => panic!("expected a close, got {m:?}"),
    }
}

/// One client's view of one stream: the `seq` it has, checked push by push.
struct Seen {
    /// `None` for the user's own stream, or the topic.
    topic: Option<&'static str>,
    last: u64,
    /// The epoch a push named (a topic's first push names the epoch it starts).
    epoch: Option<String>,
}

impl Seen {
    fn user() -> Seen {
        Seen {
            topic: None,
            last: 0,
            epoch: None,
        }
    }

    fn topic(t: &'static str) -> Seen {
        Seen {
            topic: Some(t),
            last: 0,
            epoch: None,
        }
    }

    /// Checks one message: a push of this stream with the next `seq` (never a repeat, never
    /// a gap) whose data is that `seq`.
    fn check(&mut self, m: &Value) {
        assert_eq!(m["type"], "push", "expected a push, got {m}");
        assert_eq!(
            m["topic"].as_str(),
            self.topic,
            "push of another stream: {m}"
        );
        let seq = m["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {m}"));
        assert_eq!(seq, self.last + 1, "out of order or repeated: {m}");
        assert_eq!(m["data"]["n"], seq, "data does not match its seq: {m}");
        self.last = seq;
        if let Some(e) = m["epoch"].as_str() {
            self.epoch = Some(e.to_string());
        }
    }

    /// The epoch the stream's first push named.
    fn epoch(&self) -> String {
        self.epoch
            .clone()
            .unwrap_or_else(|| panic!("no push of {:?} named its epoch", self.topic))
    }

    /// Reads pushes until this stream reached `seq`.
    fn read_to(&mut self, c: &mut Client, seq: u64) {
        while self.last < seq {
            let m = c.recv();
            self.check(&m);
        }
    }

    /// Reads pushes until the connection ends (a drain's `reconnect` hint is let by);
    /// returns how it ended.
    fn read_to_close(&mut self, c: &mut Client) -> Closed {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match c.try_recv(Duration::from_millis(500)) {
                Ok(Some(m)) if m["type"] == "reconnect" => {}
                Ok(Some(m)) => self.check(&m),
                Ok(None) => {}
                Err(closed) => return closed,
            }
            assert!(
                Instant::now() < deadline,
                "connection still open {IO_TIMEOUT:?} after its node went"
            );
        }
    }
}

/// Pushes through one node's API, alternating a user push and a topic push, each
/// `?wait=1` with `data.n` = the `seq` it is expected to get, until told to stop.
struct Pusher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, u64)>,
}

impl Pusher {
    fn start(api: SocketAddr, user: &'static str, topic: &'static str) -> Pusher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut conn = HttpConn::connect(api);
            let (mut u, mut t) = (0u64, 0u64);
            let deadline = Instant::now() + Duration::from_secs(30);
            // Bounded: a test that forgets to stop it still ends.
            while !flag.load(Relaxed) && u < 2000 && Instant::now() < deadline {
                for (target, n) in [("user", &mut u), ("topic", &mut t)] {
                    *n += 1;
                    let name = if target == "user" { user } else { topic };
                    let body = json!({target: name, "data": {"n": *n}}).to_string();
                    let r = conn.request("POST", "/v1/push?wait=1", Some(API_KEY), Some(&body));
                    assert_eq!(r.status, 200, "push {body}: {}", r.text());
                    assert_eq!(r.json()["seq"], *n, "numbered by Redis in order: {body}");
                }
                // Paced, so a push is in flight whenever the test acts.
                std::thread::sleep(Duration::from_millis(2));
            }
            (u, t)
        });
        Pusher { stop, thread }
    }

    /// Stops it; returns the last user and topic `seq` it pushed.
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Relaxed);
        self.thread.join().expect("pusher thread")
    }
}

// ---------------------------------------------------------------------------------------
// Tests

/// The flags of every node in these tests: topics open to all, history long enough for
/// what a test pushes while a client is away.
fn node_flags(id: &str) -> Vec<&str> {
    vec![
        "--node-id",
        id,
        "--public-topics",
        "room.*",
        "--history-size",
        "5000",
    ]
}

/// On one node, a user's session and a member of `room.1`, with their streams loaded and
/// the epoch the `welcome` gave (the topic's is named by its first push).
struct Pair {
    user: Client,
    member: Client,
    user_epoch: String,
}

impl Pair {
    /// Connects `user` and `member` (who subscribes to `room.1`) to `node`.
    fn on(node: &Node, user: &str, member: &str) -> Pair {
        let user = node.connect(user);
        let user_epoch = epoch_of(&user.welcome);
        let mut member = node.connect(member);
        let s = subscribe(&mut member, "room.1", None);
        assert_eq!(
            (s["seq"].as_u64(), s["epoch"].as_str()),
            (Some(0), Some(NO_EPOCH))
        );
        node.wait_streams(3);
        Pair {
            user,
            member,
            user_epoch,
        }
    }
}

/// Two nodes on one Redis. On A, a user's session and a member of `room.1`, their
/// streams loaded; pushes to both go through B, and each client has read the first few.
struct TwoNodes {
    /// Kept for the nodes' lifetime.
    _redis: RedisServer,
    url: String,
    a: Node,
    b: Node,
    /// The user's client and the member's, both on A.
    clients: (Client, Client),
    streams: Streams,
    pusher: Pusher,
}

impl TwoNodes {
    /// Starts it all for `user` and `member`, each client having read `first` pushes.
    fn pushing(user: &'static str, member: &str, first: u64) -> TwoNodes {
        let redis = RedisServer::start();
        let url = redis.url();
        let a = Node::start(&url, &node_flags("a")).ready();
        let b = Node::start(&url, &node_flags("b")).ready();
        let Pair {
            user: mut u_client,
            member: mut m_client,
            user_epoch,
        } = Pair::on(&a, user, member);
        let (mut u, mut t) = (Seen::user(), Seen::topic("room.1"));
        let pusher = Pusher::start(b.api, user, "room.1");
        u.read_to(&mut u_client, first);
        t.read_to(&mut m_client, first);
        TwoNodes {
            _redis: redis,
            url,
            a,
            b,
            clients: (u_client, m_client),
            streams: Streams {
                user: u,
                user_epoch,
                topic: t,
            },
            pusher,
        }
    }

    /// Reads what reached both clients before their node went away, in order, up to
    /// how their sockets ended.
    fn read_to_close(&mut self) -> (Closed, Closed) {
        let (u_client, m_client) = &mut self.clients;
        (
            self.streams.user.read_to_close(u_client),
            self.streams.topic.read_to_close(m_client),
        )
    }
}

/// A user stream and the `room.1` topic stream as two clients saw them, with the epochs
/// their sessions had.
struct Streams {
    user: Seen,
    user_epoch: String,
    topic: Seen,
}

impl Streams {
    /// Reconnects both clients to `node` (the user's session resuming, the other
    /// resubscribing with `since`), then checks that every push `pusher` made arrives
    /// exactly once and in order, and nothing after.
    fn resume_on(self, node: &Node, (user, member): (&str, &str), pusher: Pusher) {
        let (mut u, mut t) = (self.user, self.topic);
        let mut a = node.resume(user, u.last, &self.user_epoch);
        assert_eq!(a.welcome["resumed"], true, "{}", a.welcome);
        let mut b = node.connect(member);
        let s = subscribe(&mut b, "room.1", Some((t.last, &t.epoch())));
        assert_eq!(s["resumed"], true, "{s}");
        u.read_to(&mut a, u.last + 5);
        t.read_to(&mut b, t.last + 5);
        let (pushed_u, pushed_t) = pusher.finish();
        u.read_to(&mut a, pushed_u);
        t.read_to(&mut b, pushed_t);
        a.expect_silence(Duration::from_millis(150));
        b.expect_silence(Duration::from_millis(50));
    }
}

#[test]
fn killed_node_clients_resume_on_another_node_missing_nothing() {
    let mut n = TwoNodes::pushing("alice", "bob", 5);
    n.a.kill9();
    // What reached them before the crash, in order; then the socket ends.
    assert_eq!(n.read_to_close(), (Closed::Eof, Closed::Eof));
    // Pushes go on through B all along; the clients come back there.
    n.streams.resume_on(&n.b, ("alice", "bob"), n.pusher);
}

#[test]
fn entries_a_dead_consumer_left_pending_are_claimed_and_delivered() {
    let redis = RedisServer::start();
    let node = Node::start(
        &redis.url(),
        &["--node-id", "live", "--claim-idle-ms", "300"],
    )
    .ready();
    let mut c = node.connect("gina");
    node.wait_streams(1);
    let mut r = redis.conn();
    // A consumer that reads and dies before acknowledging: added and read in one
    // transaction, so the live node's reads cannot take them first.
    let mut tx = redis::pipe();
    tx.atomic();
    for n in 1..=3 {
        tx.cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(json!({"user": "gina", "data": {"n": n}}).to_string())
            .ignore();
    }
    tx.cmd("XREADGROUP")
        .arg("GROUP")
        .arg("throng")
        .arg("dead-node")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("throng:push")
        .arg(">");
    let (read,): (redis::Value,) = tx.query(&mut r).unwrap();
    let dead_pending = || -> u64 {
        let v: Vec<(String, u64)> = redis::cmd("XPENDING")
            .arg("throng:push")
            .arg("throng")
            .query::<redis::Value>(&mut redis.conn())
            .ok()
            .and_then(|v| match v {
                redis::Value::Array(parts) => parts.into_iter().nth(3),
                _ => None,
            })
            .map(|consumers| redis::from_redis_value(consumers).unwrap_or_default())
            .unwrap_or_default();
        v.iter()
            .find(|(name, _)| name == "dead-node")
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(dead_pending(), 3, "the dead consumer holds them: {read:?}");
    let mut seen = Seen::user();
    seen.read_to(&mut c, 3);
    node.wait_stats("3 claimed entries", WAIT, |s| {
        s["cluster"]["stream_claimed"] == 3
    });
    // Published, then acknowledged: nothing pending in the group.
    let total = || -> i64 {
        let v: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg("throng:push")
            .arg("throng")
            .query(&mut redis.conn())
            .unwrap();
        redis::from_redis_value(v[0].clone()).unwrap()
    };
    assert!(
        wait_until(WAIT, || total() == 0),
        "still pending: {}",
        total()
    );
    assert_eq!(dead_pending(), 0);
    c.expect_silence(Duration::from_millis(100));
}

/// Pushes `n` to `user` and to topic `room.1` through `node`; asserts both got `seq` n.
fn push_both(node: &Node, user: &str, n: u64) {
    for target in [json!({"user": user}), json!({"topic": "room.1"})] {
        let mut p = target;
        p["data"] = json!({"n": n});
        let r = node.push_wait(p.clone());
        assert_eq!(r["seq"], n, "{p}: {r}");
    }
}

/// Like `push_both`, as an upstream does it around a Redis restart.
fn push_both_retrying(node: &Node, user: &str, n: u64) {
    push_one_retrying(node, json!({ "user": user }), n);
    push_one_retrying(node, json!({"topic": "room.1"}), n);
}

/// Pushes `target` with `data.n` = `n` through `node` and asserts it got `seq` n, as an
/// upstream does it around a Redis restart: the push has an `id` and is sent again while
/// the node answers 503 `broker_unavailable` (a node whose link died while it was idle
/// learns it only when a push fails on it); the `id` makes a retry harmless.
fn push_one_retrying(node: &Node, mut target: Value, n: u64) {
    target["data"] = json!({ "n": n });
    target["id"] = format!("retry-{n}").into();
    let body = target.to_string();
    let deadline = Instant::now() + RECONNECT_WAIT;
    let r = loop {
        let r = node.api("POST", "/v1/push?wait=1", Some(&body));
        if r.status != 503 || Instant::now() > deadline {
            break r;
        }
        r.assert_error(503, "broker_unavailable");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(r.status, 200, "{body}: {}", r.text());
    assert_eq!(r.json()["seq"], n, "{body}: {}", r.text());
}

#[test]
fn redis_down_keeps_clients_refuses_pushes_and_recovers_by_itself() {
    let mut redis = RedisServer::start_persistent();
    let url = redis.url();
    let a = Node::start(&url, &node_flags("a")).ready();
    let b = Node::start(&url, &node_flags("b")).ready();
    let Pair {
        user: mut carol,
        member: mut dan,
        ..
    } = Pair::on(&a, "carol", "dan");
    let (mut u, mut t) = (Seen::user(), Seen::topic("room.1"));
    push_both(&a, "carol", 1);
    u.read_to(&mut carol, 1);
    t.read_to(&mut dan, 1);
    let loads_before = a.stats()["cluster"]["broker_loads"].as_u64().unwrap();

    redis.kill();
    // A push sent before the node notices may still be answered 202: then it is kept and
    // published once Redis is back (carol's seq 2), never lost.
    let early = json!({"user": "carol", "data": {"n": 2}}).to_string();
    let r = a.api("POST", "/v1/push", Some(&early));
    let accepted_early = match r.status {
        202 => true,
        _ => {
            r.assert_error(503, "broker_unavailable");
            false
        }
    };
    a.wait_ready_status(503);
    // Down for as long as both nodes take to notice (B only by its heartbeat).
    b.wait_ready_status(503);
    a.api("GET", "/readyz", None)
        .assert_error(503, "broker_unavailable");
    let body = json!({"user": "carol", "data": {"n": 99}}).to_string();
    a.api("POST", "/v1/push", Some(&body))
        .assert_error(503, "broker_unavailable");
    a.api("POST", "/v1/push?wait=1", Some(&body))
        .assert_error(503, "broker_unavailable");
    // Clients stay connected: the shard answers them without Redis.
    carol.barrier("while-redis-is-down");
    dan.barrier("while-redis-is-down");
    // A user new to the node cannot get its stream now: told to try again later (1013),
    // not left waiting for a `welcome`.
    assert_eq!(upgrade_then_close(a.ws, "eve"), Closed::Code(Some(1013)));

    // Back on the same port from its append-only file: same streams, same epochs.
    redis.restart();
    a.wait_ready_status(200);
    b.wait_ready_status(200);
    // Resubscribed and reloaded by itself (the three streams it serves load again).
    a.wait_stats(
        "subscriber back and streams reloaded",
        RECONNECT_WAIT,
        |s| {
            s["cluster"]["broker_subscriber_up"] == 1
                && s["cluster"]["broker_loads"].as_u64() >= Some(loads_before + 3)
        },
    );
    // Each says it is back (the publisher's second "connected").
    for (back, times) in [
        ("publisher connected to Redis", 2),
        ("subscriber is back", 1),
        ("stream ingress is back", 1),
    ] {
        assert!(
            wait_until(WAIT, || a.logged(back) >= times),
            "{back}: {}",
            a.output()
        );
    }
    if accepted_early {
        u.read_to(&mut carol, 2);
    }
    // A push through another node reaches A's sessions on the channels A subscribed again.
    for node in [&b, &a] {
        push_one_retrying(node, json!({"user": "carol"}), u.last + 1);
        push_one_retrying(node, json!({"topic": "room.1"}), t.last + 1);
        u.read_to(&mut carol, u.last + 1);
        t.read_to(&mut dan, t.last + 1);
    }
    carol.barrier("after");
    dan.barrier("after");
}

/// A TCP relay between a node and Redis that the test can cut (every connection through
/// it reset, new ones closed at once) and heal: one node loses Redis while others keep it.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (o, s, cs) = (Arc::clone(&open), Arc::clone(&stop), Arc::clone(&conns));
        std::thread::spawn(move || {
            while !s.load(Relaxed) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if !o.load(Relaxed) {
                    continue; // Cut: closed at once.
                }
                let Ok(up) = TcpStream::connect(target) else {
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let mut list = cs.lock().unwrap();
                list.push(down.try_clone().unwrap());
                list.push(up.try_clone().unwrap());
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            port,
            open,
            stop,
            conns,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Ends every connection through it and refuses new ones until `heal`.
    fn cut(&self) {
        self.open.store(false, Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.open.store(true, Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        self.cut();
    }
}

#[test]
fn node_cut_off_from_redis_delivers_what_it_missed_from_history_after_reconnecting() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.addr());
    let a = Node::start(&relay.url(), &node_flags("a")).ready();
    let b = Node::start(&redis.url(), &node_flags("b")).ready();
    let Pair {
        user: mut carol,
        member: mut dan,
        ..
    } = Pair::on(&a, "carol", "dan");
    let (mut u, mut t) = (Seen::user(), Seen::topic("room.1"));
    push_both(&b, "carol", 1);
    u.read_to(&mut carol, 1);
    t.read_to(&mut dan, 1);

    relay.cut();
    a.wait_ready_status(503);
    // Published through B while A cannot hear them: only Redis history has them.
    for n in 2..=4 {
        push_both(&b, "carol", n);
    }
    // And entries added to `throng:push` meanwhile: B's ingress takes them.
    let mut r = redis.conn();
    for target in [json!({"user": "carol"}), json!({"topic": "room.1"})] {
        let mut p = target;
        p["data"] = json!({"n": 5});
        let _: String = redis::cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(p.to_string())
            .query(&mut r)
            .unwrap();
    }
    b.wait_stats("B read both entries", WAIT, |s| {
        s["cluster"]["stream_read"] == 2
    });
    carol.barrier("cut");
    dan.barrier("cut");
    assert_eq!(
        (u.last, t.last),
        (1, 1),
        "nothing can reach A while cut off"
    );

    relay.heal();
    a.wait_ready_status(200);
    // The reload after the reconnect hands the sessions what they missed, in order, once.
    u.read_to(&mut carol, 5);
    t.read_to(&mut dan, 5);
    push_both(&b, "carol", 6);
    u.read_to(&mut carol, 6);
    t.read_to(&mut dan, 6);
    carol.expect_silence(Duration::from_millis(150));
    dan.expect_silence(Duration::from_millis(50));
}

#[test]
fn restarted_node_clients_resume_on_its_replacement_missing_nothing() {
    let mut n = TwoNodes::pushing("erin", "finn", 3);
    let (ws, api) = (n.a.ws.to_string(), n.a.api.to_string());
    let st = n.a.terminate();
    assert!(
        st.success(),
        "SIGTERM drains and exits 0: {st}\n{}",
        n.a.output()
    );
    // The drain says "going away" (1001) after what was already delivered.
    assert_eq!(
        n.read_to_close(),
        (Closed::Code(Some(1001)), Closed::Code(Some(1001)))
    );
    let mut flags = node_flags("a");
    flags.extend(["--listen", ws.as_str(), "--api-listen", api.as_str()]);
    let a2 = Node::start(&n.url, &flags).ready();
    assert_eq!(a2.ws.to_string(), ws, "the replacement listens where A did");
    n.streams.resume_on(&a2, ("erin", "finn"), n.pusher);
}

#[test]
fn full_shards_pause_the_stream_ingress_and_every_entry_is_delivered_once() {
    const ENTRIES: u64 = 2000;
    let redis = RedisServer::start();
    // One shard whose queue from the broker holds one message: it is full at once.
    let node = Node::start(
        &redis.url(),
        &[
            "--node-id",
            "small",
            "--shards",
            "1",
            "--shard-queue-capacity",
            "1",
            "--history-size",
            "5000",
        ],
    )
    .ready();
    let mut c = node.connect("hana");
    node.wait_streams(1);
    let mut r = redis.conn();
    let mut pipe = redis::pipe();
    for n in 1..=ENTRIES {
        pipe.cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(json!({"user": "hana", "data": {"n": n}}).to_string())
            .ignore();
    }
    pipe.query::<()>(&mut r).unwrap();
    let mut seen = Seen::user();
    seen.read_to(&mut c, ENTRIES);
    c.expect_silence(Duration::from_millis(100));
    let s = node.wait_stats("every entry read", WAIT, |s| {
        s["cluster"]["stream_read"] == ENTRIES
    });
    assert!(
        s["cluster"]["stream_paused"].as_u64() > Some(0),
        "the ingress never paused: {s}"
    );
    assert_eq!(s["cluster"]["stream_dlq"], 0, "{s}");
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("throng:push")
        .arg("throng")
        .query(&mut r)
        .unwrap();
    assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "{pending:?}");
}

#[test]
fn malformed_redis_url_exits_2_naming_redis() {
    for url in [
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:notaport",
        "127.0.0.1:6379",
    ] {
        let out = Command::new(BIN)
            .arg("serve")
            .args(base_args(&["--redis", url]))
            .env_remove("THRONG_JWT_SECRET")
            .env_remove("THRONG_API_KEY")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("redis"), "{url}: {err}");
        assert!(err.contains(url), "the line names the URL: {err}");
    }
}

#[test]
fn redis_back_empty_restarts_streams_and_their_sessions_resume_false() {
    // No persistence: Redis comes back with no stream at all (new epochs, seq 0).
    let mut redis = RedisServer::start();
    let a = Node::start(&redis.url(), &node_flags("a")).ready();
    let Pair {
        user: mut carol,
        member: mut dan,
        user_epoch,
    } = Pair::on(&a, "carol", "dan");
    let (mut u, mut t) = (Seen::user(), Seen::topic("room.1"));
    push_both(&a, "carol", 1);
    u.read_to(&mut carol, 1);
    t.read_to(&mut dan, 1);
    let topic_epoch = t.epoch();

    redis.restart();
    // Numbering restarted under both sessions: neither may take seq 1 of the new epoch
    // for a repeat of the old one, so both are told to reconnect and resume.
    assert_eq!(carol.expect_close(), Closed::Code(Some(1012)));
    assert_eq!(dan.expect_close(), Closed::Code(Some(1012)));
    a.wait_ready_status(200);
    let mut carol = a.resume("carol", 1, &user_epoch);
    assert_eq!(carol.welcome["resumed"], false, "{}", carol.welcome);
    assert_eq!(carol.welcome["seq"], 0, "{}", carol.welcome);
    let mut dan = a.connect("dan");
    let s = subscribe(&mut dan, "room.1", Some((1, &topic_epoch)));
    assert_eq!(s["resumed"], false, "{s}");
    assert_eq!(s["seq"], 0, "{s}");
    assert_ne!(epoch_of(&s), topic_epoch);
    let (mut u, mut t) = (Seen::user(), Seen::topic("room.1"));
    push_both_retrying(&a, "carol", 1);
    u.read_to(&mut carol, 1);
    t.read_to(&mut dan, 1);
}

#[test]
fn streams_lost_in_redis_under_live_sessions_close_them_with_1012() {
    let redis = RedisServer::start();
    let a = Node::start(&redis.url(), &node_flags("a")).ready();
    let b = Node::start(&redis.url(), &node_flags("b")).ready();
    let Pair {
        user: mut carol,
        member: mut dan,
        user_epoch,
    } = Pair::on(&a, "carol", "dan");
    let (mut u, mut t) = (Seen::user(), Seen::topic("room.1"));
    push_both(&b, "carol", 1);
    u.read_to(&mut carol, 1);
    t.read_to(&mut dan, 1);
    let topic_epoch = t.epoch();
    // The streams expire (or an operator flushes them) while Redis stays up: the next
    // push starts a new epoch at seq 1, which a client at seq 1 would drop as a repeat.
    let _: () = redis::cmd("DEL")
        .arg("throng:{u:carol}")
        .arg("throng:{u:carol}:h")
        .arg("throng:{t:room.1}")
        .arg("throng:{t:room.1}:h")
        .query(&mut redis.conn())
        .unwrap();
    push_both(&b, "carol", 1);
    assert_eq!(carol.expect_close(), Closed::Code(Some(1012)));
    assert_eq!(dan.expect_close(), Closed::Code(Some(1012)));
    let mut carol = a.resume("carol", 1, &user_epoch);
    assert_eq!(carol.welcome["resumed"], false, "{}", carol.welcome);
    assert_eq!(carol.welcome["seq"], 1, "{}", carol.welcome);
    let mut dan = a.connect("dan");
    let s = subscribe(&mut dan, "room.1", Some((1, &topic_epoch)));
    assert_eq!(s["resumed"], false, "{s}");
    assert_eq!(s["seq"], 1, "{s}");
    let (mut u, mut t) = (
        Seen {
            topic: None,
            last: 1,
            epoch: None,
        },
        Seen {
            topic: Some("room.1"),
            last: 1,
            epoch: None,
        },
    );
    push_both(&b, "carol", 2);
    u.read_to(&mut carol, 2);
    t.read_to(&mut dan, 2);
}

/// The keys of `carol`'s stream and of `room.1`'s, with their histories.
const STREAM_KEYS: [&str; 4] = [
    "throng:{u:carol}",
    "throng:{u:carol}:h",
    "throng:{t:room.1}",
    "throng:{t:room.1}:h",
];

/// What Redis holds under `STREAM_KEYS` now (`DUMP`), to put back later as a Redis that
/// lost its last writes would have it.
fn snapshot(redis: &RedisServer) -> Vec<Vec<u8>> {
    let mut r = redis.conn();
    STREAM_KEYS
        .iter()
        .map(|k| redis::cmd("DUMP").arg(k).query(&mut r).unwrap())
        .collect()
}

/// Puts the streams back as `snapshot` found them (`RESTORE ... REPLACE`): their `seq`
/// lower in the same epoch, as after a failover to a replica that missed the last writes.
fn go_back(redis: &RedisServer, snapshot: &[Vec<u8>]) {
    let mut r = redis.conn();
    for (k, dump) in STREAM_KEYS.iter().zip(snapshot) {
        let _: () = redis::cmd("RESTORE")
            .arg(k)
            .arg(0)
            .arg(dump)
            .arg("REPLACE")
            .query(&mut r)
            .unwrap();
    }
}

/// Two nodes on one Redis; on A, `carol`'s session and `dan` in `room.1` have read pushes
/// 1 to 3 (made through B), and then Redis went back to 1 on both streams.
struct GoneBack {
    redis: RedisServer,
    a: Node,
    b: Node,
    carol: Client,
    dan: Client,
    /// The user stream's epoch and the topic's before they went back.
    epochs: (String, String),
}

impl GoneBack {
    fn start() -> GoneBack {
        let redis = RedisServer::start();
        let a = Node::start(&redis.url(), &node_flags("a")).ready();
        let b = Node::start(&redis.url(), &node_flags("b")).ready();
        let Pair {
            user: mut carol,
            member: mut dan,
            user_epoch,
        } = Pair::on(&a, "carol", "dan");
        let (mut u, mut t) = (Seen::user(), Seen::topic("room.1"));
        push_both(&b, "carol", 1);
        let at_one = snapshot(&redis);
        push_both(&b, "carol", 2);
        push_both(&b, "carol", 3);
        u.read_to(&mut carol, 3);
        t.read_to(&mut dan, 3);
        let epochs = (user_epoch, t.epoch());
        go_back(&redis, &at_one);
        GoneBack {
            redis,
            a,
            b,
            carol,
            dan,
            epochs,
        }
    }
}

/// After their streams went back in Redis from `seq` 3 and both clients were closed with
/// 1012: they resume on `node` (`resumed:false`, a new epoch, numbering going on from 3)
/// and get the next push as `seq` 4 of that epoch.
fn resume_after_going_back(
    node: &Node,
    pusher: &Node,
    (user_epoch, topic_epoch): (String, String),
) {
    let (user_epoch, topic_epoch) = (user_epoch.as_str(), topic_epoch.as_str());
    let mut carol = node.resume("carol", 3, user_epoch);
    assert_eq!(carol.welcome["resumed"], false, "{}", carol.welcome);
    assert_eq!(carol.welcome["seq"], 3, "{}", carol.welcome);
    assert_ne!(epoch_of(&carol.welcome), user_epoch);
    let mut dan = node.connect("dan");
    let s = subscribe(&mut dan, "room.1", Some((3, topic_epoch)));
    assert_eq!(s["resumed"], false, "{s}");
    assert_eq!(s["seq"], 3, "{s}");
    assert_ne!(epoch_of(&s), topic_epoch);
    let (mut u, mut t) = (
        Seen {
            topic: None,
            last: 3,
            epoch: None,
        },
        Seen {
            topic: Some("room.1"),
            last: 3,
            epoch: None,
        },
    );
    push_both(pusher, "carol", 4);
    u.read_to(&mut carol, 4);
    t.read_to(&mut dan, 4);
    // This node gave both streams their new epoch.
    assert_eq!(node.stats()["cluster"]["broker_rewound_streams"], 2);
}

#[test]
fn pushes_numbered_again_after_redis_went_back_start_their_sessions_again() {
    // Redis loses its last two writes of each stream (a failover to a replica behind) and
    // numbers the next pushes 2 again: before, a session at 3 took them for repeats and
    // never saw them.
    let GoneBack {
        redis: _redis,
        a,
        b,
        mut carol,
        mut dan,
        epochs,
    } = GoneBack::start();
    for target in [json!({"user": "carol"}), json!({"topic": "room.1"})] {
        let mut p = target;
        p["data"] = json!({"n": "again"});
        assert_eq!(b.push_wait(p)["seq"], 2, "numbered again");
    }
    assert_eq!(carol.expect_close(), Closed::Code(Some(1012)));
    assert_eq!(dan.expect_close(), Closed::Code(Some(1012)));
    resume_after_going_back(&a, &b, epochs);
}

#[test]
fn a_node_that_reloads_streams_redis_took_back_starts_their_sessions_again() {
    // The same loss found by a reload: the node's links to Redis are cut (as a failover
    // does) and it finds both streams at 1 where it had 3.
    let GoneBack {
        redis,
        a,
        b,
        mut carol,
        mut dan,
        epochs,
    } = GoneBack::start();
    a.cut_links_to(&redis);
    assert_eq!(carol.expect_close(), Closed::Code(Some(1012)));
    assert_eq!(dan.expect_close(), Closed::Code(Some(1012)));
    a.wait_ready_status(200);
    resume_after_going_back(&a, &b, epochs);
}

#[test]
fn a_redis_that_refuses_the_new_epoch_has_the_sessions_start_again_once() {
    // Redis took the streams back and refuses writes (too few replicas): the node cannot
    // give them a new epoch. It says so, starts the sessions again in the old epoch, and
    // does not ask again and again.
    let GoneBack {
        redis,
        a,
        b: _b,
        mut carol,
        mut dan,
        epochs: (user_epoch, _),
    } = GoneBack::start();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "min-replicas-to-write", "1"])
        .query(&mut redis.conn())
        .unwrap();
    a.cut_links_to(&redis);
    assert_eq!(carol.expect_close(), Closed::Code(Some(1012)));
    assert_eq!(dan.expect_close(), Closed::Code(Some(1012)));
    wait_logged(&a, "Redis refused its new epoch");
    let carol = a.resume("carol", 3, &user_epoch);
    assert_eq!(
        (
            carol.welcome["resumed"].as_bool(),
            carol.welcome["seq"].as_u64()
        ),
        (Some(false), Some(1)),
        "{}",
        carol.welcome
    );
    assert_eq!(
        epoch_of(&carol.welcome),
        user_epoch,
        "no new epoch was taken"
    );
    assert_eq!(a.stats()["cluster"]["broker_rewound_streams"], 0);
}

#[test]
fn a_client_back_from_beyond_what_redis_holds_gets_its_stream_a_new_epoch() {
    // Redis went back while no node served the user (its only node died): the first
    // client to come back had seq 3, which Redis no longer has in that epoch. Before, it
    // got `resumed:false` in the same epoch, and a device at 2 that came back after two
    // more pushes (numbered 2 and 3 again) was told `resumed:true` and missed one.
    let redis = RedisServer::start();
    let mut a = Node::start(&redis.url(), &node_flags("a")).ready();
    let b = Node::start(&redis.url(), &node_flags("b")).ready();
    let mut carol = a.connect("carol");
    let user_epoch = epoch_of(&carol.welcome);
    let mut u = Seen::user();
    push_both(&b, "carol", 1);
    let at_one = snapshot(&redis);
    push_both(&b, "carol", 2);
    push_both(&b, "carol", 3);
    u.read_to(&mut carol, 3);
    a.kill9();
    go_back(&redis, &at_one);
    let mut carol = b.resume("carol", 3, &user_epoch);
    assert_eq!(
        (
            carol.welcome["resumed"].as_bool(),
            carol.welcome["seq"].as_u64()
        ),
        (Some(false), Some(3)),
        "{}",
        carol.welcome
    );
    let epoch = epoch_of(&carol.welcome);
    assert_ne!(epoch, user_epoch);
    let r = b.push_wait(json!({"user": "carol", "data": {"n": 4}}));
    assert_eq!(
        (r["seq"].as_u64(), r["epoch"].as_str()),
        (Some(4), Some(&*epoch))
    );
    let mut u = Seen {
        topic: None,
        last: 3,
        epoch: None,
    };
    u.read_to(&mut carol, 4);
    let other = b.resume("carol", 2, &user_epoch);
    assert_eq!(other.welcome["resumed"], false, "{}", other.welcome);
    assert_eq!(b.stats()["cluster"]["broker_rewound_streams"], 1);
}

#[test]
fn a_batch_of_only_invalid_entries_goes_to_the_dlq_and_blocks_nothing() {
    let redis = RedisServer::start();
    let mut r = redis.conn();
    // Added before any node reads: the first read takes them in one batch with no valid
    // push in it (nothing for the sequencing script to run).
    for raw in ["not json", r#"{"data":1}"#] {
        let _: String = redis::cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(raw)
            .query(&mut r)
            .unwrap();
    }
    let node = Node::start(&redis.url(), &["--node-id", "n"]).ready();
    node.wait_stats("2 dead entries", WAIT, |s| s["cluster"]["stream_dlq"] == 2);
    let mut c = node.connect("ivy");
    node.wait_streams(1);
    let _: String = redis::cmd("XADD")
        .arg("throng:push")
        .arg("*")
        .arg("push")
        .arg(json!({"user": "ivy", "data": {"n": 1}}).to_string())
        .query(&mut r)
        .unwrap();
    Seen::user().read_to(&mut c, 1);
    let s = node.stats();
    assert_eq!(s["cluster"]["broker_errors"], 0, "{s}");
    assert_eq!(s["cluster"]["stream_read"], 3, "read once each: {s}");
    let dlq_len: u64 = redis::cmd("XLEN")
        .arg("throng:push:dlq")
        .query(&mut r)
        .unwrap();
    assert_eq!(dlq_len, 2);
}

#[test]
fn restarted_node_publishes_the_entries_it_left_pending_at_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Claims only after 60 s: what follows cannot be a claim.
    let slow_claim = ["--claim-idle-ms", "60000"];
    let mut a = Node::start(&url, &[&node_flags("a")[..], &slow_claim].concat()).ready();
    let b = Node::start(&url, &[&node_flags("b")[..], &slow_claim].concat()).ready();
    let mut c = b.connect("jo");
    b.wait_streams(1);
    // Node A read these and stopped before acknowledging them (added and read as consumer
    // `a` in one transaction, so no live reader takes them first).
    let mut tx = redis::pipe();
    tx.atomic();
    for n in 1..=3 {
        tx.cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(json!({"user": "jo", "data": {"n": n}}).to_string())
            .ignore();
    }
    tx.cmd("XREADGROUP")
        .arg("GROUP")
        .arg("throng")
        .arg("a")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("throng:push")
        .arg(">")
        .ignore();
    let () = tx.query(&mut redis.conn()).unwrap();
    assert!(a.terminate().success());
    c.expect_silence(Duration::from_millis(100));
    // The same consumer comes back: its own pending entries first.
    let a2 = Node::start(&url, &[&node_flags("a")[..], &slow_claim].concat()).ready();
    Seen::user().read_to(&mut c, 3);
    a2.wait_stats("3 entries read", WAIT, |s| s["cluster"]["stream_read"] == 3);
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("throng:push")
        .arg("throng")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "{pending:?}");
    assert_eq!(b.stats()["cluster"]["stream_claimed"], 0);
}

/// A field of Redis's `INFO <section>` as a number (0 when missing).
fn redis_info(r: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let text: String = redis::cmd("INFO").arg(section).query(r).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_subscriber_redis_refuses_paces_its_reconnects_and_keeps_the_node_unready() {
    // An ACL user made the ordinary way in Redis 7: every command, no channel (the
    // default `acl-pubsub-default resetchannels`, said here so any version does it).
    let redis = RedisServer::start();
    let mut r = redis.conn();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "throng",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
        ])
        .query(&mut r)
        .unwrap();
    let url = format!("redis://throng:pw@127.0.0.1:{}", redis.port);
    let before = redis_info(&mut r, "stats", "total_connections_received:");
    let a = Node::start(&url, &node_flags("a"));
    std::thread::sleep(Duration::from_secs(3));
    // Every SUBSCRIBE is refused (NOPERM): the subscriber tries again with a growing
    // pause (a dozen links in 3 s), not at once (tens of thousands).
    let opened = redis_info(&mut r, "stats", "total_connections_received:") - before;
    assert!(opened < 60, "{opened} connections in 3 s:\n{}", a.output());
    // Said once, with what fixes it; the node is not ready and refuses pushes.
    assert_eq!(a.logged("channel rights"), 1, "{}", a.output());
    a.api("GET", "/readyz", None)
        .assert_error(503, "broker_unavailable");
    let body = json!({"user": "carol", "data": 1}).to_string();
    a.api("POST", "/v1/push", Some(&body))
        .assert_error(503, "broker_unavailable");
    // A user new to the node is told to come back later, not left without a `welcome`.
    assert_eq!(upgrade_then_close(a.ws, "carol"), Closed::Code(Some(1013)));

    // Given the channels, the node gets ready by itself and delivers.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "throng", "allchannels"])
        .query(&mut r)
        .unwrap();
    a.wait_ready_status(200);
    assert_eq!(a.logged("subscriber is back"), 1, "{}", a.output());
    let mut carol = a.connect("carol");
    let mut u = Seen::user();
    push_one_retrying(&a, json!({"user": "carol"}), 1);
    u.read_to(&mut carol, 1);
}

#[test]
fn node_cut_off_longer_than_history_restarts_user_and_topic_sessions_with_1012() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.addr());
    // History of 2: what A misses below is more than Redis keeps.
    let flags = |id| {
        [
            "--node-id",
            id,
            "--public-topics",
            "room.*",
            "--history-size",
            "2",
        ]
    };
    let a = Node::start(&relay.url(), &flags("a")).ready();
    let b = Node::start(&redis.url(), &flags("b")).ready();
    let Pair {
        user: mut carol,
        member: mut dan,
        ..
    } = Pair::on(&a, "carol", "dan");
    let (mut u, mut t) = (Seen::user(), Seen::topic("room.1"));
    push_both(&b, "carol", 1);
    u.read_to(&mut carol, 1);
    t.read_to(&mut dan, 1);
    let topic_epoch = t.epoch();

    relay.cut();
    a.wait_ready_status(503);
    // Same epoch, but 2..=3 are gone from history by the time A reloads.
    for n in 2..=5 {
        push_both(&b, "carol", n);
    }
    relay.heal();
    a.wait_ready_status(200);
    // Neither may go on with a silent gap: both start again (1012) and learn it.
    assert_eq!(u.read_to_close(&mut carol), Closed::Code(Some(1012)));
    assert_eq!(t.read_to_close(&mut dan), Closed::Code(Some(1012)));
    assert_eq!((u.last, t.last), (1, 1));
    let mut dan = a.connect("dan");
    let s = subscribe(&mut dan, "room.1", Some((1, &topic_epoch)));
    assert_eq!(
        (s["resumed"].as_bool(), s["seq"].as_u64()),
        (Some(false), Some(5)),
        "{s}"
    );
}

#[test]
fn clusters_on_two_databases_of_one_redis_do_not_hear_each_other() {
    let redis = RedisServer::start();
    let x = Node::start(&format!("{}/1", redis.url()), &node_flags("x")).ready();
    let y = Node::start(&format!("{}/2", redis.url()), &node_flags("y")).ready();
    let Pair {
        user: mut alice,
        member: mut dan,
        ..
    } = Pair::on(&y, "alice", "dan");
    // X's pushes to the same names: its broadcast reaches its own node only.
    let r = x.push_wait(json!({"broadcast": true, "data": "x-secret"}));
    assert_eq!(r, json!({"nodes": 1}));
    x.push_wait(json!({"user": "alice", "data": "x-secret"}));
    x.push_wait(json!({"topic": "room.1", "data": "x-secret"}));
    // Y's own come through alone, numbered from 1, and the member is not restarted.
    let (mut u, mut t) = (Seen::user(), Seen::topic("room.1"));
    push_both(&y, "alice", 1);
    u.read_to(&mut alice, 1);
    t.read_to(&mut dan, 1);
    alice.barrier("after");
    dan.barrier("after");
}

/// This host's name, as `gethostname` gives it.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which is what is passed.
    assert_eq!(
        unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) },
        0
    );
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_string()
}

#[test]
fn a_node_listening_on_every_address_is_named_by_its_hostname() {
    let redis = RedisServer::start();
    let a = Node::start(&redis.url(), &["--listen", "0.0.0.0:0"]).ready();
    let mut r = redis.conn();
    let want = format!("{}:{}", hostname(), a.ws.port());
    let ok = wait_until(WAIT, || {
        let nodes: Vec<String> = redis::cmd("HKEYS")
            .arg("throng:nodes")
            .query(&mut r)
            .unwrap();
        nodes == [want.clone()]
    });
    let nodes: Vec<String> = redis::cmd("HKEYS")
        .arg("throng:nodes")
        .query(&mut r)
        .unwrap();
    assert!(ok, "throng:nodes {nodes:?}, want {want}");
}

#[test]
fn two_live_nodes_under_one_id_are_told_and_both_go_on_serving() {
    let redis = RedisServer::start();
    let p = Node::start(&redis.url(), &node_flags("same")).ready();
    let q = Node::start(&redis.url(), &node_flags("same")).ready();
    let warned = |n: &Node| {
        let r = n.api("GET", "/readyz", None);
        r.status == 200
            && r.json()["warning"]
                .as_str()
                .is_some_and(|w| w.contains("--node-id"))
    };
    // Each finds the other's run under its id within a heartbeat or two: said in the log,
    // the metric and /readyz, but both stay ready and take pushes (a fleet started with
    // one copied id must not go out of service).
    for n in [&p, &q] {
        // Beats are seconds apart: a loaded machine (every cluster test at once) needs more
        // than WAIT for two of them.
        assert!(
            wait_until(Duration::from_secs(20), || warned(n)),
            "{}",
            n.output()
        );
        assert_eq!(
            n.logged("give each node its own --node-id"),
            1,
            "{}",
            n.output()
        );
        let metrics = n.api("GET", "/metrics", None).text();
        assert!(
            metrics.contains("throng_broker_duplicate_node_id 1"),
            "{metrics}"
        );
        let body = json!({"user": "carol", "data": 1}).to_string();
        assert_eq!(n.api("POST", "/v1/push", Some(&body)).status, 202);
    }
    // A reconnect of P's links keeps its verdict: the first beat of a link cannot tell
    // (it finds the run it just wrote), and Q, beating on, is seen again by the next.
    // (Only P's links: were Q's cut too, a loaded machine could keep both away past
    // `STALE` and the verdict would lapse rightly.)
    let connected = p.logged("presence connected to Redis");
    p.cut_links_to(&redis);
    let reconnected = wait_until(Duration::from_secs(20), || {
        p.logged("presence connected to Redis") > connected
    });
    assert!(reconnected, "{}", p.output());
    // The first beat of the new link and two more, each judged.
    let beats = || tls::metric(p.api, "throng_broker_presence_beats_total");
    let before = beats();
    let judged = wait_until(Duration::from_secs(20), || beats() >= before + 3);
    assert!(judged, "{}", p.output());
    assert_eq!(
        p.logged("no other node has this node id any more"),
        0,
        "{}",
        p.output()
    );
    assert!(warned(&p), "{}", p.output());
    assert!(wait_until(WAIT, || warned(&q)), "{}", q.output());
    // Alone again, P says so.
    let mut q = q;
    assert!(q.terminate().success());
    assert!(wait_until(WAIT, || !warned(&p)), "{}", p.output());
    // A node restarted under its id at once (its last run's beat still fresh) is no twin.
    let mut p = p;
    p.kill9();
    let p2 = Node::start(&redis.url(), &node_flags("same")).ready();
    // Three beats judged: the first cannot tell, the next two find only p2's own run.
    let judged = wait_until(Duration::from_secs(20), || {
        tls::metric(p2.api, "throng_broker_presence_beats_total") >= 3
    });
    assert!(judged, "{}", p2.output());
    assert!(!warned(&p2), "{}", p2.output());
    assert_eq!(p2.readyz(), 200, "{}", p2.output());
}

#[test]
fn twins_do_not_publish_stream_entries_twice() {
    // Twins share one stream consumer: the walk of its pending entries (every half of
    // claim_idle_ms) found the other twin's entries in flight and published them again,
    // under a new seq (review s16g: 7 of 4,000 with claim_idle_ms 1000).
    const ENTRIES: u64 = 3000;
    let redis = RedisServer::start();
    let mut twin = node_flags("same");
    twin.extend(["--claim-idle-ms", "1000"]);
    let p = Node::start(&redis.url(), &twin).ready();
    let q = Node::start(&redis.url(), &twin).ready();
    for n in [&p, &q] {
        let told = wait_until(WAIT, || n.logged("give each node its own --node-id") == 1);
        assert!(told, "{}", n.output());
    }
    let other = Node::start(&redis.url(), &node_flags("other")).ready();
    let mut c = other.connect("hana");
    other.wait_streams(1);
    let mut r = redis.conn();
    // 30 batches 50 ms apart: the twins' walks overlap what the other has just read.
    for batch in 0..30u64 {
        let mut pipe = redis::pipe();
        for n in batch * 100 + 1..=batch * 100 + 100 {
            pipe.cmd("XADD")
                .arg("throng:push")
                .arg("*")
                .arg("push")
                .arg(json!({"user": "hana", "data": {"n": n}}).to_string())
                .ignore();
        }
        pipe.query::<()>(&mut r).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two readers of one stream publish in their own order: each entry once, seq 1..N.
    let mut ns = std::collections::BTreeSet::new();
    for seq in 1..=ENTRIES {
        let m = c.recv();
        assert_eq!(m["seq"], seq, "{m}");
        let n = m["data"]["n"].as_u64().unwrap_or_else(|| panic!("{m}"));
        assert!(ns.insert(n), "entry {n} delivered twice: {m}");
    }
    c.expect_silence(Duration::from_millis(1500));
}

#[test]
fn a_short_redis_stall_keeps_the_cluster_view() {
    // A stall of 1 to 2 s holds up every node's beat: right after it, the nodes in the
    // hash count as alive (not 503, not offline).
    let redis = RedisServer::start();
    let a = Node::start(&redis.url(), &node_flags("a")).ready();
    let b = Node::start(&redis.url(), &node_flags("b")).ready();
    let _alice = a.connect("alice");
    let seen = || {
        let r = b.api("GET", "/v1/presence/alice", None);
        (r.status, r.json()["sessions"].as_u64())
    };
    assert!(
        wait_until(WAIT, || seen() == (200, Some(1))),
        "B never saw alice"
    );
    let mut r = redis.conn();
    // A beat gap over 2 s follows a 1.9 s stall unless the last beat came just before it:
    // three stalls make sure one does.
    for _ in 0..3 {
        let _: () = redis::cmd("DEBUG")
            .arg(&["SLEEP", "1.9"])
            .query(&mut r)
            .unwrap();
        let end = Instant::now() + Duration::from_millis(3500);
        while Instant::now() < end {
            assert_eq!(seen(), (200, Some(1)), "{}", b.output());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_subscriber_link_cut_again_and_again_comes_back_at_once() {
    // A link Redis took (subscribed and loaded) but cut soon after, many times (the
    // output-buffer limit, a proxy, CLIENT KILL): made again after the shortest pause, then
    // one growing to 0.5 s at most, not to 2 s (each such pause is pushes history may not
    // hold); the spell is logged once, not twice a cut.
    let redis = RedisServer::start();
    let a = Node::start(&redis.url(), &node_flags("a")).ready();
    let _alice = a.connect("alice");
    let mut r = redis.conn();
    let subscribed = |r: &mut redis::Connection| {
        let list: String = redis::cmd("CLIENT")
            .arg(&["LIST", "TYPE", "pubsub"])
            .query(r)
            .unwrap();
        !list.trim().is_empty()
    };
    let mut waits = Vec::new();
    for i in 1..=10 {
        assert!(wait_until(RECONNECT_WAIT, || subscribed(&mut r)), "cut {i}");
        let _: u64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "pubsub"])
            .query(&mut r)
            .unwrap();
        let cut = Instant::now();
        let back = wait_until(RECONNECT_WAIT, || subscribed(&mut r));
        assert!(back, "cut {i}: never back\n{}", a.output());
        waits.push(cut.elapsed());
    }
    // With the pause growing to 2 s the last three took 1.6, 2 and 2 s.
    let last: Duration = waits[7..].iter().sum();
    assert!(last < Duration::from_secs(3), "{waits:?}\n{}", a.output());
    assert_eq!(a.logged("again and again"), 1, "{}", a.output());
}

#[test]
fn while_redis_refuses_heartbeats_the_view_is_unknown_not_wrong() {
    let redis = RedisServer::start();
    let a = Node::start(&redis.url(), &node_flags("a")).ready();
    let b = Node::start(&redis.url(), &node_flags("b")).ready();
    let _alice = a.connect("alice");
    let on_a = || {
        let r = b.api("GET", "/v1/presence/alice", None);
        (r.status == 200).then(|| r.json()["sessions"].as_u64())
    };
    assert!(
        wait_until(WAIT, || on_a() == Some(Some(1))),
        "B never saw alice"
    );
    let mut r = redis.conn();
    let maxmemory = |r: &mut redis::Connection, v: u64| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(v)
            .query(r)
            .unwrap();
    };
    // Every heartbeat is refused (OOM) for longer than STALE, then taken again: B may say
    // it cannot tell (503), never that alice is offline.
    let watch = |d: Duration| {
        let end = Instant::now() + d;
        let mut unknown = 0;
        while Instant::now() < end {
            let resp = b.api("GET", "/v1/presence/alice", None);
            if resp.status == 503 {
                resp.assert_error(503, "broker_unavailable");
                unknown += 1;
            } else {
                assert_eq!(resp.status, 200, "{}", resp.text());
                assert_eq!(resp.json()["sessions"], 1, "{}", resp.text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        unknown
    };
    maxmemory(&mut r, 1);
    let unknown = watch(Duration::from_secs(6));
    assert!(unknown > 0, "B answered through the whole spell");
    maxmemory(&mut r, 0);
    watch(Duration::from_secs(4));
    assert!(wait_until(WAIT, || on_a() == Some(Some(1))));
    for n in [&a, &b] {
        assert_eq!(
            n.logged("removing nodes whose heartbeat stopped"),
            0,
            "{}",
            n.output()
        );
    }
}

/// A "Redis" that accepts connections and never answers (a host gone silent, or a port
/// that speaks another protocol). Its connections live as long as the test process.
fn silent_listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(500) {
            held.push(s);
        }
    });
    port
}

/// Sends `sig` to the node's process (by the PID this test started).
fn signal(node: &Node, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(node.child.id()).expect("pid");
    // SAFETY: a signal to the child process this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Waits until the node logged `needle`.
fn wait_logged(node: &Node, needle: &str) {
    let ok = wait_until(RECONNECT_WAIT, || node.logged(needle) > 0);
    assert!(ok, "never logged {needle:?}:\n{}", node.output());
}

#[test]
fn redis_faults_are_logged_in_plain_words() {
    // No answer: said as such, not as "Resource temporarily unavailable (os error 11)".
    let silent = Node::start(&format!("redis://127.0.0.1:{}", silent_listener()), &[]);
    wait_logged(&silent, "no answer from Redis within 2 s");
    assert_eq!(silent.logged("os error 11"), 0, "{}", silent.output());
    drop(silent);

    // A password Redis does not want: Redis's own reason is kept.
    let redis = RedisServer::start();
    let port = redis.port;
    let pw = Node::start(&format!("redis://:nope@127.0.0.1:{port}"), &[]);
    wait_logged(&pw, "without any password configured");
    drop(pw);

    // Pushes Redis refuses for now (out of memory): one warning, then one line when they
    // go through.
    let a = Node::start(&redis.url(), &node_flags("a")).ready();
    let mut r = redis.conn();
    let maxmemory = |r: &mut redis::Connection, v: u64| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(v)
            .query(r)
            .unwrap();
    };
    maxmemory(&mut r, 1);
    let body = json!({"user": "carol", "data": 1}).to_string();
    for _ in 0..5 {
        let resp = a.api("POST", "/v1/push", Some(&body));
        assert!(matches!(resp.status, 202 | 503), "{}", resp.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_logged(&a, "Redis refuses pushes for now");
    maxmemory(&mut r, 0);
    wait_logged(&a, "Redis takes pushes again");
    assert_eq!(
        a.logged("Redis refuses pushes for now"),
        1,
        "{}",
        a.output()
    );

    // SIGSTOP and SIGCONT interrupt the stream ingress's reads: read again, not a lost
    // link.
    for _ in 0..3 {
        signal(&a, libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(200));
        signal(&a, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a.logged("stream ingress lost Redis"), 0, "{}", a.output());
    a.wait_ready_status(200);
}

#[test]
fn a_redis_refusing_the_stream_ingress_keeps_its_link_and_says_so_once() {
    // With writes refused (NOREPLICAS here, as with MISCONF or OOM), every read of the
    // ingress (XREADGROUP is a write) failed, and it logged "lost Redis; reconnecting" and
    // made a new link each time, every 2 s at most, for as long as the refusal lasted.
    let redis = RedisServer::start();
    let n = Node::start(&redis.url(), &node_flags("solo")).ready();
    // No session yet: the node serves no stream, so its subscriber keeps nothing and
    // every error counted below is the ingress's own.
    let errors = || tls::metric(n.api, "throng_broker_errors_total");
    let before = errors();
    let mut r = redis.conn();
    let refuse = |r: &mut redis::Connection, replicas: u32| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("min-replicas-to-write")
            .arg(replicas)
            .query(r)
            .unwrap();
    };
    refuse(&mut r, 1);
    // Four refusals of the ingress (backing off 0.1, 0.2, 0.4 s...), said once.
    let refused = wait_until(Duration::from_secs(20), || errors() >= before + 4);
    assert!(refused, "{}", n.output());
    assert_eq!(n.logged("stream ingress lost Redis"), 0, "{}", n.output());
    assert_eq!(
        n.logged("Redis refuses the stream ingress"),
        1,
        "{}",
        n.output()
    );
    // Writes taken again: an entry reaches the user, and the log says the ingress is back.
    refuse(&mut r, 0);
    let mut c = n.connect("ines");
    n.wait_streams(1);
    let _: String = redis::cmd("XADD")
        .arg("throng:push")
        .arg("*")
        .arg("push")
        .arg(json!({"user": "ines", "data": "again"}).to_string())
        .query(&mut r)
        .unwrap();
    let m = c.recv();
    assert_eq!(m["data"], "again", "{m}");
    let back = wait_until(WAIT, || {
        n.logged("Redis takes the stream ingress's commands again") == 1
    });
    assert!(back, "{}", n.output());
}
