//! HDF5 through hdf5-metno: shapes for planning, row ranges of 1-D/2-D numeric datasets
//! into batches (hyperslab reads of batch-size pieces), and the mapping between HDF5 and
//! Arrow numeric types that the writer ([`crate::stage::Hdf5Writer`]) shares.
//!
//! hdf5-metno serializes every HDF5 call behind one process-wide lock (the system
//! library is built without thread safety), so HDF5 partitions decode one at a time
//! whatever the number of prefetch threads.

use super::format::{FileInfo, Format, Hdf5TwoD};
use super::{assemble, partition_error, BatchIter, Partition, PlanOptions, Slice};
use crate::error::{Error, Result};
use ::hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use ::hdf5::{Dataset, File, H5Type};
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, FixedSizeListArray, PrimitiveArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// The numeric element types gang reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Num {
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
pub(crate) use with_num;

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

    pub(crate) fn from_arrow(t: &DataType) -> Option<Num> {
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

    pub(crate) fn data_type(self) -> DataType {
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
