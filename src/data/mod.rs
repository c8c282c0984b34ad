//! The data plane: partitioned datasets (Parquet, HDF5, Arrow IPC) read into Arrow
//! `RecordBatch`es, planned so that every rank of a gang reads its share.
//!
//! - [`plan`]: finding the files (Hive-style `key=value/` directories included) and cutting
//!   them into [`Partition`]s, balanced across ranks, deterministically.
//! - [`read_partition`]: one partition as an iterator of batches (`parquet`, `hdf5`, `ipc`).
//! - [`pipeline`]: the next batches decoded while the current one is processed.

mod format;
#[cfg(feature = "hdf5")]
pub(crate) mod hdf5;
mod ipc;
#[cfg(feature = "parquet")]
mod parquet;
pub mod pipeline;
pub mod plan;

/// The HDF5 writer, now with the other sinks in [`crate::stage`].
#[cfg(feature = "hdf5")]
pub use crate::stage::Hdf5Writer;
pub use pipeline::{Prefetch, PrefetchOptions};
pub use plan::{Hdf5TwoD, Input, PartitionPlan, PlanOptions};

use crate::error::{Error, Result};
use arrow_array::{new_null_array, Array, ArrayRef, RecordBatch, RecordBatchOptions, StringArray};
use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// Batches of one partition, in order.
pub type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// File formats gang reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FileFormat {
    /// Apache Parquet.
    Parquet,
    /// HDF5 (numeric datasets).
    Hdf5,
    /// Arrow IPC file format (`.arrow`, `.feather` v2).
    Ipc,
}

/// The part of a file one partition covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Slice {
    /// Parquet row groups `start..end`.
    RowGroups(Range<usize>),
    /// HDF5 rows `start..end` of every selected dataset.
    Rows(Range<u64>),
    /// Arrow IPC record batches `start..end`.
    Batches(Range<usize>),
    /// Rows `rows` (counted from the row group's first) of Parquet row group `row_group`:
    /// a row group cut so that more ranks share it.
    RowGroupRows {
        /// The row group.
        row_group: usize,
        /// Rows within it.
        rows: Range<u64>,
    },
}

/// One unit of work: a contiguous piece of one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Index in the plan; stable for the same inputs, whatever the world size.
    pub id: usize,
    /// The file.
    pub file: PathBuf,
    /// Its format.
    pub format: FileFormat,
    /// The piece of the file.
    pub slice: Slice,
    /// Number of rows.
    pub rows: u64,
    /// Approximate bytes (compressed size in the file).
    pub bytes: u64,
    /// Hive-style `key=value` directory components above the file, outermost first;
    /// they become columns of every batch.
    pub hive: Vec<(String, String)>,
    /// For HDF5: the datasets read as columns.
    pub datasets: Vec<String>,
}

impl Partition {
    /// `partition 3 (row groups 4..6)`: for error messages.
    pub fn describe(&self) -> String {
        match &self.slice {
            Slice::RowGroups(r) => format!("partition {} (row groups {}..{})", self.id, r.start, r.end),
            Slice::Rows(r) => format!("partition {} (rows {}..{})", self.id, r.start, r.end),
            Slice::Batches(r) => format!("partition {} (record batches {}..{})", self.id, r.start, r.end),
            Slice::RowGroupRows { row_group, rows } => {
                format!("partition {} (rows {}..{} of row group {row_group})", self.id, rows.start, rows.end)
            }
        }
    }
}

/// The batches of one partition, with the columns of `schema` (the plan's schema: the
/// projected file columns and the Hive keys as constant Utf8 columns), at most
/// `opts.batch_size` rows each.
///
/// # Errors
/// [`Error::Input`] naming the file and the partition for anything wrong with the file:
/// unreadable, corrupt or truncated, changed since planning (missing column, row group or
/// dataset), or a decode error midway (then as an item of the iterator).
pub fn read_partition(p: &Partition, schema: &SchemaRef, opts: &PlanOptions) -> Result<BatchIter> {
    if opts.batch_size == 0 {
        return Err(Error::InvalidArgument("batch_size must be at least 1".into()));
    }
    format::driver(p.format, &p.file)?.read(p, schema, opts)
}

/// An input error about partition `p`.
pub(crate) fn partition_error(p: &Partition, detail: impl std::fmt::Display) -> Error {
    Error::input(&p.file, Some(p.describe()), detail.to_string())
}

/// `true` if `name` is a Hive key of `p` rather than a column of its file.
pub(crate) fn is_hive_key(p: &Partition, name: &str) -> bool {
    p.hive.iter().any(|(k, _)| k == name)
}

/// Decoded batches of `p`, assembled into `schema`; the stream ends after the first error
/// (which names the partition), as a reader must not be polled past a decode failure.
pub(crate) fn assembled<E: std::fmt::Display>(
    decoded: impl Iterator<Item = std::result::Result<RecordBatch, E>> + Send + 'static,
    p: &Partition,
    schema: &SchemaRef,
) -> impl Iterator<Item = Result<RecordBatch>> + Send + 'static {
    let (p, schema) = (p.clone(), schema.clone());
    let mut failed = false;
    decoded.map_while(move |b| {
        if failed {
            return None;
        }
        let out =
            b.map_err(|e| partition_error(&p, format!("decode error: {e}"))).and_then(|b| assemble(&b, &schema, &p));
        failed = out.is_err();
        Some(out)
    })
}

/// Puts the columns of a decoded `batch` into the order and types of `schema`, adding the
/// Hive keys of `p` as constant columns.
pub(crate) fn assemble(batch: &RecordBatch, schema: &SchemaRef, p: &Partition) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        if let Some((_, v)) = p.hive.iter().find(|(k, _)| k == field.name()) {
            columns.push(if v == plan::HIVE_NULL {
                new_null_array(field.data_type(), n)
            } else {
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(v.as_str(), n)))
            });
            continue;
        }
        let c = batch.column_by_name(field.name()).ok_or_else(|| {
            partition_error(p, format!("no column {:?} (the file changed since the plan was made?)", field.name()))
        })?;
        if c.data_type() != field.data_type() {
            return Err(partition_error(
                p,
                format!("column {:?} is {} here but {} in the plan", field.name(), c.data_type(), field.data_type()),
            ));
        }
        if !field.is_nullable() && c.null_count() > 0 {
            return Err(partition_error(
                p,
                format!("column {:?} has nulls but was planned as non-nullable", field.name()),
            ));
        }
        columns.push(c.clone());
    }
    RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(n)))
        .map_err(|e| partition_error(p, e))
}
