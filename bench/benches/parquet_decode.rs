//! Decoding one Parquet row group: gang's reader path against arrow-rs's plain reader on the
//! same bytes, and against the limit.
//!
//! Input: one row group of 262,144 rows x 32 random float32 features and an int8 label
//! (33.8 MB decoded), written in memory by gang's Parquet sink with its default properties
//! (snappy, floats `PLAIN` without dictionary, page statistics) onto tmpfs, since gang's
//! reader takes a path. Throughput is decoded bytes (the Arrow buffers produced).
//!
//! - `gang_read_partition`: [`gang::data::read_partition`] of the plan's one partition (opens
//!   the file, reads the footer, decodes every column into 64 Ki-row batches);
//! - `arrow_rs_plain_file` / `arrow_rs_plain_bytes`: `ParquetRecordBatchReaderBuilder` with
//!   the same batch size on the same tmpfs file and on the file's bytes in memory;
//! - **limit** `memcpy_decoded`: copying the decoded bytes once (one memcpy per column
//!   buffer), the least any decoder must do to produce them.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gang::data::{read_partition, Input, PartitionPlan, PlanOptions};
use gang::stage::{open_sink, OutputFormat, ParquetCompression};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::hint::black_box;

const ROWS: usize = 1 << 18;
const BATCH: usize = 65536;

fn decode(c: &mut Criterion) {
    let dir = common::ScratchDir::new("decode");
    let path = dir.path().join("part-0.parquet");
    let batch = common::batch(ROWS, 1);
    let schema = common::schema();
    let mut sink = open_sink(OutputFormat::Parquet { compression: ParquetCompression::Snappy }, &path, &schema)
        .expect("open gang's Parquet sink");
    sink.write(&batch).expect("encode");
    sink.finish().expect("finish");
    let bytes = bytes::Bytes::from(std::fs::read(&path).expect("read the file back"));
    let opts = PlanOptions::new().with_batch_size(BATCH).expect("a batch size of at least 1");
    let plan = PartitionPlan::discover(&[Input::Parquet(path.clone())], &opts).expect("plan");
    assert_eq!(plan.partitions.len(), 1, "one row group, one partition");
    let decoded = common::batch_bytes(&batch);
    eprintln!("parquet_decode: {ROWS} rows, {decoded} bytes decoded, {} bytes in the file", bytes.len());

    let mut g = c.benchmark_group("parquet_decode");
    g.throughput(Throughput::Bytes(decoded as u64)).sample_size(20);
    g.bench_function("gang_read_partition", |b| {
        b.iter(|| {
            let mut rows = 0;
            for batch in read_partition(&plan.partitions[0], &plan.schema, &opts).expect("read") {
                rows += black_box(batch.expect("decode")).num_rows();
            }
            assert_eq!(rows, ROWS);
        })
    });
    g.bench_function("arrow_rs_plain_file", |b| {
        b.iter(|| {
            let file = std::fs::File::open(&path).expect("open");
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("footer").with_batch_size(BATCH);
            let rows: usize = reader.build().expect("reader").map(|b| black_box(b.expect("decode")).num_rows()).sum();
            assert_eq!(rows, ROWS);
        })
    });
    g.bench_function("arrow_rs_plain_bytes", |b| {
        b.iter(|| {
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).expect("footer").with_batch_size(BATCH);
            let rows: usize = reader.build().expect("reader").map(|b| black_box(b.expect("decode")).num_rows()).sum();
            assert_eq!(rows, ROWS);
        })
    });
    let mut out = vec![0u8; decoded];
    g.bench_function("memcpy_decoded", |b| {
        b.iter(|| {
            common::copy_columns(&batch, &mut out);
            black_box(&mut out);
        })
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
