//! Fan-out of one encoded push frame to 10,000 recipients' outbound queues.
//!
//! Encode once: each recipient's `OutQueue` gets a clone of the same `throng::wire::Wire` (a
//! reference-count bump and a `VecDeque` push). For comparison, copying the frame into a
//! `Vec<u8>` per recipient is what encoding once avoids.

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use throng::messages;
use throng::shard::OutQueue;
use throng::wire::Wire;

const RECIPIENTS: usize = 10_000;

fn push_frame(data_len: usize) -> Wire {
    let data = format!("\"{}\"", "x".repeat(data_len - 2));
    messages::push_frame(
        &data,
        1_767_225_600_000,
        None,
        Some("news.sports"),
        Some("m-1"),
    )
}

fn fresh_queues() -> Vec<OutQueue> {
    (0..RECIPIENTS).map(|_| OutQueue::default()).collect()
}

/// Queues that already hold one frame: a slow consumer's queue, whose deque has room.
fn busy_queues(frame: &Wire) -> Vec<OutQueue> {
    let mut qs = fresh_queues();
    for q in &mut qs {
        q.push(frame.clone());
    }
    qs
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_10k");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(RECIPIENTS as u64));

    for data_len in [128, 4096] {
        let frame = push_frame(data_len);
        let label = format!("{}B_frame", frame.len());
        {
            // Sanity: every queue holds the shared frame.
            let mut qs = fresh_queues();
            for q in &mut qs {
                q.push(frame.clone());
            }
            assert!(qs.iter().all(|q| !q.is_empty()));
            let total: usize = qs.iter().map(OutQueue::queued_bytes).sum();
            assert_eq!(total, RECIPIENTS * frame.len());
        }

        g.bench_with_input(
            BenchmarkId::new("outqueue_empty", &label),
            &frame,
            |b, f| {
                b.iter_batched(
                    fresh_queues,
                    |mut qs| {
                        for q in &mut qs {
                            q.push(f.clone());
                        }
                        qs
                    },
                    BatchSize::LargeInput,
                )
            },
        );
        g.bench_with_input(BenchmarkId::new("outqueue_busy", &label), &frame, |b, f| {
            b.iter_batched(
                || busy_queues(f),
                |mut qs| {
                    for q in &mut qs {
                        q.push(f.clone());
                    }
                    qs
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("copy_to_vec", &label), &frame, |b, f| {
            b.iter_batched(
                || Vec::<Vec<u8>>::with_capacity(RECIPIENTS),
                |mut out| {
                    for _ in 0..RECIPIENTS {
                        out.push(f.to_vec());
                    }
                    out
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
