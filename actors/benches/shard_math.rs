//! Shard math benchmarks. Ids are stable so figures compare from run to run:
//! `cargo bench -p clusterfunk-actors --bench shard_math`.

use std::hint::black_box;

use std::collections::BTreeMap;

use clusterfunk_actors::shard::{allocate, allocate_weighted, shard_for, Candidate, ShardMap};
use clusterfunk_actors::types::{Epoch, NodeId, ShardId};
use criterion::{criterion_group, criterion_main, Criterion};

fn nodes(n: u64) -> Vec<Candidate> {
    (1..=n).map(|i| Candidate { id: NodeId(i * 7919), weight: 1 + (i % 3) as u32, zone: None }).collect()
}

fn allocated(shards: u32, nodes: &[Candidate]) -> ShardMap {
    let mut map = ShardMap::new(shards, 1);
    let alloc = allocate(&map, nodes);
    map.apply(&alloc.changes, Epoch(1));
    map
}

fn key_to_shard(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_to_shard");
    let mut k = 0u64;
    g.bench_function("u64", |b| {
        b.iter(|| {
            k = k.wrapping_add(1);
            shard_for(black_box(&k), black_box(1024))
        })
    });
    let key = "user-0123456789a";
    assert_eq!(key.len(), 16);
    g.bench_function("str16", |b| b.iter(|| shard_for(black_box(key), black_box(1024))));
    g.finish();
}

fn owner_lookup(c: &mut Criterion) {
    let map = allocated(10_000, &nodes(50));
    let mut s = 0u32;
    c.bench_function("owner_lookup", |b| {
        b.iter(|| {
            s = (s + 1) % 10_000;
            map.owner(black_box(ShardId(s)))
        })
    });
}

fn allocate_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocate");
    let all = nodes(50);
    let empty = ShardMap::new(10_000, 1);
    g.bench_function("fresh_10k_50", |b| b.iter(|| allocate(black_box(&empty), black_box(&all))));
    let map = allocated(10_000, &all);
    let rest: Vec<Candidate> = all[..49].to_vec();
    g.bench_function("leave_one_10k_50", |b| b.iter(|| allocate(black_box(&map), black_box(&rest))));
    // Weighted: every 100th shard is hot (weight 2 to 50).
    let weights: BTreeMap<ShardId, u32> = (0..10_000).step_by(100).map(|s| (ShardId(s), 2 + s % 49)).collect();
    let none = BTreeMap::new();
    let weighted = |map: &ShardMap, nodes: &[Candidate], w: &BTreeMap<ShardId, u32>| {
        allocate_weighted(black_box(map), black_box(nodes), &none, black_box(w))
    };
    g.bench_function("weighted_fresh_10k_50", |b| b.iter(|| weighted(&empty, &all, &weights)));
    let mut wmap = ShardMap::new(10_000, 1);
    wmap.apply(&weighted(&wmap, &all, &weights).changes, Epoch(1));
    g.bench_function("weighted_leave_one_10k_50", |b| b.iter(|| weighted(&wmap, &rest, &weights)));
    let mut hotter = weights.clone();
    hotter.insert(ShardId(0), 500);
    g.bench_function("weighted_reweigh_one_10k_50", |b| b.iter(|| weighted(&wmap, &all, &hotter)));
    g.bench_function("weighted_stable_10k_50", |b| b.iter(|| weighted(&wmap, &all, &weights)));
    g.finish();
}

fn codec(c: &mut Criterion) {
    let map = allocated(10_000, &nodes(50));
    c.bench_function("codec/encode_decode_10k", |b| {
        b.iter(|| ShardMap::decode(&black_box(&map).encode()).expect("round trip"))
    });
}

criterion_group!(benches, key_to_shard, owner_lookup, allocate_bench, codec);
criterion_main!(benches);
