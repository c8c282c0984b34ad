//! Parquet: footers for planning, row-group ranges into batches with projection pushdown.

use super::format::{FileInfo, Format};
use super::{assembled, is_hive_key, partition_error, BatchIter, Partition, PlanOptions, Slice};
use crate::error::{Error, Result};
use ::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use ::parquet::arrow::ProjectionMask;
use ::parquet::file::metadata::PageIndexPolicy;
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

/// The first rows of the pages of row group `rg`, from the offset index of the column with
/// the most pages (sorted, starting at 0); empty when the file has no page index.
pub(crate) fn cut_points(path: &Path, rg: usize) -> Result<Vec<u64>> {
    let file = open(path, None)?;
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
    let meta = ArrowReaderMetadata::load(&file, options)
        .map_err(|e| Error::input(path, Some("page index".into()), footer_error(e)))?;
    let meta = meta.metadata();
    let (Some(index), Some(group)) = (meta.page_index(), meta.row_groups().get(rg)) else {
        return Ok(Vec::new());
    };
    let finest =
        (0..group.num_columns()).filter_map(|c| index.offset_index(rg, c)).max_by_key(|o| o.page_locations().len());
    let mut starts: Vec<u64> = finest
        .map(|o| o.page_locations().iter().map(|l| l.first_row_index.max(0) as u64).collect())
        .unwrap_or_default();
    starts.sort_unstable();
    starts.dedup();
    Ok(starts)
}

/// The batches of `p.slice` (row groups, or rows of one row group), reading only the
/// columns of `schema`, and, for rows of a row group, only the pages that hold them where
/// the file has a page index.
pub(crate) fn read(p: &Partition, schema: &SchemaRef, opts: &PlanOptions) -> Result<BatchIter> {
    let (groups, rows): (Vec<usize>, _) = match &p.slice {
        Slice::RowGroups(range) => (range.clone().collect(), None),
        Slice::RowGroupRows { row_group, rows } => (vec![*row_group], Some(rows.clone())),
        _ => return Err(partition_error(p, "a Parquet partition must cover row groups or rows of one")),
    };
    let file = open(&p.file, Some(p.describe()))?;
    let options = if rows.is_some() {
        ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional)
    } else {
        ArrowReaderOptions::new()
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
        .map_err(|e| partition_error(p, footer_error(e)))?;
    let available = builder.metadata().num_row_groups();
    if groups.iter().any(|&g| g >= available) {
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
    let mut builder = builder.with_projection(mask);
    if let Some(rows) = rows {
        let have = builder.metadata().row_group(groups[0]).num_rows().max(0) as u64;
        if rows.end > have || rows.start > rows.end {
            return Err(partition_error(
                p,
                format!(
                    "row group {} has {have} rows (the file changed since the plan was made); plan again",
                    groups[0]
                ),
            ));
        }
        let (skip, take) = (rows.start as usize, (rows.end - rows.start) as usize);
        builder =
            builder.with_row_selection(RowSelection::from(vec![RowSelector::skip(skip), RowSelector::select(take)]));
    }
    let reader =
        builder.with_row_groups(groups).with_batch_size(opts.batch_size).build().map_err(|e| partition_error(p, e))?;
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

    fn cut_points(&self, path: &Path, piece: usize) -> Result<Option<Vec<u64>>> {
        cut_points(path, piece).map(Some)
    }
}
