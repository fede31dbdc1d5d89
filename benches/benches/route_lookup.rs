//! Route lookup at 1k, 100k and 1M routes, for each kind of route (exact host, deep context path, wildcard).
//!
//! Each table holds a third of each kind. One iteration routes 4,096 different requests drawn across the whole
//! table, so caches see a realistic spread instead of one hot entry; criterion's per-element time is the time of
//! one lookup, including normalising the Host into the stack buffer as the proxy does.
//!
//! `SWITCHYARD_BENCH_SIZES=1000,100000` limits the sizes (scripts/bench --quick does).
//!
//! The table is built with the router's own allocator, because where its pieces land in memory (how densely, on
//! which pages) is most of what a lookup in a big table costs.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard_benches::routes::{Detail, LOOKUPS_PER_ITERATION, Shape, build_registry, mixed_route, sample_requests};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

fn sizes() -> Vec<usize> {
    match std::env::var("SWITCHYARD_BENCH_SIZES") {
        Ok(list) => list.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => DEFAULT_SIZES.to_vec(),
    }
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    group.throughput(Throughput::Elements(LOOKUPS_PER_ITERATION as u64));
    for size in sizes() {
        let registry = match build_registry(size, Detail::Minimal, mixed_route) {
            Ok(registry) => registry,
            Err(err) => {
                eprintln!("cannot build a table of {size} routes: {err}");
                std::process::exit(1);
            }
        };
        let table = registry.table();
        for shape in Shape::ALL {
            let requests = sample_requests(shape, size, LOOKUPS_PER_ITERATION);
            group.bench_with_input(BenchmarkId::new(shape.name(), size), &requests, |b, requests| {
                b.iter(|| {
                    let mut found = 0usize;
                    for request in requests {
                        found += usize::from(black_box(request).route(table));
                    }
                    black_box(found)
                });
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = route_lookup
}
criterion_main!(benches);
