//! A real `redis-server` per test (Debian's package), on a free loopback port, with no
//! persistence unless asked ([`RedisServer::start_persistent`]: an append-only file synced
//! on every write, so a [`RedisServer::restart`] after a kill keeps every stream). Dropping
//! it kills the process (by its PID, which we started).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: std::path::PathBuf,
    /// Append-only file on, synced on every write.
    persistent: bool,
    /// `requirepass`, when set.
    password: Option<String>,
    /// TLS only (`--tls-port`; no plain port), with this self-signed certificate.
    tls: Option<RedisTls>,
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    /// Starts one on `port` (to restart on the same address) and waits for PING.
    pub fn start_on(port: u16) -> RedisServer {
        Self::launch(port, false)
    }

    /// Starts one on a free port that writes every change to its append-only file before
    /// answering, so [`RedisServer::restart`] after a kill finds every stream again.
    pub fn start_persistent() -> RedisServer {
        Self::launch(free_port(), true)
    }

    /// Starts one on a free port that requires `password` (`requirepass`); `url` and
    /// `conn` carry it.
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::launch_full(free_port(), false, Some(password.to_string()), None)
    }

    /// Starts one on a free port that speaks only TLS, with a fresh self-signed
    /// certificate for `localhost` ([`RedisServer::ca_path`] holds it); `url` is
    /// `rediss://localhost:<port>`.
    pub fn start_tls() -> RedisServer {
        Self::launch_full(free_port(), false, None, Some(RedisTls::new(false)))
    }

    /// Like [`RedisServer::start_tls`], and every client must present a certificate from
    /// this server's client CA (`tls-auth-clients yes`): [`RedisServer::client_cert_path`]
    /// and [`RedisServer::client_key_path`] hold one.
    pub fn start_mtls() -> RedisServer {
        Self::launch_full(free_port(), false, None, Some(RedisTls::new(true)))
    }

    fn launch(port: u16, persistent: bool) -> RedisServer {
        Self::launch_full(port, persistent, None, None)
    }

    fn launch_full(
        port: u16,
        persistent: bool,
        password: Option<String>,
        tls: Option<RedisTls>,
    ) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("throng-redis-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut r = RedisServer {
            child: None,
            port,
            dir,
            persistent,
            password,
            tls,
        };
        r.spawn();
        r
    }

    /// Starts the process on this server's port and directory and waits for PING.
    fn spawn(&mut self) {
        let port = self.port.to_string();
        // DEBUG SLEEP stalls it as a fork or a slow disk would (tests of lost answers).
        let mut args = vec![
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--enable-debug-command",
            "local",
        ];
        match &self.tls {
            None => args.extend(["--port", &port]),
            Some(t) => args.extend([
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                t.cert.to_str().expect("utf-8 temp path"),
                "--tls-key-file",
                t.key.to_str().expect("utf-8 temp path"),
                "--tls-ca-cert-file",
                t.client
                    .as_ref()
                    .map_or(&t.cert, |c| &c.ca)
                    .to_str()
                    .expect("utf-8 temp path"),
                "--tls-auth-clients",
                if t.client.is_some() { "yes" } else { "no" },
            ]),
        }
        if self.persistent {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        if let Some(p) = &self.password {
            args.extend(["--requirepass", p]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server; .ci/run does it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} never answered",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port and directory after [`RedisServer::kill`] (a
    /// persistent one loads its append-only file; any other comes back empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `redis://127.0.0.1:<port>`, with `:<password>@` when it has one.
    pub fn url(&self) -> String {
        match (&self.password, &self.tls) {
            (_, Some(_)) => format!("rediss://localhost:{}", self.port),
            (Some(p), None) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            (None, None) => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The PEM file of the certificate a TLS server shows (its own CA).
    pub fn ca_path(&self) -> &str {
        self.tls
            .as_ref()
            .expect("a TLS redis-server")
            .cert
            .to_str()
            .expect("utf-8 temp path")
    }

    /// A server of [`RedisServer::start_mtls`]: a client certificate it accepts (PEM).
    pub fn client_cert_path(&self) -> &str {
        self.client().cert.to_str().expect("utf-8 temp path")
    }

    /// The key of [`RedisServer::client_cert_path`] (PEM).
    pub fn client_key_path(&self) -> &str {
        self.client().key.to_str().expect("utf-8 temp path")
    }

    /// A server of [`RedisServer::start_mtls`]: the flags that trust it and present its
    /// client certificate (`throng serve`'s, and throng-load's with `--redis-stream`).
    pub fn mtls_args(&self) -> [&str; 6] {
        [
            "--redis-ca",
            self.ca_path(),
            "--redis-client-cert",
            self.client_cert_path(),
            "--redis-client-key",
            self.client_key_path(),
        ]
    }

    fn client(&self) -> &RedisClientCert {
        self.tls
            .as_ref()
            .and_then(|t| t.client.as_ref())
            .expect("a redis-server of start_mtls")
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether it answers PING now.
    pub fn ping(&self) -> bool {
        let Ok(s) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        match &self.tls {
            None => self.ping_on(s),
            Some(t) => match t.handshake(s) {
                Some(tls) => self.ping_on(tls),
                None => false,
            },
        }
    }

    fn ping_on(&self, mut s: impl Read + Write) -> bool {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!("AUTH {p}\r\n"))
            .unwrap_or_default();
        if s.write_all(format!("{auth}PING\r\n").as_bytes()).is_err() {
            return false;
        }
        // +OK first when it authenticated; both replies may take two reads.
        let want: &[u8] = if auth.is_empty() {
            b"+PONG"
        } else {
            b"+OK\r\n+PONG"
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < want.len() {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return false,
            }
        }
        got.starts_with(want)
    }

    /// Stalls it for `secs` seconds (DEBUG SLEEP on a connection of its own, in a thread
    /// that ends when it wakes) and returns once it has stopped answering.
    pub fn stall(&self, secs: f64) -> std::thread::JoinHandle<()> {
        let mut sleeper = self.conn();
        // Made before the stall: connecting to a sleeping Redis waits for its answers.
        let mut probe = self.conn();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("a read timeout");
        let t = std::thread::spawn(move || {
            let _: () = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(secs)
                .query(&mut sleeper)
                .expect("DEBUG SLEEP (enable-debug-command local)");
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Until a PING goes unanswered (the probe is out of step then, and dropped).
            if redis::cmd("PING").query::<String>(&mut probe).is_err() {
                return t;
            }
            assert!(Instant::now() < deadline, "redis-server never stalled");
        }
    }

    /// Stops the process (SIGSTOP, by the PID we started): it reads and answers nothing
    /// while its connections stay open, as a host gone silent. [`RedisServer::thaw`]
    /// wakes it.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("a running redis-server");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) with a PID this test started and still holds (not reaped).
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// A client connection for the test's own commands.
    pub fn conn(&self) -> redis::Connection {
        let client = match &self.tls {
            None => redis::Client::open(self.url()),
            Some(t) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: t.client.as_ref().map(|c| redis::ClientTlsConfig {
                        client_cert: c.cert_pem.clone().into_bytes(),
                        client_key: c.key_pem.clone().into_bytes(),
                    }),
                    root_cert: Some(t.cert_pem.clone().into_bytes()),
                },
            ),
        };
        client
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to the test's redis")
    }

    /// Kills it at once (SIGKILL), like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed certificate for `localhost` in a directory of its own, for a TLS
/// redis-server; removed on drop.
struct RedisTls {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    cert_pem: String,
    /// With `tls-auth-clients yes`: the CA clients need a certificate from, and one.
    client: Option<RedisClientCert>,
    config: std::sync::Arc<rustls::ClientConfig>,
}

/// A client CA and a client certificate it issued, as files and PEM.
struct RedisClientCert {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    cert_pem: String,
    key_pem: String,
}

impl RedisClientCert {
    /// A fresh CA and a certificate from it, written into `dir`.
    fn generate(dir: &std::path::Path) -> RedisClientCert {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "redis client CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = rcgen::CertifiedIssuer::self_signed(
            ca_params,
            rcgen::KeyPair::generate().expect("CA key"),
        )
        .expect("CA certificate");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "throng node");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &issuer).expect("client certificate");
        let c = RedisClientCert {
            ca: dir.join("client-ca.pem"),
            cert: dir.join("client.pem"),
            key: dir.join("client.key"),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&c.ca, issuer.pem()).expect("write client-ca.pem");
        std::fs::write(&c.cert, &c.cert_pem).expect("write client.pem");
        std::fs::write(&c.key, &c.key_pem).expect("write client.key");
        c
    }
}

impl RedisTls {
    fn new(auth_clients: bool) -> RedisTls {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("generate a self-signed certificate");
        let dir = std::env::temp_dir().join(format!(
            "throng-redis-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).expect("write cert.pem");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key.pem");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).expect("the test root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let client = auth_clients.then(|| RedisClientCert::generate(&dir));
        let config = match &client {
            None => builder.with_no_client_auth(),
            Some(c) => {
                use rustls::pki_types::pem::PemObject;
                let chain =
                    vec![
                        rustls::pki_types::CertificateDer::from_pem_slice(c.cert_pem.as_bytes())
                            .expect("client certificate"),
                    ];
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                    .expect("client key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client certificate and key")
            }
        };
        RedisTls {
            dir,
            cert,
            key,
            cert_pem: ck.cert.pem(),
            client,
            config: std::sync::Arc::new(config),
        }
    }

    /// A TLS handshake with the server on `sock`; `None` if it failed.
    fn handshake(
        &self,
        mut sock: TcpStream,
    ) -> Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
        let mut conn =
            rustls::ClientConnection::new(std::sync::Arc::clone(&self.config), name).ok()?;
        while conn.is_handshaking() {
            match conn.complete_io(&mut sock) {
                Ok((0, 0)) => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        Some(rustls::StreamOwned::new(conn, sock))
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits up to 10 s until no `throng:push` entry is pending in the `throng` group (an
/// entry is acknowledged a round trip after its push went out); panics with XPENDING's
/// summary otherwise.
pub fn wait_none_pending(r: &mut redis::Connection) {
    // Polled here, not with `wait_until`: this file is also a module of the library's
    // unit tests, which have no `common`.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = pending(r);
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} entries left pending");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `throng:push`'s pending entries in the `throng` group (XPENDING's count).
pub fn pending(r: &mut redis::Connection) -> i64 {
    let p: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("throng:push")
        .arg("throng")
        .query(r)
        .unwrap();
    match p.first() {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("XPENDING: {other:?}"),
    }
}
