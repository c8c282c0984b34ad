//! Encoding a checkpoint shard: gang's safetensors block encoder against memcpy of the same
//! bytes.
//!
//! Input: one rank's shard in memory: two 1024 x 1024 layers with biases and Adam's two
//! moments of each, 12 tensors of 6.3 M f32 (24 MiB), what a `CheckpointStore` writes as
//! one safetensors file. Throughput is the file's bytes.
//!
//! - `encode_to_memory`: the encoder (JSON header, then the data converted to little-endian
//!   in 4 MiB blocks) appending every block to a preallocated `Vec<u8>`;
//! - `encode_crc32`: the encoder with the CRC-32 that the store computes of every block as
//!   it writes it (the store's path without the file);
//! - **limit** `memcpy`: one memcpy of as many bytes into a preallocated buffer;
//!   `crc32` alone over as many bytes, for the checksum's share.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gang::checkpoint::Tensor;
use gang_kernels::SplitMix64;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hint::black_box;

fn checkpoint(c: &mut Criterion) {
    let mut rng = SplitMix64::new(6);
    let mut random = |n: usize| (0..n).map(|_| rng.next_f32() - 0.5).collect::<Vec<f32>>();
    // Two 1024 x 1024 layers with biases, and Adam's moments (m, v) of every tensor.
    let mut all = Vec::new();
    for layer in 0..2 {
        for (name, shape) in [("weight", vec![1024, 1024]), ("bias", vec![1024])] {
            for prefix in ["", "adam.m.", "adam.v."] {
                let n = shape.iter().product();
                all.push(
                    Tensor::new(format!("{prefix}layer{layer}.{name}"), shape.clone(), random(n)).expect("tensor"),
                );
            }
        }
    }
    let refs: Vec<&Tensor> = all.iter().collect();
    let metadata: BTreeMap<String, String> = [("step".to_string(), "1000".to_string())].into();
    let mut len = 0usize;
    gang::internal::encode_safetensors(&refs, &metadata, |b| {
        len += b.len();
        Ok::<_, Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
    eprintln!("checkpoint: {} tensors, {len} bytes", refs.len());

    let mut g = c.benchmark_group("checkpoint_encode");
    g.throughput(Throughput::Bytes(len as u64)).sample_size(20);
    let mut out: Vec<u8> = Vec::with_capacity(len);
    g.bench_function("encode_to_memory", |b| {
        b.iter(|| {
            out.clear();
            gang::internal::encode_safetensors(&refs, &metadata, |block| {
                out.extend_from_slice(block);
                Ok::<_, Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
            black_box(&out);
        })
    });
    g.bench_function("encode_crc32", |b| {
        b.iter(|| {
            let mut crc = crc32fast::Hasher::new();
            gang::internal::encode_safetensors(&refs, &metadata, |block| {
                crc.update(block);
                Ok::<_, Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
            black_box(crc.finalize())
        })
    });
    let src = vec![1u8; len];
    let mut dst = vec![0u8; len];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    g.bench_function("crc32", |b| b.iter(|| black_box(crc32fast::hash(black_box(&src)))));
    g.finish();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
