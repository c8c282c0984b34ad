//! HDF5 through hdf5-metno: shapes for planning, row ranges of 1-D/2-D numeric datasets
//! into batches (hyperslab reads of batch-size pieces), and [`Hdf5Writer`].
//!
//! hdf5-metno serializes every HDF5 call behind one process-wide lock (the system
//! library is built without thread safety), so HDF5 partitions decode one at a time
//! whatever the number of prefetch threads.

use super::format::{FileInfo, Format, Hdf5TwoD};
use super::{assemble, partition_error, BatchIter, Partition, PlanOptions, Slice};
use crate::error::{Error, Result};
use ::hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use ::hdf5::{Dataset, File, H5Type, SimpleExtents};
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, FixedSizeListArray, PrimitiveArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The numeric element types gang reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
}

/// Runs `$body` with `$A` bound to the Arrow primitive type of `$n`.
macro_rules! with_num {
    ($n:expr, $A:ident => $body:expr) => {
        match $n {
            Num::I8 => {
                type $A = Int8Type;
                $body
            }
            Num::I16 => {
                type $A = Int16Type;
                $body
            }
            Num::I32 => {
                type $A = Int32Type;
                $body
            }
            Num::I64 => {
                type $A = Int64Type;
                $body
            }
            Num::U8 => {
                type $A = UInt8Type;
                $body
            }
            Num::U16 => {
                type $A = UInt16Type;
                $body
            }
            Num::U32 => {
                type $A = UInt32Type;
                $body
            }
            Num::U64 => {
                type $A = UInt64Type;
                $body
            }
            Num::F32 => {
                type $A = Float32Type;
                $body
            }
            Num::F64 => {
                type $A = Float64Type;
                $body
            }
        }
    };
}

impl Num {
    fn from_descriptor(d: &TypeDescriptor) -> Option<Num> {
        Some(match d {
            TypeDescriptor::Integer(IntSize::U1) => Num::I8,
            TypeDescriptor::Integer(IntSize::U2) => Num::I16,
            TypeDescriptor::Integer(IntSize::U4) => Num::I32,
            TypeDescriptor::Integer(IntSize::U8) => Num::I64,
            TypeDescriptor::Unsigned(IntSize::U1) => Num::U8,
            TypeDescriptor::Unsigned(IntSize::U2) => Num::U16,
            TypeDescriptor::Unsigned(IntSize::U4) => Num::U32,
            TypeDescriptor::Unsigned(IntSize::U8) => Num::U64,
            TypeDescriptor::Float(FloatSize::U4) => Num::F32,
            TypeDescriptor::Float(FloatSize::U8) => Num::F64,
            _ => return None,
        })
    }

    fn from_arrow(t: &DataType) -> Option<Num> {
        Some(match t {
            DataType::Int8 => Num::I8,
            DataType::Int16 => Num::I16,
            DataType::Int32 => Num::I32,
            DataType::Int64 => Num::I64,
            DataType::UInt8 => Num::U8,
            DataType::UInt16 => Num::U16,
            DataType::UInt32 => Num::U32,
            DataType::UInt64 => Num::U64,
            DataType::Float32 => Num::F32,
            DataType::Float64 => Num::F64,
            _ => return None,
        })
    }

    fn data_type(self) -> DataType {
        with_num!(self, A => A::DATA_TYPE)
    }
}

/// A dataset read as columns: its element type, and `Some(k)` for `[rows, k]`.
struct Column {
    name: String,
    num: Num,
    width: Option<usize>,
    rows: u64,
}

impl Column {
    /// The Arrow fields this dataset becomes.
    fn fields(&self, twod: Hdf5TwoD) -> Vec<Field> {
        let t = self.num.data_type();
        match (self.width, twod) {
            (None, _) => vec![Field::new(&self.name, t, false)],
            (Some(k), Hdf5TwoD::Columns) => {
                (0..k).map(|j| Field::new(format!("{}_{j}", self.name), t.clone(), false)).collect()
            }
            (Some(k), Hdf5TwoD::FixedSizeList) => {
                let item = Arc::new(Field::new_list_field(t, false));
                vec![Field::new(&self.name, DataType::FixedSizeList(item, k as i32), false)]
            }
        }
    }
}

fn open_file(path: &Path, location: Option<String>) -> Result<File> {
    File::open(path).map_err(|e| {
        Error::input(path, location, format!("cannot open as HDF5 ({e}); the file may be truncated or not HDF5"))
    })
}

/// Every dataset name at the root, sorted.
fn root_datasets(file: &File) -> Vec<String> {
    let mut names: Vec<String> =
        file.datasets().unwrap_or_default().iter().map(|d| d.name().trim_start_matches('/').to_string()).collect();
    names.sort();
    names
}

/// Opens `name` and checks that it can be read as columns.
fn column(file: &File, path: &Path, name: &str) -> Result<(Dataset, Column)> {
    let loc = || Some(format!("dataset {name}"));
    let ds = match file.dataset(name) {
        Ok(ds) => ds,
        Err(_) => {
            let have = root_datasets(file);
            return Err(Error::input(
                path,
                loc(),
                format!(
                    "no such dataset; the datasets at the root are: {}",
                    if have.is_empty() { "(none)".to_string() } else { have.join(", ") }
                ),
            ));
        }
    };
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| Error::input(path, loc(), format!("cannot read the type: {e}")))?;
    let num = Num::from_descriptor(&desc).ok_or_else(|| {
        Error::input(
            path,
            loc(),
            format!("element type {desc:?} is not numeric (gang reads i8..i64, u8..u64, f32, f64)"),
        )
    })?;
    let shape = ds.shape();
    let width = match shape.len() {
        1 => None,
        2 if shape[1] > 0 => Some(shape[1]),
        _ => {
            return Err(Error::input(
                path,
                loc(),
                format!(
                    "shape {shape:?} cannot be read as columns: only [rows] and [rows, k] datasets with k >= 1 can"
                ),
            ))
        }
    };
    Ok((ds, Column { name: name.to_string(), num, width, rows: shape[0] as u64 }))
}

/// The columns and row count of `datasets` (all 1-D/2-D numeric root datasets if empty).
pub(crate) fn file_info(path: &Path, datasets: &[String], twod: Hdf5TwoD) -> Result<FileInfo> {
    let file = open_file(path, None)?;
    let names: Vec<String> = if datasets.is_empty() {
        let all: Vec<String> = root_datasets(&file).into_iter().filter(|n| column(&file, path, n).is_ok()).collect();
        if all.is_empty() {
            return Err(Error::input(
                path,
                None,
                format!(
                    "no 1-D or 2-D numeric dataset at the root (datasets: {}); name the datasets to read \
                     as file.h5:group/ds1,group/ds2",
                    root_datasets(&file).join(", ")
                ),
            ));
        }
        all
    } else {
        datasets.to_vec()
    };
    let mut cols = Vec::with_capacity(names.len());
    let mut bytes = 0;
    for n in &names {
        let (ds, c) = column(&file, path, n)?;
        bytes += ds.storage_size();
        cols.push(c);
    }
    check_lengths(path, &cols)?;
    let fields: Vec<Field> = cols.iter().flat_map(|c| c.fields(twod)).collect();
    let rows = cols[0].rows;
    Ok(FileInfo { schema: Schema::new(fields), pieces: vec![(rows, bytes)], datasets: names })
}

fn check_lengths(path: &Path, cols: &[Column]) -> Result<()> {
    if cols.iter().all(|c| c.rows == cols[0].rows) {
        return Ok(());
    }
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    let lens: Vec<String> = cols.iter().map(|c| format!("{} has {} rows", c.name, c.rows)).collect();
    Err(Error::input(
        path,
        Some(format!("datasets {}", names.join(", "))),
        format!(
            "the datasets have different lengths ({}); datasets read together as columns must have \
             the same number of rows: name the ones that belong together as file.h5:ds1,ds2",
            lens.join(", ")
        ),
    ))
}

/// The batches of rows `p.slice` of the datasets of `p` that `schema` needs.
pub(crate) fn read(p: &Partition, schema: &SchemaRef, opts: &PlanOptions) -> Result<BatchIter> {
    let Slice::Rows(range) = &p.slice else {
        return Err(partition_error(p, "an HDF5 partition must cover rows"));
    };
    let file = open_file(&p.file, Some(p.describe()))?;
    let mut sources = Vec::new();
    for name in &p.datasets {
        let (ds, c) = column(&file, &p.file, name).map_err(|e| partition_error(p, e_detail(e)))?;
        let wanted = c.fields(opts.hdf5_2d).iter().any(|f| schema.field_with_name(f.name()).is_ok());
        if wanted {
            if c.rows < range.end {
                return Err(partition_error(
                    p,
                    format!(
                        "dataset {name} has {} rows (the file changed since the plan was made); plan again",
                        c.rows
                    ),
                ));
            }
            sources.push((ds, c));
        }
    }
    Ok(Box::new(Hdf5Batches {
        p: p.clone(),
        schema: schema.clone(),
        twod: opts.hdf5_2d,
        sources,
        next: range.start,
        end: range.end,
        step: opts.batch_size as u64,
        failed: false,
        _file: file,
    }))
}

/// The detail of an input error (to re-wrap it with the partition).
fn e_detail(e: Error) -> String {
    match e {
        Error::Input { location: Some(l), detail, .. } => format!("{l}: {detail}"),
        Error::Input { detail, .. } => detail,
        other => other.to_string(),
    }
}

struct Hdf5Batches {
    p: Partition,
    schema: SchemaRef,
    twod: Hdf5TwoD,
    sources: Vec<(Dataset, Column)>,
    next: u64,
    end: u64,
    step: u64,
    failed: bool,
    // Keeps the file open while its datasets are read.
    _file: File,
}

impl Hdf5Batches {
    fn batch(&self, rows: Range<usize>) -> Result<RecordBatch> {
        let mut named: Vec<(String, ArrayRef)> = Vec::new();
        for (ds, c) in &self.sources {
            let arrays = with_num!(c.num, A => columns::<A>(ds, c, rows.clone(), self.twod))
                .map_err(|e| partition_error(&self.p, format!("dataset {}: read error: {e}", c.name)))?;
            named.extend(arrays);
        }
        let n = rows.len();
        let fields: Vec<Field> = named.iter().map(|(name, a)| Field::new(name, a.data_type().clone(), false)).collect();
        let arrays = named.into_iter().map(|(_, a)| a).collect();
        let opts = arrow_array::RecordBatchOptions::new().with_row_count(Some(n));
        let raw = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &opts)
            .map_err(|e| partition_error(&self.p, e))?;
        assemble(&raw, &self.schema, &self.p)
    }
}

impl Iterator for Hdf5Batches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        if self.failed || self.next >= self.end {
            return None;
        }
        let stop = (self.next + self.step).min(self.end);
        let out = self.batch(self.next as usize..stop as usize);
        self.next = stop;
        self.failed = out.is_err();
        Some(out)
    }
}

/// Rows `rows` of one dataset as named Arrow columns (a hyperslab read).
fn columns<A>(ds: &Dataset, c: &Column, rows: Range<usize>, twod: Hdf5TwoD) -> ::hdf5::Result<Vec<(String, ArrayRef)>>
where
    A: ArrowPrimitiveType,
    A::Native: H5Type,
{
    let n = rows.len();
    Ok(match c.width {
        None => {
            let v = ds.read_slice_1d::<A::Native, _>(rows)?.to_vec();
            vec![(c.name.clone(), Arc::new(PrimitiveArray::<A>::new(v.into(), None)) as ArrayRef)]
        }
        Some(k) => {
            let (v, _) = ds.read_slice_2d::<A::Native, _>((rows, ..))?.into_raw_vec_and_offset();
            match twod {
                Hdf5TwoD::Columns => (0..k)
                    .map(|j| {
                        let col = PrimitiveArray::<A>::from_iter_values((0..n).map(|i| v[i * k + j]));
                        (format!("{}_{j}", c.name), Arc::new(col) as ArrayRef)
                    })
                    .collect(),
                Hdf5TwoD::FixedSizeList => {
                    let item = Arc::new(Field::new_list_field(A::DATA_TYPE, false));
                    let values = Arc::new(PrimitiveArray::<A>::new(v.into(), None));
                    let list = FixedSizeListArray::try_new(item, k as i32, values, None)
                        .map_err(|e| ::hdf5::Error::from(e.to_string()))?;
                    vec![(c.name.clone(), Arc::new(list) as ArrayRef)]
                }
            }
        }
    })
}

/// Rows per chunk of the datasets [`Hdf5Writer`] creates.
const WRITE_CHUNK_ROWS: usize = 65536;

/// Writes record batches of numeric columns to an HDF5 file: one chunked, gzip-compressed
/// (level 4), resizable 1-D dataset per column, named after the column.
///
/// # Examples
/// ```
/// use arrow_array::{Float64Array, Int32Array, RecordBatch};
/// use gang::data::Hdf5Writer;
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

/// The Hdf5 format of the data plane.
pub(crate) struct Hdf5;

impl Format for Hdf5 {
    fn file_info(&self, path: &Path, datasets: &[String], opts: &PlanOptions) -> Result<FileInfo> {
        file_info(path, datasets, opts.hdf5_2d)
    }

    fn read(&self, p: &Partition, schema: &SchemaRef, opts: &PlanOptions) -> Result<BatchIter> {
        read(p, schema, opts)
    }
}
