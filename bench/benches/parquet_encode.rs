//! Encoding one batch as Parquet: gang's writer properties and gang's per-column parallel
//! sink against arrow-rs's defaults, and against the limit.
//!
//! Input: 262,144 rows x 32 random float32 features and an int8 label (33.8 MB of Arrow
//! buffers), built in memory; one row group. Throughput is the batch's bytes.
//!
//! - `gang_props_snappy` / `gang_props_none`: `ArrowWriter` into a `Vec<u8>` with
//!   [`gang::stage::writer::parquet_properties`] (snappy is gang's default codec; `none`
//!   shows the codec's share), one thread, as any single writer;
//! - `gang_sink_snappy`: gang's own Parquet sink ([`gang::stage::open_sink`]: the columns
//!   encoded in parallel over the cores the process may use, CRC-32 of the bytes, fsync)
//!   onto a tmpfs file;
//! - `arrow_rs_default`: `ArrowWriter` with `WriterProperties::default()` (uncompressed,
//!   dictionary first on every column, falling back to `PLAIN`), for comparison;
//! - **limit** `memcpy_batch`: copying the batch's bytes once (one memcpy per column
//!   buffer), the least an encoder of uncompressed `PLAIN` pages must do.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gang::stage::writer::parquet_properties;
use gang::stage::{open_sink, OutputFormat, ParquetCompression};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::hint::black_box;
use std::path::Path;

const ROWS: usize = 1 << 18;

/// The batch encoded into memory with `props`; returns the file's bytes.
fn encode_with(batch: &arrow_array::RecordBatch, props: WriterProperties) -> Vec<u8> {
    let mut w = ArrowWriter::try_new(Vec::with_capacity(40 << 20), batch.schema(), Some(props)).expect("writer");
    w.write(batch).expect("encode");
    w.into_inner().expect("footer")
}

fn encode(c: &mut Criterion) {
    let dir = common::ScratchDir::new("encode");
    let batch = common::batch(ROWS, 2);
    let schema = common::schema();
    let bytes = common::batch_bytes(&batch);
    let props = |codec| parquet_properties(Path::new("bench"), &schema, codec).expect("gang's properties");
    for (name, p) in [
        ("gang snappy", props(ParquetCompression::Snappy)),
        ("gang none", props(ParquetCompression::None)),
        ("arrow-rs default", WriterProperties::default()),
    ] {
        eprintln!("parquet_encode: {name}: {bytes} bytes in, {} bytes out", encode_with(&batch, p).len());
    }

    let mut g = c.benchmark_group("parquet_encode");
    g.throughput(Throughput::Bytes(bytes as u64)).sample_size(10);
    g.bench_function("gang_props_snappy", |b| {
        b.iter(|| black_box(encode_with(&batch, props(ParquetCompression::Snappy))))
    });
    g.bench_function("gang_props_none", |b| b.iter(|| black_box(encode_with(&batch, props(ParquetCompression::None)))));
    let path = dir.path().join("part-0.parquet");
    g.bench_function("gang_sink_snappy", |b| {
        b.iter(|| {
            let mut sink = open_sink(OutputFormat::Parquet { compression: ParquetCompression::Snappy }, &path, &schema)
                .expect("open gang's Parquet sink");
            sink.write(&batch).expect("encode");
            black_box(sink.finish().expect("finish"))
        })
    });
    g.bench_function("arrow_rs_default", |b| b.iter(|| black_box(encode_with(&batch, WriterProperties::default()))));
    let mut out = vec![0u8; bytes];
    g.bench_function("memcpy_batch", |b| {
        b.iter(|| {
            common::copy_columns(&batch, &mut out);
            black_box(&mut out);
        })
    });
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
