//! The kernels' forward and backward pass per row block: a model's loss and gradient over a
//! block of rows ([`gang_kernels::Model::loss_and_grad`]), against the memory bandwidth of
//! reading the same block.
//!
//! Input: blocks of 1,024 rows ([`gang_kernels::CHUNK_ROWS`], one unit of parallel work,
//! cache-resident, one thread) and 65,536 rows (8 MiB of features: a training batch, spread
//! over the rayon pool, i.e. every core) x 32 random float32 features, labels 0/1. Throughput
//! is rows (`Elements`); FLOP/s = rows/s x the FLOPs per row printed at start (multiply
//! and add counted as 2; forward and backward, input gradients of the first layer not
//! needed).
//!
//! - `logistic`, `mlp_64_32`: logistic regression and an MLP 32 -> 64 -> 32 -> 1 (ReLU,
//!   binary head);
//! - **limit** `sum_block`: summing the block's f32 values on as many threads as the kernel
//!   uses (each thread a contiguous half), the memory (or cache) bandwidth of reading the
//!   block once; `memcpy_block`: one memcpy of the block's bytes, for scale.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gang_kernels::{Kernels, Model, ModelKind, Output, SplitMix64, Targets, CHUNK_ROWS};
use std::hint::black_box;

const F: usize = common::FEATURES;

/// FLOPs of one row's forward and backward pass through dense layers of `widths`
/// (`[in, h1, .., out]`): 2·in·out forward, 2·in·out for the weight gradient, 2·in·out for
/// the input gradient except at the first layer.
fn flops_per_row(widths: &[usize]) -> usize {
    widths.windows(2).enumerate().map(|(i, w)| 2 * w[0] * w[1] * if i == 0 { 2 } else { 3 }).sum()
}

/// Sum of `x` in 8 independent lanes (vectorised by the compiler).
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// [`sum`] over `threads` contiguous parts of `x`, on scoped threads when more than one.
fn sum_threads(x: &[f32], threads: usize) -> f32 {
    if threads <= 1 {
        return sum(x);
    }
    let per = x.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = x.chunks(per).map(|p| s.spawn(move || sum(p))).collect();
        parts.into_iter().map(|h| h.join().expect("sum")).sum()
    })
}

fn kernels(c: &mut Criterion) {
    let models = [
        ("logistic", ModelKind::Logistic, vec![F, 1]),
        ("mlp_64_32", ModelKind::Mlp { hidden: vec![64, 32], outputs: Output::Binary }, vec![F, 64, 32, 1]),
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("kernels: {} kernels, {cores} cores", Kernels::active());
    for (name, _, widths) in &models {
        eprintln!("kernels: {name}: {} FLOPs per row", flops_per_row(widths));
    }
    let mut rng = SplitMix64::new(5);
    for rows in [CHUNK_ROWS, 65_536] {
        let x: Vec<f32> = (0..rows * F).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        let y: Vec<i64> = (0..rows).map(|_| (rng.next_u64() & 1) as i64).collect();
        // A block of CHUNK_ROWS rows is one unit of work: the kernel runs it on one thread.
        let threads = if rows <= CHUNK_ROWS { 1 } else { cores };
        let mut g = c.benchmark_group(format!("kernels_{rows}_rows"));
        g.throughput(Throughput::Elements(rows as u64));
        for (name, kind, _) in &models {
            let model = Model::new(kind.clone(), F, 7).expect("model");
            let mut grad = model.grad_buffer();
            g.bench_function(BenchmarkId::new("loss_and_grad", name), |b| {
                b.iter(|| {
                    grad.fill(0.0);
                    black_box(model.loss_and_grad(&x, Targets::Class(&y), &mut grad).expect("loss"))
                })
            });
        }
        g.bench_function(BenchmarkId::new("sum_block", format!("{threads}_threads")), |b| {
            b.iter(|| black_box(sum_threads(black_box(&x), threads)))
        });
        let src: Vec<u8> = vec![1; rows * F * 4];
        let mut dst = vec![0u8; src.len()];
        g.bench_function("memcpy_block", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
