//! Cost of an affinity cookie per request: open (verify) + seal (sign), criterion.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fulcrum::pool::affinity::{backend_id, open, rendezvous, seal, Keys};

fn cookie(c: &mut Criterion) {
    let keys = Keys::new(&[
        b"a-32-byte-secret-key-for-benches".to_vec(),
        b"an-older-key-still-verifying".to_vec(),
    ]);
    let unsigned = Keys::default();
    let id = backend_id("web", "app1");
    let now = 1_800_000_000;
    let session = 0x1234_5678_9abc_def0;
    let value = seal(&keys, "web", id, session, now + 3600);
    c.bench_function("affinity/open+seal signed", |b| {
        b.iter(|| {
            let o = open(&keys, "web", black_box(value.as_bytes()), now);
            let (id, session) = o.map_or((0, 0), |o| (o.backend, o.session));
            black_box(seal(&keys, "web", id, session, now + 3600))
        })
    });
    c.bench_function("affinity/open signed", |b| {
        b.iter(|| black_box(open(&keys, "web", black_box(value.as_bytes()), now)))
    });
    let plain = seal(&unsigned, "web", id, session, now + 3600);
    c.bench_function("affinity/open+seal unsigned", |b| {
        b.iter(|| {
            let o = open(&unsigned, "web", black_box(plain.as_bytes()), now);
            let (id, session) = o.map_or((0, 0), |o| (o.backend, o.session));
            black_box(seal(&unsigned, "web", id, session, now + 3600))
        })
    });
    // A re-pin (once per session whose backend is lost) walks every usable backend.
    for n in [4u64, 100, 10_000] {
        let backends: Vec<(u64, u32)> = (0..n)
            .map(|i| (backend_id("web", &format!("b{i}")), 1 + (i % 3) as u32))
            .collect();
        let mut s = 0u64;
        c.bench_function(&format!("affinity/repin {n} backends"), |b| {
            b.iter(|| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                black_box(rendezvous(s, backends.iter().copied()))
            })
        });
    }
}

criterion_group!(benches, cookie);
criterion_main!(benches);
