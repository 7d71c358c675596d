//! A tiny wss:// peer for the TLS tests: a rustls server on a loopback port that speaks
//! just enough WebSocket for throng-load's connections (the upgrade, a `welcome`, the
//! closing handshake), one thread per connection, and self-signed certificates from
//! rcgen. Shared by the integration tests (`tests/tls.rs`) and the unit tests of
//! `src/tls`, which include this file by path.
#![allow(dead_code)]

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};
use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A self-signed certificate and its key.
pub struct Pki {
    /// The certificate, PEM (what `--ca` reads).
    pub cert_pem: String,
    /// Its key, PEM (for a throng server's `--api-tls-key`).
    pub key_pem: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

/// A self-signed certificate naming `names` (DNS names or IP addresses).
pub fn self_signed(names: &[&str]) -> Pki {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("rcgen certificate");
    Pki {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        cert: ck.cert.der().clone(),
        key: ck.signing_key.serialize_der(),
    }
}

impl Pki {
    /// Writes the certificate as a PEM file in `dir`, named after `tag` and this process.
    pub fn write_cert(&self, dir: &Path, tag: &str) -> PathBuf {
        let path = dir.join(format!("tls-peer-{}-{tag}.pem", std::process::id()));
        std::fs::write(&path, &self.cert_pem).expect("write the certificate");
        path
    }

    /// Writes the key as a PEM file in `dir`, named after `tag` and this process.
    pub fn write_key(&self, dir: &Path, tag: &str) -> PathBuf {
        let path = dir.join(format!("tls-peer-{}-{tag}-key.pem", std::process::id()));
        std::fs::write(&path, &self.key_pem).expect("write the key");
        path
    }
}

/// What the peer's connections did.
#[derive(Default)]
pub struct Counts {
    /// Upgrades answered with 101 and `welcome`.
    pub welcomed: AtomicU64,
    /// Of those, the ones whose TLS handshake resumed a session.
    pub resumed: AtomicU64,
    /// Closing handshakes answered.
    pub closed: AtomicU64,
}

/// A running peer; dropping it stops accepting (connections under way end by themselves).
pub struct Peer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What its connections did.
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Peer {
    /// Starts a peer presenting `pki`'s certificate, with rustls's server defaults (its
    /// session cache and two TLS 1.3 tickets per handshake, so clients can resume).
    pub fn start(pki: &Pki) -> Peer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone()));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.cert.clone()], key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for sock in listener.incoming() {
                if s.load(Relaxed) {
                    break;
                }
                let Ok(sock) = sock else { continue };
                let (config, c) = (config.clone(), c.clone());
                std::thread::spawn(move || {
                    if let Ok(conn) = ServerConnection::new(config) {
                        serve(conn, sock, &c);
                    }
                });
            }
        });
        Peer {
            addr,
            counts,
            stop,
            accept: Some(accept),
        }
    }

    /// The `--url` for throng-load.
    pub fn url(&self) -> String {
        format!("wss://{}/ws", self.addr)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // Wakes the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// One connection: the TLS handshake and the upgrade, `welcome`, then frames until the
/// client's Close, which is echoed before a close_notify.
fn serve(conn: ServerConnection, sock: TcpStream, counts: &Counts) {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = sock.set_nodelay(true);
    let mut tls = StreamOwned::new(conn, sock);
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(&mut tls, &mut buf) {
            return; // a failed handshake (the client's alert) or an early close
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let Some(key) = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    }) else {
        let _ = tls.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    )
    .into_bytes();
    frame(&mut out, 0x1, br#"{"type":"welcome","seq":0}"#);
    if tls.write_all(&out).is_err() {
        return;
    }
    if tls.conn.handshake_kind() == Some(HandshakeKind::Resumed) {
        counts.resumed.fetch_add(1, Relaxed);
    }
    counts.welcomed.fetch_add(1, Relaxed);
    let mut rest = buf.split_off(head_end);
    loop {
        match client_frame(&rest) {
            Some((opcode, payload, used)) => {
                if opcode == 0x8 {
                    let mut close = Vec::new();
                    frame(&mut close, 0x8, &payload[..payload.len().min(2)]);
                    let _ = tls.write_all(&close);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                    counts.closed.fetch_add(1, Relaxed);
                    return;
                }
                rest.drain(..used);
            }
            None => {
                if !read_more(&mut tls, &mut rest) {
                    return;
                }
            }
        }
    }
}

/// Reads what comes into `buf`; false at the end or on an error.
fn read_more(tls: &mut StreamOwned<ServerConnection, TcpStream>, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match tls.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A masked client frame at the front of `buf`: (opcode, unmasked payload, length).
fn client_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, mut pos) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask: [u8; 4] = buf.get(pos..pos + 4)?.try_into().ok()?;
    pos += 4;
    let payload = buf.get(pos..pos + len)?;
    let unmasked = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Some((b0 & 0x0f, unmasked, pos + len))
}

/// Appends an unmasked server frame.
fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    assert!(payload.len() < 126, "the peer sends small frames only");
    out.push(payload.len() as u8);
    out.extend_from_slice(payload);
}

fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
