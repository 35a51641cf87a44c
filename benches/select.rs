//! Nanoseconds per pick for each algorithm with 4, 100 and 10,000 backends (criterion).

use std::net::SocketAddr;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::config::{Algorithm, BackendConfig, HashKey, PoolConfig};
use fulcrum::pool::Pool;

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
    Pool::build(&config)
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for alg in [
        Algorithm::RoundRobin,
        Algorithm::LeastConnections,
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
                    black_box(p.select(Some(&key), |_| false))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
