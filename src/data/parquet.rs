//! Parquet: footers for planning, row-group ranges into batches with projection pushdown.

use super::format::{FileInfo, Format};
use super::{assembled, is_hive_key, partition_error, BatchIter, Partition, PlanOptions, Slice};
use crate::error::{Error, Result};
use ::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use ::parquet::arrow::ProjectionMask;
use arrow_schema::{Schema, SchemaRef};
use std::fs::File;
use std::path::Path;

fn open(path: &Path, location: Option<String>) -> Result<File> {
    File::open(path).map_err(|e| Error::input(path, location, format!("cannot open: {e}")))
}

fn footer_error(e: impl std::fmt::Display) -> String {
    format!(
        "not a readable Parquet file ({e}); the file may be truncated or not Parquet at all: \
         rewrite it, or remove it from the input"
    )
}

/// Schema and row groups (rows, compressed bytes) from the footer.
pub(crate) fn file_info(path: &Path) -> Result<FileInfo> {
    let file = open(path, None)?;
    let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
        .map_err(|e| Error::input(path, Some("footer".into()), footer_error(e)))?;
    let pieces = meta
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| (rg.num_rows().max(0) as u64, rg.compressed_size().max(0) as u64))
        .collect();
    // Metadata (pandas, Spark) is not part of what files must agree on.
    let schema = Schema::new(meta.schema().fields().clone());
    Ok(FileInfo { schema, pieces, datasets: Vec::new() })
}

/// The batches of row groups `p.slice`, reading only the columns of `schema`.
pub(crate) fn read(p: &Partition, schema: &SchemaRef, opts: &PlanOptions) -> Result<BatchIter> {
    let Slice::RowGroups(range) = &p.slice else {
        return Err(partition_error(p, "a Parquet partition must cover row groups"));
    };
    let file = open(&p.file, Some(p.describe()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| partition_error(p, footer_error(e)))?;
    let available = builder.metadata().num_row_groups();
    if range.end > available {
        return Err(partition_error(
            p,
            format!("the file has {available} row groups (it changed since the plan was made); plan again"),
        ));
    }
    let mut roots = Vec::new();
    for f in schema.fields().iter().filter(|f| !is_hive_key(p, f.name())) {
        let i = builder.schema().index_of(f.name()).map_err(|_| {
            partition_error(p, format!("no column {:?} (the file changed since the plan was made?)", f.name()))
        })?;
        roots.push(i);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_row_groups(range.clone().collect())
        .with_batch_size(opts.batch_size)
        .build()
        .map_err(|e| partition_error(p, e))?;
    Ok(Box::new(assembled(reader, p, schema)))
}

/// The Parquet format of the data plane.
pub(crate) struct Parquet;

impl Format for Parquet {
    fn file_info(&self, path: &Path, _datasets: &[String], _opts: &PlanOptions) -> Result<FileInfo> {
        file_info(path)
    }

    fn read(&self, p: &Partition, schema: &SchemaRef, opts: &PlanOptions) -> Result<BatchIter> {
        read(p, schema, opts)
    }
}
