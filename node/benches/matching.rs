//! Matching cost with many subscriptions: the trie index against a scan of every pattern.
//!
//! Run with `make bench-matching` (or `cargo bench -p murmur --bench matching`).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use murmur::routing::topic::pattern_matches;
use murmur::routing::{Match, SubscriptionIndex};

/// `sensors.r{region}.d{device}.{metric}` with 10 regions × 1000 devices × 10 metrics.
fn topic(i: usize) -> String {
    format!(
        "sensors.r{}.d{}.m{}",
        i % 10,
        (i / 10) % 1000,
        (i / 10_000) % 10
    )
}

/// A realistic mix: mostly exact topics, some one-token and trailing wildcards.
fn pattern(i: usize) -> String {
    match i % 10 {
        0..=6 => topic(i),
        7 => format!("sensors.r{}.d{}.*", i % 10, (i / 10) % 1000),
        8 => format!("sensors.*.d{}.m{}", (i / 10) % 1000, (i / 10_000) % 10),
        _ => format!("sensors.r{}.d{}.>", i % 10, (i / 10) % 1000),
    }
}

fn count_matches(index: &SubscriptionIndex<usize>, topic: &str) -> usize {
    let mut n = 0;
    index.for_each_match(topic, |m| {
        n += match m {
            Match::Subscriber(_) => 1,
            Match::Group(_) => 1,
        }
    });
    n
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_one_topic");
    group.throughput(Throughput::Elements(1));
    for subscriptions in [1_000usize, 10_000, 100_000] {
        let patterns: Vec<String> = (0..subscriptions).map(pattern).collect();
        let mut index = SubscriptionIndex::new();
        for (i, p) in patterns.iter().enumerate() {
            index.insert(p, None, i);
        }
        let probes: Vec<String> = (0..64).map(|i| topic(i * 7919)).collect();
        group.bench_with_input(
            BenchmarkId::new("trie", subscriptions),
            &subscriptions,
            |b, _| {
                let mut k = 0;
                b.iter(|| {
                    k = (k + 1) % probes.len();
                    black_box(count_matches(&index, black_box(&probes[k])))
                })
            },
        );
        if subscriptions <= 10_000 {
            group.bench_with_input(
                BenchmarkId::new("linear_scan", subscriptions),
                &subscriptions,
                |b, _| {
                    let mut k = 0;
                    b.iter(|| {
                        k = (k + 1) % probes.len();
                        let probe = &probes[k];
                        black_box(
                            patterns
                                .iter()
                                .filter(|p| pattern_matches(p, probe))
                                .count(),
                        )
                    })
                },
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("index_churn");
    let patterns: Vec<String> = (0..100_000).map(pattern).collect();
    group.throughput(Throughput::Elements(patterns.len() as u64));
    group.sample_size(10);
    group.bench_function("insert_then_remove_100k", |b| {
        b.iter(|| {
            let mut index = SubscriptionIndex::new();
            for (i, p) in patterns.iter().enumerate() {
                index.insert(p, None, i);
            }
            for (i, p) in patterns.iter().enumerate() {
                index.remove(p, None, &i);
            }
            black_box(index.len())
        })
    });
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
