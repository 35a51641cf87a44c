//! Nanoseconds per pick for each algorithm with 4, 100 and 10,000 backends, with 10,000 of
//! which 10% are out of service (ejected), for least_connections with the in-flight count
//! a request adds and removes, and for bounded-load consistent hashing under load (criterion).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::config::{Algorithm, BackendConfig, HashKey, PoolConfig};
use fulcrum::pool::{InflightGuard, Pool};

fn pool(algorithm: Algorithm, n: usize) -> Pool {
    let hash_key = match algorithm {
        Algorithm::ConsistentHash => Some(HashKey::Header("x-user-id".into())),
        Algorithm::IpHash => Some(HashKey::ClientIp),
        _ => None,
    };
    let backends = (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
            BackendConfig {
                name: addr.to_string(),
                addr,
                // mixed weights, so round robin runs its smooth table
                weight: 1 + (i % 3) as u32,
            }
        })
        .collect();
    let mut config = PoolConfig::with_defaults("bench", algorithm, backends);
    config.hash_key = hash_key;
    let p = Pool::build(&config);
    if algorithm == Algorithm::LeastLatency {
        // Latencies learnt: 1 to 20 ms.
        for i in 0..n {
            p.observe_latency(i, Duration::from_millis(1 + (i % 20) as u64));
        }
    }
    p
}

/// A consistent_hash pool with `balance_factor: 1.25` whose backends hold 0 to 3 requests
/// each (the guards returned), so that picks meet backends at their bound.
fn bounded_pool(n: usize) -> (Pool, Vec<InflightGuard>) {
    let plain = pool(Algorithm::ConsistentHash, n);
    let mut config = PoolConfig::with_defaults(
        "bench",
        Algorithm::ConsistentHash,
        plain
            .backends()
            .iter()
            .map(|s| BackendConfig {
                name: s.name.clone(),
                addr: s.addr,
                weight: s.weight(),
            })
            .collect(),
    );
    config.hash_key = Some(HashKey::Header("x-user-id".into()));
    config.balance_factor = Some(1.25);
    let p = Pool::build(&config);
    let guards = p
        .backends()
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..i % 4).map(move |_| InflightGuard::acquire(s.clone())))
        .collect();
    (p, guards)
}

/// Eject every tenth backend of `p` (as passive health would).
fn take_out_a_tenth(p: &Pool) {
    for b in p.backends().iter().step_by(10) {
        b.eject(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            "bench".into(),
        );
    }
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for alg in [
        Algorithm::RoundRobin,
        Algorithm::LeastConnections,
        Algorithm::LeastLatency,
        Algorithm::ConsistentHash,
        Algorithm::IpHash,
        Algorithm::Random,
    ] {
        for n in [4usize, 100, 10_000] {
            let p = pool(alg, n);
            let mut i: u32 = 0;
            group.bench_with_input(BenchmarkId::new(alg.as_str(), n), &n, |b, _| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let key = i.to_le_bytes();
                    black_box(p.select(Some(&key), |_| false, true))
                })
            });
        }
        let p = pool(alg, 10_000);
        take_out_a_tenth(&p);
        let name = format!("{}, 10% out", alg.as_str());
        let mut i: u32 = 0;
        group.bench_with_input(BenchmarkId::new(name, 10_000), &10_000, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let key = i.to_le_bytes();
                black_box(p.select(Some(&key), |_| false, true))
            })
        });
    }
    for n in [4usize, 100, 10_000] {
        let (p, _held) = bounded_pool(n);
        let mut i: u32 = 0;
        group.bench_with_input(
            BenchmarkId::new("consistent_hash, bounded", n),
            &n,
            |b, _| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let key = i.to_le_bytes();
                    black_box(p.select(Some(&key), |_| false, true))
                })
            },
        );
    }
    let (p, _held) = bounded_pool(10_000);
    take_out_a_tenth(&p);
    let mut i: u32 = 0;
    group.bench_with_input(
        BenchmarkId::new("consistent_hash, bounded, 10% out", 10_000),
        &10_000,
        |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let key = i.to_le_bytes();
                black_box(p.select(Some(&key), |_| false, true))
            })
        },
    );
    group.finish();
}

/// What a request pays on a least_connections pool: the pick, then counting the request in
/// flight and releasing it (each re-ranks the backend in the pool's tree).
fn picks_with_inflight(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick+inflight");
    for n in [4usize, 100, 10_000] {
        let p = pool(Algorithm::LeastConnections, n);
        group.bench_with_input(BenchmarkId::new("least_connections", n), &n, |b, _| {
            b.iter(|| {
                let i = p.select(None, |_| false, true).unwrap_or(0);
                drop(black_box(InflightGuard::acquire(p.backends()[i].clone())))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, picks, picks_with_inflight);
criterion_main!(benches);
