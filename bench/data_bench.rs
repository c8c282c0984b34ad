//! Data-plane benchmarks, each beside its limit, run under `gang run -n N` by
//! `bench/data.sh`:
//!
//! - `scan-raw DIR OUT.json`: the limit: arrow-rs's `ParquetRecordBatchReader` over every
//!   file in a plain loop (rank r reads files r, r+N, ...).
//! - `scan-gang DIR OUT.json`: gang's planner and prefetching readers over the same files.
//! - `h5-gang FILE OUT.json`: gang's HDF5 reader over every dataset of FILE (rank 0 only;
//!   the limit is h5py/numpy, `bench/h5_read.py`).
//! - `map-gang IN OUT OUT.json`: the map stage end to end: read, standardize every float
//!   column except `y`, write Parquet zstd, commit.
//! - `rw-raw IN OUT OUT.json`: the limit of the map stage: the same read in a plain loop,
//!   then the same standardized batches written with `ArrowWriter` (zstd) in a plain loop.
//!
//! - `write-plain BYTES DIR OUT.json`: the hardware's write limit: each rank writes its share
//!   of BYTES in 1 MiB `write`s to one file, then fsyncs it.
//!
//! Every figure is one JSON line `{bench, ranks, rows, bytes, seconds}` appended to OUT.json
//! by rank 0; seconds are the slowest rank's.

use anyhow::{bail, Context as _, Result};
use arrow_array::RecordBatch;
use gang::data::{read_partition, Input, PartitionPlan, PlanOptions, Prefetch, PrefetchOptions};
use gang::internal::jobs::standardize::{feature_columns, standardize};
use gang::internal::jobs::stats::TableSummary;
use gang::stage::{MapStage, OutputFormat};
use gang::{Context, ReduceOp};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ctx = gang::init()?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["scan-raw", dir, out] => scan_raw(&ctx, Path::new(dir), out),
        ["scan-gang", dir, out] => scan_gang(&ctx, dir, out),
        ["h5-gang", file, out] => h5_gang(&ctx, file, out),
        ["map-gang", input, output, out] => map_gang(&ctx, input, Path::new(output), out),
        ["rw-raw", input, output, out] => rw_raw(&ctx, Path::new(input), Path::new(output), out),
        ["write-plain", bytes, dir, out] => write_plain(&ctx, bytes.parse()?, Path::new(dir), out),
        _ => bail!("usage: data-bench scan-raw DIR OUT | scan-gang DIR OUT | h5-gang FILE OUT | map-gang IN OUTDIR OUT | rw-raw IN OUTDIR OUT"),
    }
}

/// The Parquet files of a directory, sorted (what the planner reads too).
fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "parquet"));
    files.sort();
    Ok(files)
}

fn file_bytes(files: &[PathBuf]) -> u64 {
    files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum()
}

/// Appends one figure (rank 0), with the slowest rank's seconds and the gang's rows.
fn report(ctx: &Context, out: &str, bench: &str, rows: u64, bytes: u64, seconds: f64) -> Result<()> {
    let comm = ctx.comm();
    let seconds = comm.allreduce_scalar(seconds, ReduceOp::Max)?;
    let rows = comm.allreduce_scalar(rows, ReduceOp::Sum)?;
    let bytes = comm.allreduce_scalar(bytes, ReduceOp::Sum)?;
    if ctx.rank() == 0 {
        let line = serde_json::json!({ "bench": bench, "ranks": ctx.world(), "rows": rows, "bytes": bytes, "seconds": seconds });
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
        writeln!(f, "{line}")?;
        println!(
            "{bench:>10} ranks={} rows={rows} {:.3} s  {:.1} Mrows/s  {:.0} MB/s",
            ctx.world(),
            seconds,
            rows as f64 / seconds / 1e6,
            bytes as f64 / seconds / 1e6
        );
    }
    Ok(())
}

fn read_raw(file: &Path, batch_size: usize) -> Result<Vec<RecordBatch>> {
    let f = std::fs::File::open(file)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)?.with_batch_size(batch_size).build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Rank r reads row groups r, r+N, ... of the files in order (whole files when each has
/// one row group), in a plain loop.
fn scan_raw(ctx: &Context, dir: &Path, out: &str) -> Result<()> {
    let files = if dir.is_dir() { parquet_files(dir)? } else { vec![dir.to_path_buf()] };
    let mut groups = Vec::new();
    for f in &files {
        let meta = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f)?)?;
        for g in meta.metadata().row_groups().iter().enumerate() {
            groups.push((f.clone(), g.0, g.1.compressed_size() as u64));
        }
    }
    let mine: Vec<_> = groups.into_iter().skip(ctx.rank()).step_by(ctx.world()).collect();
    ctx.comm().barrier()?;
    let t = Instant::now();
    let mut rows = 0u64;
    for (f, g, _) in &mine {
        let file = std::fs::File::open(f)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.with_row_groups(vec![*g]).with_batch_size(65536);
        for b in reader.build()? {
            rows += b?.num_rows() as u64;
        }
    }
    let bytes = mine.iter().map(|m| m.2).sum();
    report(ctx, out, "scan-raw", rows, bytes, t.elapsed().as_secs_f64())
}

fn write_plain(ctx: &Context, bytes: u64, dir: &Path, out: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mine = bytes / ctx.world() as u64;
    let block = vec![0x5au8; 1 << 20];
    let path = dir.join(format!("plain-{}.bin", ctx.rank()));
    ctx.comm().barrier()?;
    let t = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut left = mine;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    let seconds = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    report(ctx, out, "write-plain", 0, mine, seconds)
}

fn scan_gang(ctx: &Context, dir: &str, out: &str) -> Result<()> {
    let opts = PlanOptions::default();
    let plan = PartitionPlan::discover_on_root(ctx.comm(), &[Input::parse(dir)?], &opts)?;
    let mine: Vec<_> = plan.for_rank(ctx.rank(), ctx.world()).into_iter().cloned().collect();
    let bytes: u64 = mine.iter().map(|p| p.bytes).sum();
    let idle = ctx.comm().allreduce_scalar(u64::from(mine.is_empty()), ReduceOp::Sum)?;
    if ctx.rank() == 0 && idle > 0 {
        eprintln!("scan-gang: {idle} of {} ranks have no partition", ctx.world());
    }
    ctx.comm().barrier()?;
    let t = Instant::now();
    let mut rows = 0u64;
    for item in Prefetch::new(mine, plan.schema.clone(), opts, PrefetchOptions::default()) {
        rows += item?.1.num_rows() as u64;
    }
    report(ctx, out, "scan-gang", rows, bytes, t.elapsed().as_secs_f64())
}

fn h5_gang(ctx: &Context, file: &str, out: &str) -> Result<()> {
    let opts = PlanOptions::default();
    let plan = PartitionPlan::discover(&[Input::parse(file)?], &opts)?;
    let t = Instant::now();
    let (mut rows, mut bytes) = (0u64, 0u64);
    if ctx.rank() == 0 {
        for p in &plan.partitions {
            for b in read_partition(p, &plan.schema, &opts)? {
                let b = b?;
                rows += b.num_rows() as u64;
                bytes += b
                    .columns()
                    .iter()
                    .map(|c| c.to_data().buffers().iter().map(|x| x.len() as u64).sum::<u64>())
                    .sum::<u64>();
            }
        }
    }
    report(ctx, out, "h5-gang", rows, bytes, t.elapsed().as_secs_f64())
}

/// Statistics of the input, as `gang standardize` computes them (not timed).
fn input_stats(input: &Path) -> Result<(TableSummary, Vec<String>)> {
    let files = parquet_files(input)?;
    let first = read_raw(&files[0], 65536)?;
    let schema = first[0].schema();
    let mut stats = TableSummary::new(&schema);
    for f in &files {
        for b in read_raw(f, 65536)? {
            stats.add(&b)?;
        }
    }
    let cols = feature_columns(&schema, &["y".to_string()]);
    Ok((stats, cols))
}

fn map_gang(ctx: &Context, input: &str, output: &Path, out: &str) -> Result<()> {
    let (stats, cols) = input_stats(Path::new(input))?;
    ctx.comm().barrier()?;
    let t = Instant::now();
    let report_ = MapStage::new(ctx, vec![Input::parse(input)?])
        .output(output, OutputFormat::default())
        .overwrite(true)
        .name("bench-standardize")
        .run(|b| standardize(b, &stats, &cols))?;
    let seconds = t.elapsed().as_secs_f64();
    // Rows and bytes of the whole gang, reported once.
    let (rows, bytes) = if ctx.rank() == 0 { (report_.rows, report_.bytes) } else { (0, 0) };
    report(ctx, out, "map-gang", rows, bytes, seconds)
}

fn rw_raw(ctx: &Context, input: &Path, output: &Path, out: &str) -> Result<()> {
    let (stats, cols) = input_stats(input)?;
    let files = parquet_files(input)?;
    let mine: Vec<PathBuf> = files.iter().skip(ctx.rank()).step_by(ctx.world()).cloned().collect();
    std::fs::create_dir_all(output)?;
    ctx.comm().barrier()?;
    // Read, in a plain loop.
    let t = Instant::now();
    let mut per_file = Vec::new();
    for f in &mine {
        per_file.push(read_raw(f, 65536)?);
    }
    let read_s = t.elapsed().as_secs_f64();
    let rows: u64 = per_file.iter().flatten().map(|b| b.num_rows() as u64).sum();
    // Standardize (not timed: the same function the map stage runs, counted in neither limit).
    let mapped: Vec<Vec<RecordBatch>> = per_file
        .iter()
        .map(|bs| bs.iter().map(|b| standardize(b.clone(), &stats, &cols)).collect::<gang::Result<_>>())
        .collect::<gang::Result<_>>()?;
    // Write, in a plain loop: ArrowWriter with zstd(3), like gang's default output.
    let t = Instant::now();
    let mut written = 0u64;
    for (i, bs) in mapped.iter().enumerate() {
        let path = output.join(format!("raw-{}-{i}.parquet", ctx.rank()));
        let file = std::fs::File::create(&path)?;
        let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build();
        let mut w = ArrowWriter::try_new(file, bs[0].schema(), Some(props))?;
        for b in bs {
            w.write(b)?;
        }
        let f = w.into_inner()?;
        f.sync_all()?;
        written += std::fs::metadata(&path)?.len();
    }
    let write_s = t.elapsed().as_secs_f64();
    report(ctx, out, "read-raw", rows, file_bytes(&mine), read_s)?;
    report(ctx, out, "write-raw", rows, written, write_s)
}
