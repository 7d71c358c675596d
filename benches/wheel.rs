//! The shard's timing wheel with a million armed timers: insert, cancel, and advance
//! until every one has fired (cascades included).

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use throng::wheel::{Core, FlatItems, TimerId, Wheel};

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

/// Ten flat samples of a few seconds: each iteration handles a million timers.
fn configure(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(N as u64));
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
    configure(&mut g);

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

fn filled_core(deadlines: &[u64]) -> (Core, FlatItems) {
    let mut core = Core::new();
    let mut items = FlatItems::new(deadlines.len());
    for (i, &d) in deadlines.iter().enumerate() {
        core.insert(&mut items, i as u32, d);
    }
    (core, items)
}

/// The same million timers kept in their owners' slots (`Core`), as the shard keeps its
/// connections' heartbeat timers.
fn core(c: &mut Criterion) {
    let deadlines = deadlines();
    let mut g = c.benchmark_group("wheel_1M_in_slots");
    configure(&mut g);
    g.bench_function("insert", |b| {
        b.iter_batched(
            || (Core::new(), FlatItems::new(N)),
            |(mut core, mut items)| {
                for (i, d) in deadlines.iter().enumerate() {
                    core.insert(&mut items, i as u32, *d);
                }
                (core, items)
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("cancel", |b| {
        b.iter_batched(
            || filled_core(&deadlines),
            |(mut core, mut items)| {
                for key in 0..N as u32 {
                    black_box(core.cancel(&mut items, key));
                }
                (core, items)
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("advance", |b| {
        b.iter_batched(
            || (filled_core(&deadlines), Vec::with_capacity(N)),
            |((mut core, mut items), mut fired)| {
                core.advance(&mut items, SPAN, &mut fired);
                debug_assert_eq!(fired.len(), N);
                (core, items, fired)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, wheel, core);
criterion_main!(benches);
