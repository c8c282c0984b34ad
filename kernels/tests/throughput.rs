//! Throughput of `loss_and_grad` on 2,000,000 x 32 (the benchmark shape).
//!
//! Ignored by default; run in release:
//! `cargo test --release -p gang-kernels --test throughput -- --ignored --nocapture`

mod common;

use std::time::Instant;

use gang_kernels::{Model, ModelKind, Output, Targets};

fn measure(name: &str, model: &Model, x: &[f32], y: &[i64], threads: usize) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let n = y.len();
    let mut grad = model.grad_buffer();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        grad.fill(0.0);
        let t = Instant::now();
        let s = pool.install(|| model.loss_and_grad(x, Targets::Class(y), &mut grad).unwrap());
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(s.n, n as u64);
    }
    let gbs = (x.len() * 4) as f64 / best / 1e9;
    println!(
        "{name:<22} threads {threads}: {:>7.1} ms  {:>6.1} M rows/s  {:>5.2} GB/s of x",
        best * 1e3,
        n as f64 / best / 1e6,
        gbs
    );
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn loss_and_grad_throughput() {
    let (n, f) = (2_000_000, 32);
    let x = common::features(n, f, 1);
    let y2 = common::labels(n, 2, 2);
    let y4 = common::labels(n, 4, 3);
    let max = rayon::current_num_threads();
    let mut logistic = Model::new(ModelKind::Logistic, f, 0).unwrap();
    common::randomize(&mut logistic, 0.1, 4);
    let softmax = Model::new(ModelKind::Softmax { classes: 4 }, f, 0).unwrap();
    let mlp = Model::new(ModelKind::Mlp { hidden: vec![64], outputs: Output::Binary }, f, 0).unwrap();
    let mlp2 = Model::new(ModelKind::Mlp { hidden: vec![64, 32], outputs: Output::Binary }, f, 0).unwrap();
    for threads in [1, max] {
        measure("logistic", &logistic, &x, &y2, threads);
        measure("softmax:4", &softmax, &x, &y4, threads);
        measure("mlp:64->binary", &mlp, &x, &y2, threads);
        measure("mlp:64,32->binary", &mlp2, &x, &y2, threads);
    }
}
