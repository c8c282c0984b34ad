//! The HDF5 sink's writer: record batches of numeric columns into an HDF5 file, beside the
//! other sinks of [`super::writer`].

use crate::data::hdf5::{with_num, Num};
use crate::error::{Error, Result};
use ::hdf5::{Dataset, File, SimpleExtents};
use arrow_array::types::*;
use arrow_array::{Array, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_schema::Schema;
use std::path::{Path, PathBuf};

/// Rows per chunk of the datasets [`Hdf5Writer`] creates.
const WRITE_CHUNK_ROWS: usize = 65536;

/// Writes record batches of numeric columns to an HDF5 file: one chunked, gzip-compressed
/// (level 4), resizable 1-D dataset per column, named after the column.
///
/// # Examples
/// ```
/// use arrow_array::{Float64Array, Int32Array, RecordBatch};
/// use gang::stage::Hdf5Writer;
/// use std::sync::Arc;
///
/// let path = std::env::temp_dir().join(format!("gang-doc-{}.h5", std::process::id()));
/// let batch = RecordBatch::try_from_iter([
///     ("x", Arc::new(Float64Array::from(vec![0.5, 1.5])) as _),
///     ("y", Arc::new(Int32Array::from(vec![1, 2])) as _),
/// ])
/// .unwrap();
/// let mut w = Hdf5Writer::create(&path, &batch.schema()).unwrap();
/// w.write(&batch).unwrap();
/// w.write(&batch).unwrap();
/// w.finish().unwrap();
/// # std::fs::remove_file(&path).unwrap();
/// ```
pub struct Hdf5Writer {
    path: PathBuf,
    columns: Vec<(String, Num, Dataset)>,
    rows: usize,
    file: File,
}

impl std::fmt::Debug for Hdf5Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hdf5Writer").field("path", &self.path).field("rows", &self.rows).finish()
    }
}

impl Hdf5Writer {
    /// Creates (or truncates) `path` with one empty dataset per column of `schema`.
    ///
    /// # Errors
    /// [`Error::Output`] if a column is not numeric (i8..i64, u8..u64, f32, f64) or the file
    /// cannot be created.
    pub fn create(path: impl AsRef<Path>, schema: &Schema) -> Result<Hdf5Writer> {
        let path = path.as_ref().to_path_buf();
        let out_err = |detail: String| Error::Output { path: path.clone(), detail };
        let mut nums = Vec::new();
        for f in schema.fields() {
            let num = Num::from_arrow(f.data_type()).ok_or_else(|| {
                out_err(format!(
                    "column {:?} is {}: HDF5 output holds numeric columns only (i8..i64, u8..u64, f32, f64); \
                     drop or convert it, or write Parquet",
                    f.name(),
                    f.data_type()
                ))
            })?;
            nums.push((f.name().clone(), num));
        }
        let file = File::create(&path).map_err(|e| out_err(format!("cannot create: {e}")))?;
        let mut columns = Vec::with_capacity(nums.len());
        for (name, num) in nums {
            let ds = with_num!(num, A => file
                .new_dataset::<<A as ArrowPrimitiveType>::Native>()
                .chunk(WRITE_CHUNK_ROWS)
                .deflate(4)
                .shape(SimpleExtents::resizable([0usize]))
                .create(name.as_str()))
            .map_err(|e| out_err(format!("cannot create dataset {name}: {e}")))?;
            columns.push((name, num, ds));
        }
        Ok(Hdf5Writer { path, columns, rows: 0, file })
    }

    /// Appends the rows of `batch` (same columns, in the same order, as the schema).
    ///
    /// # Errors
    /// [`Error::Output`] if the batch does not match the schema, holds nulls, or HDF5 fails.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let out_err = |detail: String| Error::Output { path: self.path.clone(), detail };
        if batch.num_columns() != self.columns.len() {
            return Err(out_err(format!("batch has {} columns, the file {}", batch.num_columns(), self.columns.len())));
        }
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        for ((name, num, _), col) in self.columns.iter().zip(batch.columns()) {
            if col.data_type() != &num.data_type() {
                return Err(out_err(format!(
                    "column {name} is {} in the batch, {} in the file",
                    col.data_type(),
                    num.data_type()
                )));
            }
            if col.null_count() > 0 {
                return Err(out_err(format!(
                    "column {name} has {} nulls; HDF5 numeric datasets cannot hold nulls: fill them first",
                    col.null_count()
                )));
            }
        }
        let (start, end) = (self.rows, self.rows + n);
        for ((name, num, ds), col) in self.columns.iter().zip(batch.columns()) {
            with_num!(*num, A => {
                let values = col.as_any().downcast_ref::<PrimitiveArray<A>>().expect("type checked above").values();
                ds.resize(end).and_then(|_| ds.write_slice(&values[..], start..end))
            })
            .map_err(|e| out_err(format!("dataset {name}: write error: {e}")))?;
        }
        self.rows = end;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Flushes and closes the file, and syncs it to disk.
    ///
    /// # Errors
    /// [`Error::Output`] or [`Error::Io`] if flushing or syncing fails.
    pub fn finish(self) -> Result<()> {
        let Hdf5Writer { path, columns, file, .. } = self;
        file.flush().map_err(|e| Error::Output { path: path.clone(), detail: format!("flush failed: {e}") })?;
        drop(columns);
        file.close().map_err(|e| Error::Output { path: path.clone(), detail: format!("close failed: {e}") })?;
        std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&path, e))
    }
}
