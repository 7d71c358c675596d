//! The shard's timing wheel with a million armed timers: insert, cancel, and advance
//! until every one has fired (cascades included).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use throng::wheel::{TimerId, Wheel};

const N: usize = 1_000_000;
/// Deadlines fall in the next 5 minutes of 10 ms ticks (the shard's tick), which spreads
/// them over the wheel's first three levels.
const SPAN: u64 = 30_000;

/// Pseudo-random deadlines in `1..=SPAN`, the same on every run.
fn deadlines() -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..N)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + x % SPAN
        })
        .collect()
}

fn filled(deadlines: &[u64]) -> (Wheel<u32>, Vec<TimerId>) {
    let mut w = Wheel::new();
    let ids = deadlines
        .iter()
        .enumerate()
        .map(|(i, &d)| w.insert(d, i as u32))
        .collect();
    (w, ids)
}

fn wheel(c: &mut Criterion) {
    let deadlines = deadlines();
    {
        // Sanity: every timer fires exactly once by the end of the span.
        let (mut w, _) = filled(&deadlines);
        let mut fired = Vec::with_capacity(N);
        w.advance(SPAN, &mut fired);
        assert_eq!(fired.len(), N);
        assert!(w.is_empty());
    }

    let mut g = c.benchmark_group("wheel_1M");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(N as u64));

    g.bench_function("insert", |b| {
        b.iter_batched(
            Wheel::<u32>::new,
            |mut w| {
                for (i, d) in deadlines.iter().enumerate() {
                    black_box(w.insert(*d, i as u32));
                }
                w
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("cancel", |b| {
        b.iter_batched(
            || filled(&deadlines),
            |(mut w, ids)| {
                for id in &ids {
                    black_box(w.cancel(*id));
                }
                debug_assert!(w.is_empty());
                w
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("advance", |b| {
        b.iter_batched(
            || (filled(&deadlines).0, Vec::with_capacity(N)),
            |(mut w, mut fired)| {
                w.advance(SPAN, &mut fired);
                debug_assert_eq!(fired.len(), N);
                (w, fired)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, wheel);
criterion_main!(benches);
