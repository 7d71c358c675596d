//! The TLS record layer after the handshake (RFC 8446 section 5; RFC 5246 section 6.2
//! with AEAD suites, RFC 5288 and RFC 7905): what a connection keeps, and how its records
//! are sealed and opened with ring's AEADs.
//!
//! A connection keeps raw keys, IVs, sequence numbers and (TLS 1.3) traffic secrets. The
//! AEAD key is built per batch of records rather than kept per connection: ring's expanded
//! AES-GCM key is hundreds of bytes, and a batch is one read or one flush.

use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};
use zeroize::Zeroize;

use super::capture::{Captured, Secret};
use super::TlsError;

/// Largest plaintext a record carries.
pub(crate) const MAX_PLAIN: usize = 16 * 1024;
const HEADER: usize = 5;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM sends the nonce's last 8 bytes before the ciphertext.
const EXPLICIT: usize = 8;
/// Records sealed under one TLS 1.3 key before it is updated: well below AES-GCM's
/// confidentiality limit of 2^24.5 records (RFC 8446 section 5.5).
const REKEY_AFTER: u64 = 1 << 23;

/// Records in a row that carry no application data (empty ones, key updates, warning
/// alerts) before the connection is refused: rustls's and BoringSSL's limit. Each costs
/// a decryption, and a key update three key derivations, for nothing delivered.
const MAX_IDLE_RECORDS: u8 = 32;
/// Warning alerts (user_canceled) a connection may send in its life, as in rustls.
const MAX_WARNINGS: u8 = 4;
/// TLS 1.3: key updates the acceptor's rustls may have applied before the session was
/// extracted (a client that updates before or with its upgrade request), followed here
/// to find the extracted keys' traffic secrets.
const MAX_EARLY_UPDATES: usize = 32;

const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_DATA: u8 = 23;
const HS_KEY_UPDATE: u8 = 24;
/// A KeyUpdate message without its last byte (`request_update`).
const KEY_UPDATE_HEAD: [u8; 4] = [HS_KEY_UPDATE, 0, 0, 1];
const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;

/// Fatal alerts the record layer sends when it refuses a record (RFC 8446 section 6.2).
pub(crate) const UNEXPECTED_MESSAGE: u8 = 10;
pub(crate) const BAD_RECORD_MAC: u8 = 20;
pub(crate) const RECORD_OVERFLOW: u8 = 22;
pub(crate) const DECODE_ERROR: u8 = 50;
pub(crate) const INTERNAL_ERROR: u8 = 80;

/// A record the peer should not have sent: the alert that says so, and why.
fn refused(alert: u8, reason: &'static str) -> TlsError {
    TlsError::Refused { alert, reason }
}

/// The negotiated AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20,
}

impl Cipher {
    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::Chacha20 => &aead::CHACHA20_POLY1305,
        }
    }

    /// The TLS 1.3 suite's hash (TLS_AES_256_GCM_SHA384 is the one SHA-384 suite).
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Cipher::Aes256Gcm => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }

    fn key_len(self) -> usize {
        self.aead().key_len()
    }
}

/// One direction's protection state.
struct Keys {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.3: the traffic secret the key and IV came from (empty for TLS 1.2).
    secret: Secret,
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl Keys {
    fn from_rustls(
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
        secret: Option<Secret>,
    ) -> Result<(Cipher, Keys), TlsError> {
        let (cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Cipher::Chacha20, key, iv),
            _ => return Err(TlsError::Record("unsupported cipher suite")),
        };
        let mut keys = Keys {
            key: [0; 32],
            iv: [0; 12],
            seq,
            secret: secret.unwrap_or_default(),
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != cipher.key_len() || iv.len() != keys.iv.len() {
            return Err(TlsError::Record("unexpected key or IV length"));
        }
        keys.key[..key.len()].copy_from_slice(key);
        keys.iv.copy_from_slice(iv);
        Ok((cipher, keys))
    }

    fn aead_key(&self, cipher: Cipher) -> Result<LessSafeKey, TlsError> {
        UnboundKey::new(cipher.aead(), &self.key[..cipher.key_len()])
            .map(LessSafeKey::new)
            .map_err(|_| TlsError::Record("cannot build the AEAD key"))
    }

    /// The per-record nonce: the IV with the sequence number XORed into its end.
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// Derives this key and IV from `secret` (one PRK for both).
    fn derive(&mut self, cipher: Cipher, secret: &[u8]) -> Result<(), TlsError> {
        let prk = hkdf::Prk::new_less_safe(cipher.hkdf(), secret);
        expand_label(&prk, b"key", &mut self.key[..cipher.key_len()])?;
        expand_label(&prk, b"iv", &mut self.iv)?;
        Ok(())
    }

    /// TLS 1.3: moves the caught traffic secret forward, one key update at a time, to
    /// the one this key and IV came from. A client's key update that reached rustls
    /// during the upgrade moved rustls's keys on but not the caught secret.
    fn catch_up(&mut self, cipher: Cipher) -> Result<(), TlsError> {
        let mut check = Keys {
            key: [0; 32],
            iv: [0; 12],
            seq: 0,
            secret: self.secret.clone(),
        };
        let first = self.secret.bytes;
        check.derive(cipher, &first[..usize::from(self.secret.len)])?;
        for _ in 0..=MAX_EARLY_UPDATES {
            if check.key == self.key && check.iv == self.iv {
                self.secret = std::mem::take(&mut check.secret);
                return Ok(());
            }
            check.update(cipher)?;
        }
        Err(refused(
            UNEXPECTED_MESSAGE,
            "traffic secrets do not match the keys (too many key updates during the upgrade)",
        ))
    }

    /// TLS 1.3 key update: the next traffic secret, and the key and IV from it.
    fn update(&mut self, cipher: Cipher) -> Result<(), TlsError> {
        let len = usize::from(self.secret.len);
        if len == 0 {
            return Err(TlsError::Record("no traffic secret to update"));
        }
        let mut next = [0u8; 48];
        let prk = hkdf::Prk::new_less_safe(cipher.hkdf(), self.secret.as_bytes());
        expand_label(&prk, b"traffic upd", &mut next[..len])?;
        self.secret.bytes[..len].copy_from_slice(&next[..len]);
        next.zeroize();
        let secret = self.secret.bytes;
        self.derive(cipher, &secret[..len])?;
        self.seq = 0;
        Ok(())
    }
}

/// HKDF-Expand-Label (RFC 8446 section 7.1) with an empty context.
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> Result<(), TlsError> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let err = |_| TlsError::Record("key derivation failed");
    let out_len = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len()))
        .map_err(err)?
        .fill(out)
        .map_err(err)
}

/// A connection's TLS state once the handshake is over.
pub(crate) struct Session {
    tls13: bool,
    cipher: Cipher,
    /// The client asked for a key update: ours goes out before the next records.
    update_due: bool,
    /// close_notify (or a fatal alert) was sealed: nothing more may be.
    closed: bool,
    /// Records in a row without application data (`MAX_IDLE_RECORDS`).
    idle_records: u8,
    /// Warning alerts received (`MAX_WARNINGS`).
    warnings: u8,
    /// Bytes of a KeyUpdate split across records received so far (0: none pending).
    key_update_part: u8,
    tx: Keys,
    rx: Keys,
}

/// What `Session::open` made of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opening {
    /// Bytes of complete records used; the rest starts an incomplete record.
    pub consumed: usize,
    /// Application data now at the front of the buffer.
    pub plain: usize,
    /// The client sent close_notify: nothing after it counts.
    pub peer_closed: bool,
}

impl Session {
    /// The session rustls negotiated: its keys and sequence numbers, and for TLS 1.3 the
    /// traffic secrets caught during the handshake (checked against the keys).
    pub(crate) fn new(
        tls13: bool,
        secrets: ExtractedSecrets,
        mut caught: Captured,
    ) -> Result<Session, TlsError> {
        let (tx_seq, tx) = &secrets.tx;
        let (rx_seq, rx) = &secrets.rx;
        let (tx_secret, rx_secret) = if tls13 {
            match (caught.server.take(), caught.client.take()) {
                (Some(s), Some(c)) => (Some(s), Some(c)),
                _ => return Err(TlsError::Record("traffic secrets were not caught")),
            }
        } else {
            (None, None)
        };
        let (cipher, mut tx) = Keys::from_rustls(*tx_seq, tx, tx_secret)?;
        let (rx_cipher, mut rx) = Keys::from_rustls(*rx_seq, rx, rx_secret)?;
        if cipher != rx_cipher {
            return Err(TlsError::Record(
                "the two directions disagree on the cipher",
            ));
        }
        if tls13 {
            // The secrets must be the ones the keys came from, or a key update would
            // derive garbage: derive the keys again and compare (after the key updates
            // rustls may have followed).
            tx.catch_up(cipher)?;
            rx.catch_up(cipher)?;
        }
        Ok(Session {
            tls13,
            cipher,
            update_due: false,
            closed: false,
            idle_records: 0,
            warnings: 0,
            key_update_part: 0,
            tx,
            rx,
        })
    }

    /// Starts sealing records onto `out`; a key update the client asked for (or one the
    /// confidentiality limit calls for) goes first.
    pub(crate) fn sealer<'a>(&'a mut self, out: &'a mut Vec<u8>) -> Result<Sealer<'a>, TlsError> {
        let key = self.tx.aead_key(self.cipher)?;
        let mut s = Sealer {
            session: self,
            key,
            out,
            open: None,
            #[cfg(test)]
            fail_next_seal: false,
        };
        let session = &*s.session;
        if session.tls13 && (session.update_due || session.tx.seq >= REKEY_AFTER) {
            s.record(CT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 0])?;
            let cipher = s.session.cipher;
            s.session.tx.update(cipher)?;
            s.session.update_due = false;
            s.key = s.session.tx.aead_key(cipher)?;
        }
        Ok(s)
    }

    /// Seals `plain` as application data onto `out`.
    #[cfg(test)]
    pub(crate) fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut s = self.sealer(out)?;
        s.push(plain);
        s.finish()
    }

    /// Opens the complete records at the start of `buf` in place: application data is
    /// moved to the front, alerts and key updates are handled.
    pub(crate) fn open(&mut self, buf: &mut [u8]) -> Result<Opening, TlsError> {
        let max_cipher = if self.tls13 {
            MAX_PLAIN + 256
        } else {
            MAX_PLAIN + 2048
        };
        let mut key = self.rx.aead_key(self.cipher)?;
        let (mut pos, mut plain) = (0, 0);
        while buf.len() - pos >= HEADER {
            let typ = buf[pos];
            let len = usize::from(u16::from_be_bytes([buf[pos + 3], buf[pos + 4]]));
            if buf[pos + 1] != 3 {
                return Err(refused(DECODE_ERROR, "not a TLS record"));
            }
            if len > max_cipher {
                return Err(refused(RECORD_OVERFLOW, "record longer than TLS allows"));
            }
            if buf.len() - pos < HEADER + len {
                break;
            }
            let start = pos;
            pos += HEADER + len;
            let (inner, range) = self.open_record(&key, typ, &mut buf[start..pos])?;
            let range = start + range.start..start + range.end;
            if self.key_update_part != 0 && inner != CT_HANDSHAKE {
                // RFC 8446 section 5.1: nothing may come between a handshake message's
                // fragments.
                return Err(refused(UNEXPECTED_MESSAGE, "a record inside a key update"));
            }
            if inner == CT_DATA && !range.is_empty() {
                self.idle_records = 0;
            } else {
                self.idle_records += 1;
                if self.idle_records > MAX_IDLE_RECORDS {
                    return Err(refused(
                        UNEXPECTED_MESSAGE,
                        "too many records in a row without application data",
                    ));
                }
            }
            match inner {
                CT_DATA => {
                    let n = range.len();
                    buf.copy_within(range, plain);
                    plain += n;
                }
                CT_ALERT => match buf[range] {
                    [_, ALERT_CLOSE_NOTIFY] => {
                        return Ok(Opening {
                            consumed: pos,
                            plain,
                            peer_closed: true,
                        })
                    }
                    [ALERT_WARNING, ALERT_USER_CANCELED] if self.warnings < MAX_WARNINGS => {
                        self.warnings += 1;
                    }
                    [ALERT_WARNING, ALERT_USER_CANCELED] => {
                        return Err(refused(UNEXPECTED_MESSAGE, "too many warning alerts"))
                    }
                    [_, desc] => return Err(TlsError::Alert(desc)),
                    _ => return Err(refused(DECODE_ERROR, "malformed alert")),
                },
                CT_HANDSHAKE if self.tls13 => {
                    if self.handshake_record(&buf[range])? {
                        key = self.rx.aead_key(self.cipher)?;
                    }
                }
                CT_HANDSHAKE => {
                    return Err(refused(
                        UNEXPECTED_MESSAGE,
                        "renegotiation is not supported",
                    ));
                }
                _ => return Err(refused(UNEXPECTED_MESSAGE, "unexpected record type")),
            }
        }
        Ok(Opening {
            consumed: pos,
            plain,
            peer_closed: false,
        })
    }

    /// Decrypts one record in place; its content type and where its plaintext lies.
    fn open_record(
        &mut self,
        key: &LessSafeKey,
        typ: u8,
        rec: &mut [u8],
    ) -> Result<(u8, Range<usize>), TlsError> {
        let bad = |_| refused(BAD_RECORD_MAC, "a record failed to decrypt (bad MAC)");
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&rec[..HEADER]);
        if self.tls13 {
            if typ != CT_DATA {
                return Err(refused(
                    UNEXPECTED_MESSAGE,
                    "an unprotected record after the handshake",
                ));
            }
            let nonce = Nonce::assume_unique_for_key(self.rx.nonce());
            let plain = key
                .open_in_place(nonce, Aad::from(header), &mut rec[HEADER..])
                .map_err(bad)?;
            self.rx.seq += 1;
            // RFC 8446 section 5.4: TLSInnerPlaintext (padding included) is at most
            // 2^14 + 1 bytes.
            if plain.len() > MAX_PLAIN + 1 {
                return Err(refused(
                    RECORD_OVERFLOW,
                    "record plaintext longer than 2^14",
                ));
            }
            // TLSInnerPlaintext: content, then the type, then zero padding.
            let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                return Err(refused(
                    UNEXPECTED_MESSAGE,
                    "a record without a content type",
                ));
            };
            return Ok((plain[end], HEADER..HEADER + end));
        }
        if !matches!(typ, CT_ALERT | CT_HANDSHAKE | CT_DATA) {
            return Err(refused(UNEXPECTED_MESSAGE, "unexpected record type"));
        }
        let explicit = if self.cipher == Cipher::Chacha20 {
            0
        } else {
            EXPLICIT
        };
        let Some(plain_len) = rec.len().checked_sub(HEADER + explicit + TAG) else {
            return Err(refused(DECODE_ERROR, "record shorter than its tag"));
        };
        // RFC 5246 section 6.2.1: at most 2^14 bytes of plaintext.
        if plain_len > MAX_PLAIN {
            return Err(refused(
                RECORD_OVERFLOW,
                "record plaintext longer than 2^14",
            ));
        }
        let nonce = if explicit == 0 {
            self.rx.nonce()
        } else {
            let mut n = [0u8; 12];
            n[..4].copy_from_slice(&self.rx.iv[..4]);
            n[4..].copy_from_slice(&rec[HEADER..HEADER + EXPLICIT]);
            n
        };
        let aad = aad12(self.rx.seq, typ, plain_len);
        let body = HEADER + explicit;
        key.open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut rec[body..],
        )
        .map_err(bad)?;
        self.rx.seq += 1;
        Ok((typ, body..body + plain_len))
    }

    /// A TLS 1.3 handshake record from the client: only a KeyUpdate, which may be split
    /// across records but must end its last one (RFC 8446 section 5.1: a handshake
    /// message must not span a key change). True when the receive key changed.
    fn handshake_record(&mut self, bytes: &[u8]) -> Result<bool, TlsError> {
        if bytes.is_empty() {
            return Err(refused(
                UNEXPECTED_MESSAGE,
                "a zero-length handshake record",
            ));
        }
        // The message so far: what earlier records carried, then this one's bytes.
        let have = usize::from(self.key_update_part);
        let mut msg = [0u8; KEY_UPDATE_HEAD.len() + 1];
        msg[..have].copy_from_slice(&KEY_UPDATE_HEAD[..have]);
        let take = bytes.len().min(msg.len() - have);
        msg[have..have + take].copy_from_slice(&bytes[..take]);
        let got = have + take;
        let head = got.min(KEY_UPDATE_HEAD.len());
        if msg[..head] != KEY_UPDATE_HEAD[..head] {
            return Err(refused(UNEXPECTED_MESSAGE, "unexpected handshake message"));
        }
        if take < bytes.len() {
            return Err(refused(
                UNEXPECTED_MESSAGE,
                "a key update must end its record",
            ));
        }
        if got < msg.len() {
            self.key_update_part = got as u8;
            return Ok(false);
        }
        let request = msg[KEY_UPDATE_HEAD.len()];
        self.key_update_part = 0;
        match request {
            0 => {}
            1 => self.update_due = true,
            _ => return Err(refused(DECODE_ERROR, "malformed key update")),
        }
        self.rx.update(self.cipher)?;
        Ok(true)
    }

    /// Makes the next sealer update the sending key, as reaching `REKEY_AFTER` does.
    #[cfg(test)]
    pub(crate) fn force_rekey_for_test(&mut self) {
        self.update_due = true;
    }

    /// Whether close_notify was sealed.
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }
}

/// TLS 1.2's additional data: sequence number, type, version and plaintext length.
fn aad12(seq: u64, typ: u8, plain_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
    aad
}

/// Seals application data onto a buffer, coalescing what is pushed into records of up to
/// 16 KiB. A record still open when the sealer goes is sealed then, so plaintext never
/// stays in the output.
pub(crate) struct Sealer<'a> {
    session: &'a mut Session,
    key: LessSafeKey,
    out: &'a mut Vec<u8>,
    /// Where the open application data record's header is.
    open: Option<usize>,
    /// Makes the next seal fail, as ring would, to test what the output keeps then.
    #[cfg(test)]
    fail_next_seal: bool,
}

impl Sealer<'_> {
    fn body_offset(&self) -> usize {
        if !self.session.tls13 && self.session.cipher != Cipher::Chacha20 {
            HEADER + EXPLICIT
        } else {
            HEADER
        }
    }

    /// Appends application data.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let start = match self.open {
                Some(s) => s,
                None => {
                    let s = self.out.len();
                    let body = self.body_offset();
                    self.out.resize(s + body, 0);
                    self.open = Some(s);
                    s
                }
            };
            let used = self.out.len() - start - self.body_offset();
            let take = bytes.len().min(MAX_PLAIN - used);
            self.out.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if used + take == MAX_PLAIN {
                self.close_open();
            }
        }
    }

    /// Seals a close_notify alert after what was pushed.
    pub(crate) fn close_notify(&mut self) -> Result<(), TlsError> {
        self.close_open();
        self.record(CT_ALERT, &[ALERT_WARNING, ALERT_CLOSE_NOTIFY])?;
        self.session.closed = true;
        Ok(())
    }

    /// Seals a fatal alert after what was pushed: the last record of the connection.
    pub(crate) fn fatal_alert(&mut self, desc: u8) -> Result<(), TlsError> {
        self.close_open();
        self.record(CT_ALERT, &[ALERT_FATAL, desc])?;
        self.session.closed = true;
        Ok(())
    }

    /// Seals the open record.
    pub(crate) fn finish(mut self) -> Result<(), TlsError> {
        self.seal_open(CT_DATA)
    }

    /// Seals the open record (a failure leaves nothing of it in the output).
    fn close_open(&mut self) {
        let _ = self.seal_open(CT_DATA);
    }

    /// Makes the next seal fail.
    #[cfg(test)]
    pub(crate) fn fail_next_seal_for_test(&mut self) {
        self.fail_next_seal = true;
    }

    /// A whole record of type `typ` holding `payload`.
    fn record(&mut self, typ: u8, payload: &[u8]) -> Result<(), TlsError> {
        self.close_open();
        let s = self.out.len();
        let body = self.body_offset();
        self.out.resize(s + body, 0);
        self.out.extend_from_slice(payload);
        self.open = Some(s);
        self.seal_open(typ)
    }

    /// Encrypts the open record in place and writes its header. On failure the record
    /// is cut from the output, so its plaintext never goes out whatever the caller does.
    fn seal_open(&mut self, typ: u8) -> Result<(), TlsError> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        let sealed = self.seal_at(start, typ);
        if sealed.is_err() {
            self.out.truncate(start);
        }
        sealed
    }

    fn seal_at(&mut self, start: usize, typ: u8) -> Result<(), TlsError> {
        let body = start + self.body_offset();
        let s = &mut *self.session;
        let tx = &mut s.tx;
        let nonce = tx.nonce();
        let mut aad = [0u8; 13];
        let aad_len = if s.tls13 {
            self.out.push(typ);
            let h = header(CT_DATA, self.out.len() - body + TAG);
            self.out[start..start + HEADER].copy_from_slice(&h);
            aad[..HEADER].copy_from_slice(&h);
            HEADER
        } else {
            let plain_len = self.out.len() - body;
            let len = body - start - HEADER + plain_len + TAG;
            self.out[start..start + HEADER].copy_from_slice(&header(typ, len));
            if body - start > HEADER {
                self.out[start + HEADER..body].copy_from_slice(&nonce[4..]);
            }
            aad = aad12(tx.seq, typ, plain_len);
            aad.len()
        };
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_seal) {
            return Err(TlsError::Record("sealing failed"));
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..aad_len]),
                &mut self.out[body..],
            )
            .map_err(|_| TlsError::Record("sealing failed"))?;
        self.out.extend_from_slice(tag.as_ref());
        tx.seq += 1;
        Ok(())
    }
}

impl Drop for Sealer<'_> {
    fn drop(&mut self) {
        self.close_open();
    }
}

fn header(typ: u8, len: usize) -> [u8; HEADER] {
    let l = (len as u16).to_be_bytes();
    [typ, 3, 3, l[0], l[1]]
}
