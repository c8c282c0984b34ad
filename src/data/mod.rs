//! The data plane: partitioned datasets (Parquet, HDF5, Arrow IPC) read into Arrow
//! `RecordBatch`es, planned so that every rank of a gang reads its share.
//!
//! - [`plan`]: finding the files (Hive-style `key=value/` directories included) and cutting
//!   them into [`Partition`]s, balanced across ranks, deterministically.
//! - [`read_partition`]: one partition as an iterator of batches (`parquet`, `hdf5`, `ipc`).
//! - [`pipeline`]: the next batches decoded while the current one is processed.

use crate::error::Result;
use arrow_array::RecordBatch;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::PathBuf;

/// Batches of one partition, in order.
pub type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// File formats gang reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
pub enum Slice {
    /// Parquet row groups `start..end`.
    RowGroups(Range<usize>),
    /// HDF5 rows `start..end` of every selected dataset.
    Rows(Range<u64>),
    /// Arrow IPC record batches `start..end`.
    Batches(Range<usize>),
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
        }
    }
}
