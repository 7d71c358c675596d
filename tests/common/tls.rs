//! TLS helpers for tests/tls.rs: certificates written to a fresh directory, rustls client
//! configurations, a tungstenite client over rustls, a hand-driven rustls connection for
//! raw records, `/metrics` reads, the `throng` binary as a child process, and the external
//! clients (`python3` with `websockets`, `openssl s_client`), which must be installed: a
//! test that needs one fails saying what to install.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::{
    base_args, find, kill_child, listening_addrs, tcp, ws_try_recv, Closed, Frame, HttpConn, Resp,
    TestServer, API_KEY, IO_TIMEOUT, SECRET,
};

/// The name every test certificate is for (and the one clients verify).
pub const HOST: &str = "localhost";

// ---------------------------------------------------------------------------------------
// Certificates

/// A self-signed certificate for `localhost` and 127.0.0.1, with its key.
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl CertPair {
    /// A rustls server configuration presenting this certificate (a test upstream).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .expect("the test key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .expect("the test certificate");
        Arc::new(config)
    }

    pub fn generate() -> CertPair {
        let ck = rcgen::generate_simple_self_signed(vec![HOST.into(), "127.0.0.1".into()])
            .expect("generate a self-signed certificate");
        CertPair {
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
            der: ck.cert.der().clone(),
        }
    }
}

/// A CA that issues client certificates (for the push API's `--api-tls-client-ca`).
pub struct ClientCa {
    /// The CA certificate, PEM (what `--api-tls-client-ca` reads).
    pub ca_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A client certificate with its key, DER for rustls and PEM for other clients.
pub struct ClientCert {
    pub cert: CertificateDer<'static>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClientCa {
    /// A new self-signed CA named `name`.
    pub fn generate(name: &str) -> ClientCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        ClientCa {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    /// A client certificate for `name`, issued by this CA.
    pub fn issue(&self, name: &str) -> ClientCert {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        ClientCert {
            cert: cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A client configuration trusting `root` that presents `client`'s certificate.
pub fn client_config_with_cert(
    root: &CertificateDer<'static>,
    client: &ClientCert,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    store.add(root.clone()).expect("add a root certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(store)
            .with_client_auth_cert(vec![client.cert.clone()], client.key.clone_key())
            .expect("client certificate"),
    )
}

/// A fresh directory holding `cert.pem` and `key.pem`; removed on drop.
pub struct TlsDir {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The pair written at creation.
    pub pair: CertPair,
}

impl TlsDir {
    /// Generates a certificate and writes it to a new directory named after `tag`.
    pub fn new(tag: &str) -> TlsDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "throng-tls-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let d = TlsDir {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            pair: CertPair::generate(),
        };
        d.write(&d.pair);
        d
    }

    /// Overwrites the certificate and key files with `pair`.
    pub fn write(&self, pair: &CertPair) {
        std::fs::write(&self.cert, &pair.cert_pem).expect("write cert.pem");
        std::fs::write(&self.key, &pair.key_pem).expect("write key.pem");
    }

    pub fn cert_path(&self) -> &str {
        self.cert.to_str().expect("utf-8 temp path")
    }

    pub fn key_path(&self) -> &str {
        self.key.to_str().expect("utf-8 temp path")
    }

    /// Another file in this directory (which need not exist).
    pub fn path(&self, name: &str) -> String {
        self.dir
            .join(name)
            .to_str()
            .expect("utf-8 temp path")
            .to_string()
    }

    /// Starts an in-process server on TLS with these files, plus `extra` flags.
    pub fn server(&self, extra: &[&str]) -> TestServer {
        let mut args = vec!["--tls-cert", self.cert_path(), "--tls-key", self.key_path()];
        args.extend_from_slice(extra);
        TestServer::start(&args)
    }

    /// A client configuration that trusts this directory's first certificate.
    pub fn client(&self, version: Option<Version>) -> Arc<rustls::ClientConfig> {
        client_config(&[&self.pair.der], version)
    }
}

impl Drop for TlsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// rustls clients

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

/// A client configuration trusting `roots`, limited to `version` when given. Resumption
/// is off, so every connection is a full handshake that shows the server's certificate.
pub fn client_config(
    roots: &[&CertificateDer<'static>],
    version: Option<Version>,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match version {
        Some(Version::Tls12) => &[&rustls::version::TLS12],
        Some(Version::Tls13) => &[&rustls::version::TLS13],
        None => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).expect("add a root certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(HOST).expect("server name")
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and completes a TLS handshake (no HTTP yet).
pub fn tls_connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsStream, String> {
    tls_handshake(tcp(addr), config)
}

/// Completes a TLS handshake on `sock`.
pub fn tls_handshake(
    mut sock: TcpStream,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsStream, String> {
    let mut conn = rustls::ClientConnection::new(Arc::clone(config), server_name())
        .map_err(|e| format!("client connection: {e}"))?;
    let deadline = Instant::now() + IO_TIMEOUT;
    while conn.is_handshaking() {
        if Instant::now() > deadline {
            return Err("TLS handshake did not finish".into());
        }
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err("TLS handshake: the connection ended".into())
            }
            Ok(_) => {}
            Err(e) => return Err(format!("TLS handshake: {e}")),
        }
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// The leaf certificate the server showed on `s`.
pub fn peer_leaf(conn: &rustls::ClientConnection) -> Vec<u8> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .expect("the server showed a certificate")
}

/// The first `n` bytes a rustls client sends: the start of its ClientHello.
pub fn client_hello_prefix(config: &Arc<rustls::ClientConfig>, n: usize) -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(Arc::clone(config), server_name()).expect("client");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("write_tls");
    }
    assert!(
        hello.len() > n && hello[0] == 22,
        "a ClientHello record longer than {n} bytes: {hello:?}"
    );
    hello.truncate(n);
    hello
}

/// A WebSocket client (tungstenite) over rustls, welcome read.
pub struct TlsClient {
    pub ws: WebSocket<TlsStream>,
    pub welcome: Value,
}

impl TlsClient {
    /// TLS handshake, upgrade with a bearer token, welcome.
    pub fn connect(
        addr: SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        token: &str,
    ) -> Result<TlsClient, String> {
        Self::over(tls_connect(addr, config)?, addr, token)
    }

    /// Upgrades on an established TLS stream.
    pub fn over(stream: TlsStream, addr: SocketAddr, token: &str) -> Result<TlsClient, String> {
        let mut req = format!("wss://{HOST}:{}/ws", addr.port())
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
        let (ws, resp) = tungstenite::client::client(req, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => format!(
                "refused with {}: {}",
                r.status(),
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
            ),
            other => format!("upgrade failed: {other}"),
        })?;
        assert_eq!(resp.status(), 101);
        let mut c = TlsClient {
            ws,
            welcome: Value::Null,
        };
        let w = c.recv();
        assert_eq!(w["type"], "welcome", "first message must be welcome: {w}");
        c.welcome = w;
        Ok(c)
    }

    /// The TLS connection (certificate, version).
    pub fn tls(&self) -> &rustls::ClientConnection {
        &self.ws.get_ref().conn
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    /// Next JSON message; panics on close or after `IO_TIMEOUT`.
    pub fn recv(&mut self) -> Value {
        match self.try_recv(IO_TIMEOUT) {
            Ok(Some(v)) => v,
            Ok(None) => panic!("no message within {IO_TIMEOUT:?}"),
            Err(c) => panic!("connection closed while waiting for a message: {c:?}"),
        }
    }

    /// Next JSON message within `timeout`: Ok(None) when none came, Err when the connection
    /// ended. A record the client cannot open (bad MAC, bad sequence) fails the test: the
    /// server's records must stay valid to the end.
    pub fn try_recv(&mut self, timeout: Duration) -> Result<Option<Value>, Closed> {
        ws_try_recv(&mut self.ws, timeout, true, |s, t| {
            let _ = s.sock.set_read_timeout(Some(t));
        })
    }

    /// Reads until the connection closes (messages before it are skipped).
    pub fn expect_close(&mut self) -> Closed {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Err(c) = self.try_recv(IO_TIMEOUT) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "connection did not close within {IO_TIMEOUT:?}"
            );
        }
    }

    /// Subscribes to `topic` and reads the `subscribed` answer.
    pub fn subscribe(&mut self, topic: &str) {
        self.send(serde_json::json!({"type": "subscribe", "topic": topic, "ref": topic}));
        let m = self.recv();
        assert_eq!(m["type"], "subscribed", "subscribe {topic}: {m}");
    }
}

// ---------------------------------------------------------------------------------------
// An HTTPS client for the push API (`--api-tls-cert`)

/// A keep-alive HTTPS connection to the push API.
pub type HttpsConn = HttpConn<TlsStream>;

impl HttpConn<TlsStream> {
    /// Connects and completes the TLS handshake.
    pub fn connect_tls(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> HttpsConn {
        HttpConn::over(
            tls_connect(addr, config).unwrap_or_else(|e| panic!("{e}")),
            addr,
        )
    }
}

/// `name` from the push API's `/metrics` over HTTPS.
pub fn https_metric(api: SocketAddr, config: &Arc<rustls::ClientConfig>, name: &str) -> u64 {
    let r = HttpsConn::connect_tls(api, config).request("GET", "/metrics", Some(API_KEY), None);
    metric_in(&r, name)
}

// ---------------------------------------------------------------------------------------
// A rustls client driven by hand, for records the test builds or breaks itself

/// How a hand-driven TLS connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsEnd {
    /// close_notify, then EOF.
    CloseNotify,
    /// The socket ended or was reset without close_notify.
    Abrupt(String),
}

pub struct RawTls {
    pub sock: TcpStream,
    pub conn: rustls::ClientConnection,
    /// Plaintext received and not yet parsed.
    plain: Vec<u8>,
}

impl RawTls {
    /// Connects and completes the TLS handshake.
    pub fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> RawTls {
        let s = tls_connect(addr, config).unwrap_or_else(|e| panic!("{e}"));
        let rustls::StreamOwned { conn, sock } = s;
        RawTls {
            sock,
            conn,
            plain: Vec::new(),
        }
    }

    /// Connects, upgrades with a bearer token, reads the welcome.
    pub fn upgraded(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, token: &str) -> RawTls {
        let mut t = Self::connect(addr, config);
        t.send(&Self::request(addr, token));
        t.read_upgrade();
        t
    }

    /// An upgrade request with a bearer token.
    pub fn request(addr: SocketAddr, token: &str) -> Vec<u8> {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {HOST}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n",
            addr.port(),
        )
        .into_bytes()
    }

    /// Reads the 101 and the welcome; returns the welcome.
    pub fn read_upgrade(&mut self) -> Value {
        let head_end = loop {
            if let Some(p) = find(&self.plain, b"\r\n\r\n") {
                break p + 4;
            }
            match self.fill() {
                Ok(0) => panic!("TLS ended before the 101: {:?}", self.plain_text()),
                Ok(_) => {}
                Err(e) => panic!("reading the 101: {e}; got {:?}", self.plain_text()),
            }
        };
        let head = String::from_utf8_lossy(&self.plain[..head_end]).to_string();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "expected 101, got {head:?}"
        );
        self.plain.drain(..head_end);
        let w = self.read_json();
        assert_eq!(w["type"], "welcome", "first message must be welcome: {w}");
        w
    }

    fn plain_text(&self) -> String {
        String::from_utf8_lossy(&self.plain).to_string()
    }

    /// Encrypts `plain` as application data: one record for each call (up to 16 KiB).
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        self.conn
            .writer()
            .write_all(plain)
            .expect("plaintext to rustls");
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).expect("write_tls");
        }
        out
    }

    /// Writes bytes to the socket as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write to the socket");
    }

    /// Encrypts and sends.
    pub fn send(&mut self, plain: &[u8]) {
        let sealed = self.seal(plain);
        self.send_raw(&sealed);
    }

    /// Reads more plaintext: Ok(0) once the server sent close_notify, Err when the socket
    /// ended without it, failed, or the read timed out.
    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(0),
                Ok(n) => {
                    self.plain.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.conn.read_tls(&mut self.sock)?;
            self.conn
                .process_new_packets()
                .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
            while self.conn.wants_write() {
                self.conn.write_tls(&mut self.sock)?;
            }
        }
    }

    /// Next server frame; None when the connection ended.
    pub fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, used)) = parse_server_frame(&self.plain) {
                self.plain.drain(..used);
                return Some(f);
            }
            match self.fill() {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("no frame within the read timeout")
                }
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    panic!("the client could not read the server's TLS records: {e}")
                }
                Err(_) => return None,
            }
        }
    }

    /// Next text frame as JSON (pings skipped).
    pub fn read_json(&mut self) -> Value {
        loop {
            let f = self
                .read_frame()
                .expect("connection ended while waiting for text");
            match f.opcode {
                super::OP_TEXT => return f.json(),
                super::OP_PING | super::OP_PONG => {}
                _ => panic!("unexpected frame while waiting for text: {f:?}"),
            }
        }
    }

    /// Reads until the connection ends, asserting no plaintext arrives first; how it ended.
    pub fn expect_end_without_data(&mut self) -> TlsEnd {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "connection still open");
            let r = self.fill();
            assert!(
                self.plain.is_empty(),
                "data arrived before the end: {:?}",
                self.plain_text()
            );
            match r {
                Ok(0) => return TlsEnd::CloseNotify,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("connection still open after {IO_TIMEOUT:?}")
                }
                Err(e) => return TlsEnd::Abrupt(e.to_string()),
            }
        }
    }

    /// All plaintext until the connection ends, and how it ended.
    pub fn read_all(&mut self) -> (Vec<u8>, TlsEnd) {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "connection still open");
            match self.fill() {
                Ok(0) => return (std::mem::take(&mut self.plain), TlsEnd::CloseNotify),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "connection still open after {IO_TIMEOUT:?}; got {:?}",
                        self.plain_text()
                    )
                }
                Err(e) => {
                    return (
                        std::mem::take(&mut self.plain),
                        TlsEnd::Abrupt(e.to_string()),
                    )
                }
            }
        }
    }

    /// After a Close frame: the rest of the stream is close_notify and EOF.
    pub fn expect_end(&mut self) -> TlsEnd {
        self.expect_end_without_data()
    }
}

pub fn parse_server_frame(b: &[u8]) -> Option<(Frame, usize)> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let rsv = (b[0] >> 4) & 7;
    let opcode = b[0] & 0xF;
    assert!(b[1] & 0x80 == 0, "server frames must not be masked");
    let (len, pos) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    if b.len() < pos + len {
        return None;
    }
    Some((
        Frame {
            fin,
            rsv,
            opcode,
            payload: b[pos..pos + len].to_vec(),
        },
        pos + len,
    ))
}

// ---------------------------------------------------------------------------------------
// Metrics

/// The value of one sample in the push API's `/metrics` (`name` may carry labels, as
/// `throng_handshakes_total{outcome="tls_failed"}`).
pub fn metric(api: SocketAddr, name: &str) -> u64 {
    let r = HttpConn::connect(api).request("GET", "/metrics", Some(API_KEY), None);
    metric_in(&r, name)
}

/// `name`'s value in a `/metrics` response.
pub fn metric_in(r: &Resp, name: &str) -> u64 {
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    let text = r.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{name}: bad value {v:?}: {e}")) as u64
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// The sum of a family's samples over all labels (`throng_connections{shard="0"}`, ...).
pub fn metric_sum(api: SocketAddr, family: &str) -> u64 {
    let r = HttpConn::connect(api).request("GET", "/metrics", Some(API_KEY), None);
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    let text = r.text();
    let mut found = false;
    let mut sum = 0;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(family) else {
            continue;
        };
        let value = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ").map(|(_, v)| v),
            None => rest.strip_prefix(' '),
        };
        if let Some(v) = value {
            found = true;
            sum += v.trim().parse::<f64>().expect("a sample value") as u64;
        }
    }
    assert!(found, "no {family} in /metrics:\n{text}");
    sum
}

/// Polls `/metrics` until `name` is `want`; panics with the last value after `timeout`.
pub fn wait_metric(api: SocketAddr, name: &str, want: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let v = metric(api, name);
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {v}, expected {want} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// External clients

/// A file under tests/fixtures.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Fails the test unless `python3` can import `websockets` (the tests must not pass
/// silently where it is missing).
pub fn require_python_websockets() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import ssl, websockets, websockets.sync.client; print(websockets.__version__)",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "this test needs the Python package `websockets` (install it: \
             `python3 -m pip install websockets`): {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("this test needs `python3` with the `websockets` package: {e}"),
    }
}

/// Fails the test unless the `openssl` command is installed.
pub fn require_openssl() {
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`openssl version` failed (install the openssl command line tool): {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "this test needs the `openssl` command (install the openssl package, e.g. \
             `apt-get install openssl`): {e}"
        ),
    }
}

/// Collects a child's stderr in the background.
fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut r = r;
        let mut chunk = [0u8; 8192];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// A Python fixture (tests/fixtures/*.py) as a child process, read one JSON line at a time.
pub struct PyClient {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    seen: Vec<String>,
}

impl PyClient {
    /// tests/fixtures/tls_client.py with `args`.
    pub fn spawn(args: &[&str]) -> PyClient {
        PyClient::fixture("tls_client.py", args)
    }

    /// tests/fixtures/tls_client.py in `mode` against the server on `port`, trusting `ca`,
    /// as `token`'s user, over TLS `version` ("1.2" or "1.3"), with `more` arguments.
    pub fn connect(
        mode: &str,
        port: &str,
        ca: &str,
        token: &str,
        version: &str,
        more: &[&str],
    ) -> PyClient {
        let mut args = vec![
            mode, "--port", port, "--ca", ca, "--token", token, "--tls", version,
        ];
        args.extend_from_slice(more);
        PyClient::spawn(&args)
    }

    /// tests/fixtures/`script` with `args`.
    pub fn fixture(script: &str, args: &[&str]) -> PyClient {
        require_python_websockets();
        let mut child = Command::new("python3")
            .arg(fixture(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let stdout = child.stdout.take().unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        forward_lines(stdout, tx);
        PyClient {
            child,
            lines: rx,
            stderr,
            seen: Vec::new(),
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).to_string()
    }

    /// The next JSON line, which must be the event `name`.
    pub fn expect(&mut self, name: &str) -> Value {
        let timeout = Duration::from_secs(15);
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("python printed a non-JSON line ({e}): {line}"));
                let short: String = line.chars().take(300).collect();
                self.seen.push(short);
                assert_eq!(
                    v["event"],
                    name,
                    "expected the event {name:?}; python printed {:?}; stderr: {}",
                    self.seen,
                    self.stderr()
                );
                v
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "no {name:?} event from python within {timeout:?}; printed {:?}; \
                     stderr: {}",
                    self.seen,
                    self.stderr()
                )
            }
        }
    }

    /// Waits for the script to end and asserts it succeeded.
    pub fn finish(&mut self) {
        let status = wait_child(&mut self.child, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("python did not exit; stderr: {}", self.stderr()));
        assert!(
            status.success(),
            "python exited with {status:?}; stderr: {}",
            self.stderr()
        );
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// `openssl s_client -quiet` connected to the server, its stdin and stdout in the test's
/// hands.
pub struct SClient {
    child: Child,
    stdin: ChildStdin,
    out: mpsc::Receiver<Vec<u8>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// All stdout so far.
    pub buf: Vec<u8>,
}

impl SClient {
    /// `flags` choose the version and suites (`-tls1_3`, `-ciphersuites ...`).
    pub fn spawn(addr: SocketAddr, ca: &str, flags: &[&str]) -> SClient {
        require_openssl();
        let connect = format!("127.0.0.1:{}", addr.port());
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &connect,
                "-servername",
                HOST,
            ])
            .args([
                "-CAfile",
                ca,
                "-verify_return_error",
                "-verify_hostname",
                HOST,
            ])
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl s_client");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 65536];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        SClient {
            child,
            stdin,
            out: rx,
            stderr,
            buf: Vec::new(),
        }
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).to_string()
    }

    /// Types bytes into s_client.
    pub fn write(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).expect("write to s_client");
        self.stdin.flush().expect("flush s_client's stdin");
    }

    /// The server frame that starts at `pos` of stdout, and where it ends.
    pub fn frame_at(&mut self, pos: usize) -> (Frame, usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((f, used)) = self.buf.get(pos..).and_then(parse_server_frame) {
                return (f, pos + used);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "no complete frame at {pos} of s_client's stdout {:?}; stderr {}",
                    String::from_utf8_lossy(&self.buf),
                    self.stderr()
                ),
            }
        }
    }

    /// Reads stdout until `needle` appears after `from`; its position.
    pub fn wait_for(&mut self, from: usize, needle: &[u8]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = self.buf.get(from..).and_then(|b| find(b, needle)) {
                return from + p;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "s_client never printed {:?}; stdout {:?}; stderr {}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.buf),
                    self.stderr()
                ),
            }
        }
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------
// The throng binary

/// `throng serve` as a child process with JSON logs; killed on drop.
pub struct ServeProc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl ServeProc {
    /// Starts `throng serve` on ephemeral ports with the test secret and API key plus
    /// `extra`.
    pub fn spawn(extra: &[&str]) -> ServeProc {
        let mut args = vec!["--jwt-secret", SECRET];
        args.extend_from_slice(extra);
        ServeProc::spawn_without_secret(&args)
    }

    /// Starts `throng serve` like `spawn`, but the JWT secret comes from `extra` only.
    pub fn spawn_without_secret(extra: &[&str]) -> ServeProc {
        let mut args = vec!["--api-key", API_KEY];
        args.extend_from_slice(extra);
        ServeProc::spawn_bare(&args)
    }

    /// Starts `throng serve` on ephemeral ports with JSON logs and only `extra` beyond
    /// that: no JWT secret, no API key.
    pub fn spawn_bare(extra: &[&str]) -> ServeProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_throng"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--shards",
                "1",
                "--drain-ms",
                "100",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn throng");
        let (tx, rx) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), tx.clone());
        forward_lines(child.stderr.take().unwrap(), tx);
        ServeProc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Reads log lines until `f` returns Some, within `timeout`.
    pub fn find<T>(&mut self, timeout: Duration, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(v) = f(&line) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "not found in the log within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the `listening` line: (client address, API address).
    pub fn listening(&mut self) -> (SocketAddr, SocketAddr) {
        self.find(Duration::from_secs(10), listening_addrs)
    }

    /// Sends `sig` to this child (and only to it).
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_child(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("throng did not exit within {timeout:?}"))
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// Runs `throng serve` with flags that should stop it at start; its exit status and
/// stderr.
pub fn serve_refused(extra: &[&str]) -> (ExitStatus, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_throng"))
        .arg("serve")
        .args(base_args(&["--shards", "1"]))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn throng");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(out)) => (out.status, String::from_utf8_lossy(&out.stderr).to_string()),
        Ok(Err(e)) => panic!("waiting for throng: {e}"),
        Err(_) => {
            // SAFETY: kill(2) on the child this function spawned, still running (its
            // waiter has not returned).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("throng kept running with {extra:?}");
        }
    }
}

/// Sends each line `r` yields to `tx`, from a thread of its own, until `r` ends.
fn forward_lines(r: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
}

/// The child's exit status once it exits within `timeout`; `None` if it does not.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
