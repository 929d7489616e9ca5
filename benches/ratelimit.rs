//! ns per rate-limit check: gpuproxyd's keyed GCRA table against governor's keyed limiter, in the
//! same run: one thread one key, two threads one hot key, two threads over 100k keys.
//! `cargo bench --bench ratelimit`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gpuproxyd::ratelimit::gcra::Quota;
use gpuproxyd::ratelimit::keyed::KeyedLimiter;

const KEYS: u32 = 100_000;

fn ours() -> Arc<KeyedLimiter<u32>> {
    // a huge quota: the benches measure the check, not the refusals
    Arc::new(KeyedLimiter::new(
        Quota::per_minute(u64::from(u32::MAX), 1_000_000),
        1_000_000,
        65_536,
    ))
}

fn theirs() -> Arc<governor::DefaultKeyedRateLimiter<u32>> {
    let q = governor::Quota::per_second(NonZeroU32::new(u32::MAX).unwrap())
        .allow_burst(NonZeroU32::new(1_000_000).unwrap());
    Arc::new(governor::RateLimiter::keyed(q))
}

/// Runs `iters` checks split over `threads` threads and returns the wall time.
fn threaded(iters: u64, threads: u64, f: Arc<dyn Fn(u64) + Send + Sync>) -> Duration {
    let per = iters / threads;
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    f(t * per + i);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    let (a, b) = (ours(), theirs());
    g.bench_function("gpuproxyd/1 thread, 1 key", |x| {
        x.iter(|| black_box(a.check(&7)))
    });
    g.bench_function("governor/1 thread, 1 key", |x| {
        x.iter(|| black_box(b.check_key(&7).is_ok()))
    });
    for (name, keys) in [("1 hot key", 1u64), ("100k keys", u64::from(KEYS))] {
        let a = ours();
        let b = theirs();
        for k in 0..keys as u32 {
            a.check(&k);
            let _ = b.check_key(&k);
        }
        let fa: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |i| {
            black_box(a.check(&((i % keys) as u32)));
        });
        let fb: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |i| {
            black_box(b.check_key(&((i % keys) as u32)).is_ok());
        });
        g.bench_function(format!("gpuproxyd/2 threads, {name}"), |x| {
            x.iter_custom(|iters| threaded(iters.max(2), 2, fa.clone()))
        });
        g.bench_function(format!("governor/2 threads, {name}"), |x| {
            x.iter_custom(|iters| threaded(iters.max(2), 2, fb.clone()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
