//! WebSocket frame encode (server text frames, push messages) and decode (header parse
//! plus unmasking of a masked client frame), for a small and a 16 KiB payload, and the
//! `welcome` written once per handshake.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use throng::frame::{self, Kind};
use throng::messages;

const SIZES: [(&str, usize); 2] = [("64B", 64), ("16KiB", 16 * 1024)];
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A JSON string literal of exactly `len` bytes (quotes included), usable as `data`.
fn json_data(len: usize) -> String {
    let mut s = String::with_capacity(len);
    s.push('"');
    while s.len() < len - 1 {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s.push('"');
    s
}

/// A masked client text frame carrying `payload`, as a browser would send it.
fn masked_client_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
    f
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, len) in SIZES {
        let data = json_data(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("text", name), &data, |b, d| {
            b.iter(|| frame::text(black_box(d.as_bytes())))
        });
        g.bench_with_input(BenchmarkId::new("push_frame", name), &data, |b, d| {
            b.iter(|| {
                messages::push_frame(
                    black_box(d),
                    black_box(1_767_225_600_000),
                    Some(black_box(42)),
                    Some("news.sports"),
                    Some("msg-0001"),
                )
            })
        });
    }
    // One per handshake.
    let limits = messages::WelcomeLimits {
        ping_interval_ms: 25_000,
        idle_timeout_ms: 60_000,
        client_rate: 100,
        max_message_size: 65_536,
        max_client_data_bytes: 16_384,
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("welcome_frame", |b| {
        b.iter(|| {
            messages::welcome_frame(
                black_box("7f3c9a1e00d2"),
                black_box("user-000042"),
                black_box("a1b2c3d4e5f60718"),
                black_box(0),
                black_box(&limits),
                None,
            )
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_decode");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, len) in SIZES {
        let payload = json_data(len);
        let wire = masked_client_frame(payload.as_bytes());
        // Sanity: the frame round-trips before it is measured.
        let mut check = wire.clone();
        let head = frame::parse_head(&check, 1 << 20, false).unwrap().unwrap();
        assert_eq!(head.kind, Kind::Text);
        assert_eq!(head.total_len(), wire.len());
        frame::unmask(&mut check[head.header_len..], head.mask);
        assert_eq!(&check[head.header_len..], payload.as_bytes());

        g.throughput(Throughput::Bytes(len as u64));
        // In place, as the shard does in its read buffer; unmasking twice restores the
        // bytes, and the cost is the same either way.
        let mut buf = wire.clone();
        g.bench_function(BenchmarkId::new("parse_head+unmask", name), |b| {
            b.iter(|| {
                let head = frame::parse_head(black_box(&buf), 1 << 20, false)
                    .unwrap()
                    .unwrap();
                let end = head.total_len();
                frame::unmask(&mut buf[head.header_len..end], head.mask);
                black_box(&buf);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
