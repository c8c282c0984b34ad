//! Planning 10,000 files: the whole planner over real files on tmpfs, and its pure parts.
//!
//! Input: a directory on tmpfs of 10,000 small Parquet files (64 rows each of the
//! benchmark's 32 float32 features and int8 label, written with gang's properties, so each
//! footer carries 33 columns' statistics and page index), and, for the pure parts, the same
//! shapes in memory. Throughput is files (`Elements`).
//!
//! - `discover`: [`gang::data::PartitionPlan::discover`] of the directory (walks it in name
//!   order, reads and checks 10,000 footers and schemas, groups row groups into partitions);
//!   **limit** `read_files`: `std::fs::read` of the same 10,000 files (open, read, close: the
//!   system calls any planner of these files pays, and more bytes than a footer);
//! - `group_pieces`: the planner's grouping of row groups into partitions, per file, over
//!   10,000 files of 8 row groups each (80,000 pieces);
//! - `assign_16_ranks`: [`gang::data::PartitionPlan::assign`] of 10,000 partitions to 16
//!   ranks (largest first to the least-loaded rank);
//! - `plan_bytes_roundtrip`: the plan of 10,000 files to bytes and back, what
//!   `discover_on_root` broadcasts.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gang::data::{Input, PartitionPlan, PlanOptions};
use gang::stage::writer::parquet_properties;
use gang::stage::ParquetCompression;
use parquet::arrow::ArrowWriter;
use std::hint::black_box;
use std::path::Path;

const FILES: usize = 10_000;

fn plan(c: &mut Criterion) {
    let dir = common::ScratchDir::new("plan");
    let schema = common::schema();
    let props = parquet_properties(Path::new("bench"), &schema, ParquetCompression::Snappy).expect("properties");
    let batch = common::batch(64, 3);
    let mut file_bytes = Vec::new();
    {
        let mut w = ArrowWriter::try_new(&mut file_bytes, schema.clone(), Some(props)).expect("writer");
        w.write(&batch).expect("encode");
        w.close().expect("footer");
    }
    let paths: Vec<_> = (0..FILES).map(|i| dir.path().join(format!("part-{i:05}.parquet"))).collect();
    for p in &paths {
        std::fs::write(p, &file_bytes).expect("write a small file");
    }
    eprintln!("plan: {FILES} files of {} bytes", file_bytes.len());
    let inputs = [Input::Parquet(dir.path().to_path_buf())];
    let opts = PlanOptions::default();
    let plan = PartitionPlan::discover(&inputs, &opts).expect("plan");
    assert_eq!(plan.partitions.len(), FILES);

    let mut g = c.benchmark_group("plan_10k_files");
    g.throughput(Throughput::Elements(FILES as u64)).sample_size(10);
    g.bench_function("discover", |b| b.iter(|| black_box(PartitionPlan::discover(&inputs, &opts).expect("plan"))));
    g.bench_function("read_files", |b| {
        b.iter(|| paths.iter().map(|p| black_box(std::fs::read(p).expect("read")).len()).sum::<usize>())
    });

    // The pure parts over in-memory shapes: 8 row groups per file of 1,000 to 200,000 rows.
    let mut rng = gang_kernels::SplitMix64::new(4);
    let pieces: Vec<Vec<u64>> = (0..FILES).map(|_| (0..8).map(|_| 1_000 + rng.next_below(199_000)).collect()).collect();
    g.bench_function("group_pieces", |b| {
        b.iter(|| pieces.iter().map(|rows| gang::internal::group_pieces(rows, 1 << 20).len()).sum::<usize>())
    });
    let mut sized = plan.clone();
    for p in &mut sized.partitions {
        p.rows = 1_000 + rng.next_below(1 << 20);
    }
    g.bench_function("assign_16_ranks", |b| b.iter(|| black_box(sized.assign(16))));
    g.bench_function("plan_bytes_roundtrip", |b| {
        b.iter(|| PartitionPlan::from_bytes(&plan.to_bytes().expect("to bytes")).expect("from bytes"))
    });
    g.finish();
}

criterion_group!(benches, plan);
criterion_main!(benches);
