//! Criterion benchmarks of the core: complete 1:1 call flows per second, and the cost of one
//! `m.call.candidates` event.

use criterion::{criterion_group, criterion_main, Criterion};

fn call_flow(c: &mut Criterion) {
    let _ = c;
}

criterion_group!(benches, call_flow);
criterion_main!(benches);
