//! What every input format implements, so that planning does not import the formats and
//! the formats do not import planning: the options of reading, what discovery learns about
//! a file, and the [`Format`] trait (file info, read a partition). Which format a file
//! has is probed from its name ([`super::plan::Input::parse`]); sinks are in
//! [`crate::stage::writer`].
//!
//! Parquet and HDF5 are cargo features (on by default); a build without one names the
//! feature when asked to read such a file.

use super::{BatchIter, FileFormat, Partition};
use crate::error::{Error, Result};
use arrow_schema::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How a 2-D HDF5 dataset `[rows, k]` becomes columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Hdf5TwoD {
    /// `k` columns `name_0 .. name_{k-1}`.
    #[default]
    Columns,
    /// One `FixedSizeList<k>` column `name`.
    FixedSizeList,
}

/// Options of planning and reading: a builder whose setters check what they are given.
///
/// ```
/// use gang::data::PlanOptions;
///
/// let o = PlanOptions::new().with_target_rows(50_000)?.with_batch_size(4096)?.with_columns(["x", "y"]);
/// assert_eq!((o.target_rows(), o.batch_size(), o.columns().unwrap().len()), (50_000, 4096, 2));
/// assert!(PlanOptions::new().with_batch_size(0).is_err());
/// # Ok::<(), gang::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    pub(crate) target_rows: u64,
    pub(crate) columns: Option<Vec<String>>,
    pub(crate) batch_size: usize,
    pub(crate) hdf5_2d: Hdf5TwoD,
    pub(crate) ranks: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { target_rows: 1 << 20, columns: None, batch_size: 65536, hdf5_2d: Hdf5TwoD::Columns, ranks: 1 }
    }
}

impl PlanOptions {
    /// The defaults: partitions of about `1 << 20` rows, every column, batches of 65536
    /// rows, 2-D HDF5 datasets as columns, balanced for one rank.
    pub fn new() -> PlanOptions {
        PlanOptions::default()
    }

    /// Rows per partition (about: row groups are grouped, not cut, to reach it).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `rows` is 0.
    pub fn with_target_rows(mut self, rows: u64) -> Result<PlanOptions> {
        if rows == 0 {
            return Err(Error::InvalidArgument("the rows per partition must be at least 1".into()));
        }
        self.target_rows = rows;
        Ok(self)
    }

    /// Columns to read, in this order (Hive keys included).
    pub fn with_columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> PlanOptions {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Every column (the default).
    pub fn with_all_columns(mut self) -> PlanOptions {
        self.columns = None;
        self
    }

    /// Rows per batch when reading.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `rows` is 0.
    pub fn with_batch_size(mut self, rows: usize) -> Result<PlanOptions> {
        if rows == 0 {
            return Err(Error::InvalidArgument("the rows per batch must be at least 1".into()));
        }
        self.batch_size = rows;
        Ok(self)
    }

    /// How 2-D HDF5 datasets become columns.
    pub fn with_hdf5_2d(mut self, how: Hdf5TwoD) -> PlanOptions {
        self.hdf5_2d = how;
        self
    }

    /// The ranks the plan is balanced for. With fewer partitions than ranks, or a
    /// partition more than twice a rank's share of the rows, Parquet row groups (and HDF5
    /// row ranges) are cut into row ranges, at page boundaries where the file has a page
    /// index, until every rank has its share within 10%. Default 1 (nothing is cut);
    /// [`PartitionPlan::discover_on_root`](super::PartitionPlan::discover_on_root) balances
    /// for the gang's size. 0 counts as 1.
    pub fn with_ranks(mut self, ranks: usize) -> PlanOptions {
        self.ranks = ranks.max(1);
        self
    }

    /// Rows per partition.
    pub fn target_rows(&self) -> u64 {
        self.target_rows
    }

    /// The columns to read, `None` for every column.
    pub fn columns(&self) -> Option<&[String]> {
        self.columns.as_deref()
    }

    /// Rows per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// How 2-D HDF5 datasets become columns.
    pub fn hdf5_2d(&self) -> Hdf5TwoD {
        self.hdf5_2d
    }

    /// The ranks the plan is balanced for.
    pub fn ranks(&self) -> usize {
        self.ranks
    }
}

/// What discovery learns about one file.
pub(crate) struct FileInfo {
    /// Every column of the file, before projection.
    pub schema: Schema,
    /// Pieces of the file with (rows, bytes): row groups, record batches, or one entry for
    /// an HDF5 file (the row count of its datasets).
    pub pieces: Vec<(u64, u64)>,
    /// HDF5 datasets actually read.
    pub datasets: Vec<String>,
}

/// One input format.
pub(crate) trait Format: Sync {
    /// Schema and pieces of `path` (metadata only); `datasets` selects HDF5 datasets.
    fn file_info(&self, path: &Path, datasets: &[String], opts: &PlanOptions) -> Result<FileInfo>;
    /// The batches of partition `p` with the columns of `schema`.
    fn read(&self, p: &Partition, schema: &SchemaRef, opts: &PlanOptions) -> Result<BatchIter>;
    /// Where piece `piece` of `path` may be cut into row ranges: the first rows of its
    /// pages, sorted, `0` first, from the page index of the column with the most pages.
    /// `None`: the piece cannot be cut (an Arrow IPC batch); empty: anywhere (no page
    /// index).
    fn cut_points(&self, _path: &Path, _piece: usize) -> Result<Option<Vec<u64>>> {
        Ok(None)
    }
}

/// The implementation of `format`, or an error naming `path` and the cargo feature this
/// build lacks.
pub(crate) fn driver(format: FileFormat, path: &Path) -> Result<&'static dyn Format> {
    match format {
        FileFormat::Ipc => Ok(&super::ipc::Ipc),
        #[cfg(feature = "parquet")]
        FileFormat::Parquet => Ok(&super::parquet::Parquet),
        #[cfg(feature = "hdf5")]
        FileFormat::Hdf5 => Ok(&super::hdf5::Hdf5),
        #[allow(unreachable_patterns)]
        other => Err(Error::input(
            path,
            None,
            format!(
                "this build of gang cannot read {other:?} files: rebuild it with the cargo feature \"{}\"",
                match other {
                    FileFormat::Parquet => "parquet",
                    _ => "hdf5",
                }
            ),
        )),
    }
}
