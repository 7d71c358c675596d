//! `--payload-json`: a push `data` field that compresses like real JSON. The `pad` string
//! of one repeated letter shrinks a hundredfold under deflate, a best case no real push
//! reaches; this document repeats its field names from record to record, as API JSON
//! does, with values that vary (random ids, codes, numbers, a few status words), and ends
//! with a note of random words to reach the size asked for.

use std::fmt::Write as _;

/// A small, seeded generator (SplitMix64): the same seed gives the same document, so runs
/// compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// One of `xs`.
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// `n` characters of `alphabet`.
    fn code(&mut self, alphabet: &[u8], n: usize, out: &mut String) {
        for _ in 0..n {
            out.push(alphabet[self.below(alphabet.len() as u64) as usize] as char);
        }
    }
}

const STATUS: &[&str] = &["new", "open", "partially_filled", "filled", "cancelled"];
const SIDE: &[&str] = &["buy", "sell"];
const VENUE: &[&str] = &["XNAS", "XNYS", "ARCX", "BATS", "IEXG", "EDGX"];
const WORDS: &[&str] = &[
    "price", "update", "order", "account", "limit", "market", "session", "risk", "check", "passed",
    "filled", "queued", "client", "report", "daily", "volume", "spread", "quote", "level", "book",
    "trade", "venue", "route", "alert", "margin", "position", "closed",
];
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const HEX: &[u8] = b"0123456789abcdef";

/// One order-like record.
fn record(r: &mut Rng, out: &mut String) {
    let _ = write!(
        out,
        "{{\"id\":{},\"account\":\"acc-",
        1_000_000 + r.below(9_000_000)
    );
    r.code(HEX, 8, out);
    out.push_str("\",\"symbol\":\"");
    let len = 3 + r.below(2) as usize;
    r.code(UPPER, len, out);
    let price = 1 + r.below(500_000);
    let _ = write!(
        out,
        "\",\"side\":\"{}\",\"status\":\"{}\",\"venue\":\"{}\",\"qty\":{},\"price\":{}.{:02},\"ts\":{}}}",
        r.pick(SIDE),
        r.pick(STATUS),
        r.pick(VENUE),
        1 + r.below(2000),
        price / 100,
        price % 100,
        1_733_000_000_000 + r.below(100_000_000)
    );
}

/// A JSON object of `bytes` bytes (at least `{"items":[]}`, 12 bytes), the same for the
/// same `seed`: `{"items":[records...],"note":"words..."}`.
pub fn json_doc(bytes: usize, seed: u64) -> String {
    let mut r = Rng(seed);
    let mut out = String::with_capacity(bytes + 16);
    out.push_str("{\"items\":[");
    let mut rec = String::new();
    loop {
        rec.clear();
        record(&mut r, &mut rec);
        // `,` before it, `]}` after the array.
        let sep = usize::from(!out.ends_with('['));
        if out.len() + sep + rec.len() + 2 > bytes {
            break;
        }
        if sep == 1 {
            out.push(',');
        }
        out.push_str(&rec);
    }
    out.push(']');
    // `,"note":""` is 10 bytes before the closing `}`; its words fill the rest exactly.
    let left = bytes.saturating_sub(out.len() + 1);
    if left >= 12 {
        let mut words = left - 10;
        out.push_str(",\"note\":\"");
        while words > 0 {
            let w = r.pick(WORDS);
            if w.len() < words {
                out.push_str(w);
                out.push(' ');
                words -= w.len() + 1;
            } else {
                out.push_str(&w[..words]);
                words = 0;
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::DeflateEncoder, Compression};
    use std::io::Write as _;

    fn deflated_len(s: &str) -> usize {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::new(3));
        e.write_all(s.as_bytes()).unwrap();
        e.finish().unwrap().len()
    }

    #[test]
    fn documents_are_json_of_the_size_asked() {
        for bytes in [0, 12, 40, 100, 256, 2000, 2001, 65536] {
            let d = json_doc(bytes, 7);
            let v: serde_json::Value =
                serde_json::from_str(&d).unwrap_or_else(|e| panic!("{bytes}: {e}: {d}"));
            assert!(v["items"].is_array(), "{d}");
            if bytes >= 40 {
                assert_eq!(d.len(), bytes, "{d}");
            }
        }
        assert_eq!(json_doc(2000, 1), json_doc(2000, 1));
        assert_ne!(json_doc(2000, 1), json_doc(2000, 2));
        let v: serde_json::Value = serde_json::from_str(&json_doc(2000, 3)).unwrap();
        assert!(v["items"].as_array().unwrap().len() >= 10);
    }

    #[test]
    fn it_compresses_like_json_not_like_padding() {
        let d = json_doc(2000, 11);
        let z = deflated_len(&d);
        let pad = deflated_len(&"x".repeat(2000));
        // Typical JSON shrinks 2 to 4 times at this size; one repeated letter 100 times.
        assert!(z > 2000 / 4 && z < 2000 / 2, "{z}");
        assert!(pad < 2000 / 50, "{pad}");
    }
}
