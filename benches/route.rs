//! `shard_of`: which shard owns a user, for 10,000 user ids over 16 shards.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use throng::route::shard_of;

const USERS: usize = 10_000;
const SHARDS: usize = 16;

fn route(c: &mut Criterion) {
    let ids: Vec<String> = (0..USERS).map(|i| format!("user-{i:08}")).collect();

    let mut g = c.benchmark_group("route");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(USERS as u64));
    g.bench_function("shard_of_10k_users_16_shards", |b| {
        b.iter(|| {
            let mut counts = [0u32; SHARDS];
            for id in &ids {
                counts[shard_of(black_box(id), SHARDS)] += 1;
            }
            counts
        })
    });
    g.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
