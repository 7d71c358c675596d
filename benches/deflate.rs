//! permessage-deflate: compressing one push frame (done once per push, whatever the
//! number of recipients) and inflating one client message, for JSON of 2 KB and 16 KB.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use throng::deflate::{Deflater, Inflater};
use throng::messages;

/// A JSON array of order updates of about `len` bytes: repeated field names with
/// varying values, as real pushes have.
fn orders(len: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0u64;
    while s.len() < len {
        if i > 0 {
            s.push(',');
        }
        let price = 10_000 + (i * 7919) % 5_000;
        s.push_str(&format!(
            r#"{{"order_id":"ord-{:08x}","symbol":"{}","side":"{}","qty":{},"price":{}.{:02},"status":"{}"}}"#,
            i.wrapping_mul(2_654_435_761),
            ["ACME", "GLOBX", "INITECH", "UMBR"][(i % 4) as usize],
            if i % 3 == 0 { "sell" } else { "buy" },
            (i * 37) % 1000 + 1,
            price / 100,
            price % 100,
            ["open", "partially_filled", "filled"][(i % 3) as usize],
        ));
        i += 1;
    }
    s.push(']');
    s
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    g.measurement_time(Duration::from_secs(3));
    for (name, len) in [("2KB", 2048), ("16KB", 16 * 1024)] {
        let data = orders(len);
        let frame = messages::push_frame(&data, 1_700_000_000_000, Some(42), None, None);
        let mut d = Deflater::default();
        let z = d.frame(&frame).expect("JSON compresses");
        eprintln!(
            "deflate/{name}: frame {} B -> {} B ({:.0}%)",
            frame.len(),
            z.len(),
            100.0 * z.len() as f64 / frame.len() as f64
        );
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_with_input(BenchmarkId::new("compress_frame", name), &frame, |b, f| {
            b.iter(|| black_box(d.frame(black_box(f))))
        });
        let offset = match z[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let payload = z[offset..].to_vec();
        let mut i = Inflater::new();
        let mut out = Vec::new();
        g.bench_with_input(
            BenchmarkId::new("inflate_message", name),
            &payload,
            |b, p| {
                b.iter(|| {
                    i.message(black_box(p), 1 << 20, &mut out)
                        .expect("inflates");
                    black_box(out.len())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
