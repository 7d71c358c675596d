//! Replay of 100 retained pushes to one resuming client (issue 9 item 8: under 1 ms of
//! shard time).
//!
//! A real `Shard` on a manual clock (`throng::shard::bench::ReplayBench`) holds one user
//! with 100 retained direct pushes of 160-byte data (215-byte frames). Each iteration
//! connects a loopback socket pair, hands the server end to the shard with `since` 100
//! behind, and times only the shard turn that adopts it: poll, handoff, 101, `welcome`,
//! the 100 frames queued through the normal outbound path and written (one vectored write
//! per 64 frames). The client's reads and the teardown are not timed. `connect` is the same
//! start without `since`, so the difference is what the replay costs.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use throng::shard::bench::ReplayBench;

const PUSHES: usize = 100;
const DATA_LEN: usize = 160;

fn replay(c: &mut Criterion) {
    let mut b = match ReplayBench::new(PUSHES, DATA_LEN) {
        Ok(b) => b,
        Err(e) => panic!("bench setup: {e}"),
    };
    let mut g = c.benchmark_group("resume");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(b.history_bytes()));
    eprintln!(
        "replay: {PUSHES} retained pushes, {} frame bytes to replay",
        b.history_bytes()
    );
    g.bench_function(format!("replay_{PUSHES}x{DATA_LEN}B"), |bench| {
        bench.iter_custom(|iters| {
            let mut shard = Duration::ZERO;
            for _ in 0..iters {
                match b.resume() {
                    Ok(r) => shard += r.shard_time,
                    Err(e) => panic!("resume: {e}"),
                }
            }
            shard
        });
    });
    // Same start without `since`: what the replay adds is the difference.
    g.throughput(Throughput::Elements(1));
    g.bench_function("connect_no_replay", |bench| {
        bench.iter_custom(|iters| {
            let mut shard = Duration::ZERO;
            for _ in 0..iters {
                match b.connect() {
                    Ok(r) => shard += r.shard_time,
                    Err(e) => panic!("connect: {e}"),
                }
            }
            shard
        });
    });
    g.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
