//! A real Kafka-protocol broker per test: `tansu` (crates.io; `cargo install tansu --locked
//! --features dynostore,libsql`, which `.ci/run` does when it is missing) on a free
//! loopback port, with SQLite storage in its own temporary directory (its memory storage
//! loses reads that start inside a record batch). Dropping it kills the process (by its
//! PID, which we started) and removes the directory.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use super::redis_server::free_port;

/// A record as read back: key, value and headers.
pub struct ReadRecord {
    /// The key.
    pub key: Option<String>,
    /// The value.
    pub value: String,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    /// The value of header `name`, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A running tansu broker.
pub struct Tansu {
    child: Child,
    /// `127.0.0.1:<port>`, for `--kafka`.
    pub addr: String,
    dir: PathBuf,
}

impl Tansu {
    /// Starts one and waits until it accepts connections.
    pub fn start() -> Tansu {
        Self::start_on(free_port())
    }

    /// Starts one on `port` and waits until it accepts connections.
    pub fn start_on(port: u16) -> Tansu {
        let dir = std::env::temp_dir().join(format!("throng-tansu-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tansu dir");
        let addr = format!("127.0.0.1:{port}");
        let child = Self::spawn(&addr, &dir);
        let t = Tansu { child, addr, dir };
        t.wait_listening();
        t
    }

    /// Kills the broker (by the PID we started), keeping its storage for `restart`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port and storage, after `kill`.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.addr, &self.dir);
        self.wait_listening();
    }

    fn spawn(addr: &str, dir: &std::path::Path) -> Child {
        let url = format!("tcp://{addr}");
        let storage = format!("sqlite:///{}", dir.join("tansu.db").display());
        Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu ({e}): cargo install tansu --locked --features \
                     dynostore,libsql (.ci/run does it when missing)"
                )
            })
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates `topic` with `partitions` partitions. Retried for a while: a broker that
    /// just started listening (with clients already knocking) may drop the first request.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("tansu")
                .args(["topic", "create", topic, "--partitions"])
                .arg(partitions.to_string())
                .args(["--broker", &format!("tcp://{}", self.addr)])
                .output()
                .expect("tansu topic create");
            // A retry after a request whose answer was lost finds the topic there.
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || stderr.contains("already exists") {
                return;
            }
            assert!(Instant::now() < deadline, "creating {topic}: {stderr}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A producer that waits for every record to be stored (records up to 4 MB).
    pub fn producer(&self) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.max.bytes", "4000000")
            .create()
            .expect("producer")
    }

    /// Sends `(key, value)` records to `topic` in order and waits until all are stored.
    pub fn produce(&self, topic: &str, records: &[(&str, String)]) {
        self.produce_on(topic, None, records);
    }

    /// As `produce`, all to `partition`.
    pub fn produce_to(&self, topic: &str, partition: i32, records: &[(&str, String)]) {
        self.produce_on(topic, Some(partition), records);
    }

    fn produce_on(&self, topic: &str, partition: Option<i32>, records: &[(&str, String)]) {
        let p = self.producer();
        for (key, value) in records {
            let mut rec = BaseRecord::to(topic).key(*key).payload(value.as_str());
            if let Some(n) = partition {
                rec = rec.partition(n);
            }
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        // The local queue is full: let it drain.
                        p.poll(Duration::from_millis(10));
                        rec = back;
                    }
                }
            }
        }
        p.flush(Duration::from_secs(20)).expect("records stored");
    }

    /// Every record of `topic` from the start: key, value and headers, in partition
    /// order; waits until at least `n` are there.
    pub fn read_all(&self, topic: &str, n: usize) -> Vec<ReadRecord> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", format!("reader-{}", free_port()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        c.subscribe(&[topic]).expect("subscribe");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(ReadRecord {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    headers,
                });
            }
        }
        out
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
