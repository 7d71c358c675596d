//! A TLS client whose records after the handshake are made by hand. rustls runs the
//! handshake; then the keys are taken out of it (secret extraction, and its key log for
//! TLS 1.3's traffic secrets) and records are sealed and opened here with ring, so a test
//! can send what no TLS library would: key updates in bulk or followed by data, records
//! longer than TLS allows, empty records, warning alerts.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use rustls::pki_types::CertificateDer;
use rustls::ConnectionTrafficSecrets;
use serde_json::Value;

use super::tls::{client_config, parse_server_frame, tls_handshake, RawTls, Version};
use super::{find, tcp, Frame, IO_TIMEOUT, OP_PING, OP_PONG, OP_TEXT};

pub const CT_ALERT: u8 = 21;
pub const CT_HANDSHAKE: u8 = 22;
pub const CT_DATA: u8 = 23;
/// A KeyUpdate message (RFC 8446 section 4.6.3) with its `request_update` byte.
pub fn key_update_msg(request: bool) -> [u8; 5] {
    [24, 0, 0, 1, u8::from(request)]
}

/// The traffic secrets rustls's key log hands out.
#[derive(Debug, Default)]
struct KeyLog(Mutex<Vec<(String, Vec<u8>)>>);

impl rustls::KeyLog for KeyLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((label.to_string(), secret.to_vec()));
    }
}

impl KeyLog {
    fn get(&self, label: &str) -> Option<Vec<u8>> {
        let l = self.0.lock().unwrap();
        l.iter()
            .rev()
            .find(|(n, _)| n == label)
            .map(|(_, s)| s.clone())
    }
}

/// One direction's keys.
struct Dir {
    alg: &'static aead::Algorithm,
    hkdf: hkdf::Algorithm,
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.3: the traffic secret (for key updates).
    secret: Vec<u8>,
}

impl Dir {
    fn new(seq: u64, s: &ConnectionTrafficSecrets, secret: Option<Vec<u8>>) -> Dir {
        let (alg, hkdf, key, iv) = match s {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, hkdf::HKDF_SHA256, key, iv)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, hkdf::HKDF_SHA384, key, iv)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256, key, iv)
            }
            _ => panic!("an unexpected cipher suite"),
        };
        Dir {
            alg,
            hkdf,
            key: LessSafeKey::new(UnboundKey::new(alg, key.as_ref()).expect("key")),
            iv: iv.as_ref().try_into().expect("12-byte IV"),
            seq,
            secret: secret.unwrap_or_default(),
        }
    }

    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// TLS 1.3 key update: the next secret, and the key and IV from it.
    fn update(&mut self) {
        assert!(!self.secret.is_empty(), "key updates are TLS 1.3's");
        self.secret = expand_label(self.hkdf, &self.secret, b"traffic upd", self.secret.len());
        let key = expand_label(self.hkdf, &self.secret, b"key", self.alg.key_len());
        let iv = expand_label(self.hkdf, &self.secret, b"iv", 12);
        self.key = LessSafeKey::new(UnboundKey::new(self.alg, &key).expect("key"));
        self.iv.copy_from_slice(&iv);
        self.seq = 0;
    }
}

/// HKDF-Expand-Label (RFC 8446 section 7.1) with an empty context.
fn expand_label(alg: hkdf::Algorithm, secret: &[u8], label: &[u8], len: usize) -> Vec<u8> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let out_len = (len as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
    let mut out = vec![0; len];
    hkdf::Prk::new_less_safe(alg, secret)
        .expand(&info, Len(len))
        .expect("expand")
        .fill(&mut out)
        .expect("fill");
    out
}

/// How the server ended a hand-made connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandEnd {
    /// close_notify.
    CloseNotify,
    /// A fatal alert with this description.
    Alert(u8),
    /// The socket ended or was reset without an alert.
    Abrupt(String),
}

/// A connection whose records after the handshake are made here.
pub struct HandTls {
    pub sock: TcpStream,
    pub tls13: bool,
    tx: Dir,
    rx: Dir,
    /// Received bytes not yet opened.
    inbuf: Vec<u8>,
    /// Application data opened and not yet parsed.
    plain: Vec<u8>,
}

impl HandTls {
    /// Completes a handshake with rustls (limited to `version`), then takes its keys.
    pub fn connect(addr: SocketAddr, root: &CertificateDer<'static>, version: Version) -> HandTls {
        let log = Arc::new(KeyLog::default());
        let mut config = (*client_config(&[root], Some(version))).clone();
        config.key_log = Arc::clone(&log) as Arc<dyn rustls::KeyLog>;
        config.enable_secret_extraction = true;
        let s = tls_handshake(tcp(addr), &Arc::new(config)).unwrap_or_else(|e| panic!("{e}"));
        let rustls::StreamOwned { conn, sock } = s;
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let secrets = conn.dangerous_extract_secrets().expect("extract secrets");
        let (tx_seq, tx) = &secrets.tx;
        let (rx_seq, rx) = &secrets.rx;
        let (tx_secret, rx_secret) = if tls13 {
            (
                log.get("CLIENT_TRAFFIC_SECRET_0"),
                log.get("SERVER_TRAFFIC_SECRET_0"),
            )
        } else {
            (None, None)
        };
        HandTls {
            sock,
            tls13,
            tx: Dir::new(*tx_seq, tx, tx_secret),
            rx: Dir::new(*rx_seq, rx, rx_secret),
            inbuf: Vec::new(),
            plain: Vec::new(),
        }
    }

    /// Connects and upgrades with a bearer token; the welcome is read.
    pub fn upgraded(
        addr: SocketAddr,
        root: &CertificateDer<'static>,
        version: Version,
        token: &str,
    ) -> HandTls {
        let mut t = HandTls::connect(addr, root, version);
        let request = t.record(CT_DATA, &RawTls::request(addr, token));
        t.send_raw(&request);
        t.read_upgrade();
        t
    }

    /// One record of (inner, for TLS 1.3) type `typ` carrying `payload`, however long.
    pub fn record(&mut self, typ: u8, payload: &[u8]) -> Vec<u8> {
        self.padded(typ, payload, 0)
    }

    /// The same with `pad` zero bytes of TLS 1.3 padding after the type.
    pub fn padded(&mut self, typ: u8, payload: &[u8], pad: usize) -> Vec<u8> {
        let nonce = self.tx.nonce();
        let mut body = payload.to_vec();
        let mut out;
        if self.tls13 {
            body.push(typ);
            body.resize(body.len() + pad, 0);
            let len = (body.len() + 16) as u16;
            let l = len.to_be_bytes();
            out = vec![CT_DATA, 3, 3, l[0], l[1]];
            let header: [u8; 5] = out[..5].try_into().unwrap();
            self.tx
                .key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(header),
                    &mut body,
                )
                .expect("seal");
        } else {
            assert_eq!(pad, 0, "TLS 1.2 has no padding");
            let mut aad = [0u8; 13];
            aad[..8].copy_from_slice(&self.tx.seq.to_be_bytes());
            aad[8] = typ;
            aad[9] = 3;
            aad[10] = 3;
            aad[11..].copy_from_slice(&(payload.len() as u16).to_be_bytes());
            let explicit = self.tx.alg != &aead::CHACHA20_POLY1305;
            let nonce = if explicit {
                let mut n = [0u8; 12];
                n[..4].copy_from_slice(&self.tx.iv[..4]);
                n[4..].copy_from_slice(&nonce[4..]);
                n
            } else {
                nonce
            };
            self.tx
                .key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut body,
                )
                .expect("seal");
            let len = body.len() + if explicit { 8 } else { 0 };
            let l = (len as u16).to_be_bytes();
            out = vec![typ, 3, 3, l[0], l[1]];
            if explicit {
                out.extend_from_slice(&nonce[4..]);
            }
        }
        out.extend_from_slice(&body);
        self.tx.seq += 1;
        out
    }

    /// A KeyUpdate in a record of its own; later records use the new key.
    pub fn key_update(&mut self, request: bool) -> Vec<u8> {
        let r = self.record(CT_HANDSHAKE, &key_update_msg(request));
        self.tx.update();
        r
    }

    /// Moves the sending key on, after a KeyUpdate made some other way.
    pub fn update_tx(&mut self) {
        self.tx.update();
    }

    /// Writes bytes to the socket as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write to the socket");
    }

    /// A masked WebSocket ping with `payload`, as application data (one record).
    pub fn ping_record(&mut self, payload: &[u8]) -> Vec<u8> {
        let frame = super::encode_frame(true, 0, OP_PING, payload, Some([1, 2, 3, 4]));
        self.record(CT_DATA, &frame)
    }

    /// Reads the server's records until a frame is complete; the end if the server ended
    /// the connection first.
    pub fn read_frame(&mut self) -> Result<Frame, HandEnd> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some((f, used)) = parse_server_frame(&self.plain) {
                self.plain.drain(..used);
                return Ok(f);
            }
            assert!(Instant::now() < deadline, "no frame within {IO_TIMEOUT:?}");
            self.read_records()?;
        }
    }

    /// Sends a ping and expects its pong (other frames before it are skipped).
    pub fn expect_pong(&mut self, payload: &[u8]) {
        let ping = self.ping_record(payload);
        self.send_raw(&ping);
        loop {
            match self.read_frame() {
                Ok(f) if f.opcode == OP_PONG && f.payload == payload => return,
                Ok(_) => {}
                Err(end) => panic!("the connection ended before the pong: {end:?}"),
            }
        }
    }

    /// Reads until the server ends the connection, skipping frames; how it ended.
    pub fn expect_end(&mut self) -> HandEnd {
        loop {
            if let Err(end) = self.read_frame() {
                return end;
            }
        }
    }

    /// Reads the 101 and the welcome; returns the welcome.
    fn read_upgrade(&mut self) -> Value {
        let head_end = loop {
            if let Some(p) = find(&self.plain, b"\r\n\r\n") {
                break p + 4;
            }
            if let Err(end) = self.read_records() {
                panic!("the connection ended before the 101: {end:?}");
            }
        };
        let head = String::from_utf8_lossy(&self.plain[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "expected 101: {head:?}");
        self.plain.drain(..head_end);
        let f = self.read_frame().expect("the welcome");
        assert_eq!(f.opcode, OP_TEXT, "{f:?}");
        let w = f.json();
        assert_eq!(w["type"], "welcome", "{w}");
        w
    }

    /// Reads once from the socket and opens the complete records: application data goes
    /// to `plain`, session tickets are skipped, key updates followed. Err when the server
    /// ended the connection.
    fn read_records(&mut self) -> Result<(), HandEnd> {
        let mut chunk = [0u8; 64 * 1024];
        let n = match self.sock.read(&mut chunk) {
            Ok(0) => return Err(HandEnd::Abrupt("EOF".into())),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("nothing from the server within the read timeout")
            }
            Err(e) => return Err(HandEnd::Abrupt(e.to_string())),
        };
        self.inbuf.extend_from_slice(&chunk[..n]);
        while self.inbuf.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([self.inbuf[3], self.inbuf[4]]));
            if self.inbuf.len() < 5 + len {
                break;
            }
            let rec: Vec<u8> = self.inbuf.drain(..5 + len).collect();
            let (typ, body) = self.open(&rec);
            match (typ, body.as_slice()) {
                (CT_DATA, _) => self.plain.extend_from_slice(&body),
                (CT_ALERT, [_, 0]) => return Err(HandEnd::CloseNotify),
                (CT_ALERT, [_, desc]) => return Err(HandEnd::Alert(*desc)),
                (CT_HANDSHAKE, [24, ..]) => self.rx.update(),
                (CT_HANDSHAKE, [4, ..]) => {} // NewSessionTicket
                other => panic!("unexpected record from the server: {other:?}"),
            }
        }
        Ok(())
    }

    /// Opens one of the server's records: its (inner) type and plaintext.
    fn open(&mut self, rec: &[u8]) -> (u8, Vec<u8>) {
        let header: [u8; 5] = rec[..5].try_into().unwrap();
        let nonce = self.rx.nonce();
        let seq = self.rx.seq;
        self.rx.seq += 1;
        if self.tls13 {
            let mut body = rec[5..].to_vec();
            let plain = self
                .rx
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(header),
                    &mut body,
                )
                .expect("the server's record opens");
            let end = plain.iter().rposition(|&b| b != 0).expect("a content type");
            return (plain[end], plain[..end].to_vec());
        }
        let explicit = self.rx.alg != &aead::CHACHA20_POLY1305;
        let (nonce, body) = if explicit {
            let mut n = [0u8; 12];
            n[..4].copy_from_slice(&self.rx.iv[..4]);
            n[4..].copy_from_slice(&rec[5..13]);
            (n, &rec[13..])
        } else {
            (nonce, &rec[5..])
        };
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&seq.to_be_bytes());
        aad[8] = header[0];
        aad[9] = 3;
        aad[10] = 3;
        aad[11..].copy_from_slice(&((body.len() - 16) as u16).to_be_bytes());
        let mut body = body.to_vec();
        let plain = self
            .rx
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .expect("the server's record opens");
        (header[0], plain.to_vec())
    }
}
