//! Cost of an affinity cookie per request: open (verify) + seal (sign), criterion.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fulcrum::affinity::{backend_id, open, seal, Keys};

fn cookie(c: &mut Criterion) {
    let keys = Keys::new(&[
        b"a-32-byte-secret-key-for-benches".to_vec(),
        b"an-older-key-still-verifying".to_vec(),
    ]);
    let unsigned = Keys::default();
    let id = backend_id("web", "app1");
    let now = 1_800_000_000;
    let value = seal(&keys, "web", id, now + 3600);
    c.bench_function("affinity/open+seal signed", |b| {
        b.iter(|| {
            let id = open(&keys, "web", black_box(value.as_bytes()), now);
            black_box(seal(&keys, "web", id.unwrap_or(0), now + 3600))
        })
    });
    c.bench_function("affinity/open signed", |b| {
        b.iter(|| black_box(open(&keys, "web", black_box(value.as_bytes()), now)))
    });
    let plain = seal(&unsigned, "web", id, now + 3600);
    c.bench_function("affinity/open+seal unsigned", |b| {
        b.iter(|| {
            let id = open(&unsigned, "web", black_box(plain.as_bytes()), now);
            black_box(seal(&unsigned, "web", id.unwrap_or(0), now + 3600))
        })
    });
}

criterion_group!(benches, cookie);
criterion_main!(benches);
