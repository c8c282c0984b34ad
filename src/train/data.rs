//! A rank's shard of a training set, in memory: features as one row-major `f32` matrix and
//! the label column.

use crate::context::Context;
use crate::data::{read_partition, PartitionPlan, PlanOptions};
use crate::error::{Error, Result};
use crate::ReduceOp;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema};
use gang_kernels::Targets;

/// Labels of a shard.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Labels {
    /// Class indices `0..k`.
    Class(Vec<i64>),
    /// Real values.
    Value(Vec<f32>),
}

impl Labels {
    /// As the kernels take them.
    pub fn targets(&self) -> Targets<'_> {
        match self {
            Labels::Class(v) => Targets::Class(v),
            Labels::Value(v) => Targets::Value(v),
        }
    }
}

/// A rank's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    /// `[rows, features]`, row-major.
    pub x: Vec<f32>,
    /// One label per row.
    pub labels: Labels,
    /// Number of rows.
    pub rows: usize,
    /// Number of features.
    pub features: usize,
}

impl Shard {
    /// Puts the rows in a random order drawn from `seed`: what `gang train` does once
    /// after loading, so that the blocks of rows an epoch shuffles (see
    /// [`train`](crate::train::train)) hold rows from all over the input even when it is
    /// sorted. The same shard and seed give the same order. The rows are copied into a
    /// new buffer backed by huge pages where the kernel offers them (for a moment the
    /// shard is in memory twice).
    pub fn shuffle_rows(&mut self, seed: u64) {
        let f = self.features;
        let mut order: Vec<usize> = (0..self.rows).collect();
        gang_kernels::SplitMix64::new(seed ^ 0x5348_5546_464c_4521).shuffle(&mut order);
        let mut x = Vec::with_capacity(self.rows * f);
        crate::sys::advise_huge_pages(x.spare_capacity_mut());
        for &r in &order {
            x.extend_from_slice(&self.x[r * f..(r + 1) * f]);
        }
        self.x = x;
        self.labels = match &self.labels {
            Labels::Class(v) => Labels::Class(order.iter().map(|&r| v[r]).collect()),
            Labels::Value(v) => Labels::Value(order.iter().map(|&r| v[r]).collect()),
        };
    }
}

/// The feature columns: `wanted`, or every numeric column but the label and `id`.
///
/// # Errors
/// [`Error::InvalidArgument`] naming a missing or non-numeric column.
pub fn feature_columns(schema: &Schema, label: &str, wanted: Option<&[String]>) -> Result<Vec<String>> {
    let numeric = |t: &DataType| t.is_integer() || matches!(t, DataType::Float32 | DataType::Float64);
    match wanted {
        Some(cols) => {
            for c in cols {
                let f = schema
                    .field_with_name(c)
                    .map_err(|_| Error::InvalidArgument(format!("feature column {c} is not in the input")))?;
                if !numeric(f.data_type()) {
                    return Err(Error::InvalidArgument(format!(
                        "feature column {c} has type {}, not a number",
                        f.data_type()
                    )));
                }
            }
            Ok(cols.to_vec())
        }
        None => Ok(schema
            .fields()
            .iter()
            .filter(|f| f.name() != label && f.name() != "id" && numeric(f.data_type()))
            .map(|f| f.name().clone())
            .collect()),
    }
}

fn push_f32(out: &mut Vec<f32>, a: &dyn Array, name: &str) -> Result<()> {
    if a.null_count() > 0 {
        return Err(Error::InvalidArgument(format!("column {name} has nulls; training needs complete rows")));
    }
    match a.data_type() {
        DataType::Float32 => out.extend_from_slice(a.as_primitive::<Float32Type>().values()),
        DataType::Float64 => out.extend(a.as_primitive::<Float64Type>().values().iter().map(|&v| v as f32)),
        DataType::Int64 => out.extend(a.as_primitive::<Int64Type>().values().iter().map(|&v| v as f32)),
        DataType::Int32 => out.extend(a.as_primitive::<Int32Type>().values().iter().map(|&v| v as f32)),
        other => {
            let cast = arrow_cast_free(a, other, name)?;
            out.extend(cast);
        }
    }
    Ok(())
}

/// Other integer types, converted element by element.
fn arrow_cast_free(a: &dyn Array, t: &DataType, name: &str) -> Result<Vec<f32>> {
    use arrow_array::types::*;
    Ok(match t {
        DataType::Int8 => a.as_primitive::<Int8Type>().values().iter().map(|&v| f32::from(v)).collect(),
        DataType::Int16 => a.as_primitive::<Int16Type>().values().iter().map(|&v| f32::from(v)).collect(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().values().iter().map(|&v| f32::from(v)).collect(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().values().iter().map(|&v| f32::from(v)).collect(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().values().iter().map(|&v| v as f32).collect(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().values().iter().map(|&v| v as f32).collect(),
        other => return Err(Error::InvalidArgument(format!("column {name} has type {other}, not a number"))),
    })
}

/// The rows of `batch` as a row-major `f32` matrix of `columns`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a missing or non-numeric column or nulls.
pub fn matrix(batch: &RecordBatch, columns: &[String]) -> Result<Vec<f32>> {
    let mut x = Vec::with_capacity(batch.num_rows() * columns.len());
    append_rows(&mut x, batch, columns)?;
    Ok(x)
}

/// Appends the rows of `batch` to a row-major matrix of `columns`.
fn append_rows(x: &mut Vec<f32>, batch: &RecordBatch, columns: &[String]) -> Result<()> {
    let n = batch.num_rows();
    let k = columns.len();
    let mut cols = Vec::with_capacity(k);
    for c in columns {
        let a = batch
            .column_by_name(c)
            .ok_or_else(|| Error::InvalidArgument(format!("column {c} is missing from a batch")))?;
        let mut v = Vec::with_capacity(n);
        push_f32(&mut v, a.as_ref(), c)?;
        cols.push(v);
    }
    let start = x.len();
    x.resize(start + n * k, 0.0);
    let out = &mut x[start..];
    for (j, col) in cols.iter().enumerate() {
        for (i, v) in col.iter().enumerate() {
            out[i * k + j] = *v;
        }
    }
    Ok(())
}

/// Reads this rank's partitions of `plan` into memory. The label is a class when it is an
/// integer column (`0..k`), a value when it is a float column. Returns the shard and the
/// number of classes over the whole gang (0 for real-valued labels).
///
/// # Errors
/// [`Error::Input`] from reading (naming file, partition and rank), [`Error::InvalidArgument`]
/// for a missing label or feature column, nulls, or negative classes.
pub fn load_shard(
    ctx: &Context,
    plan: &PartitionPlan,
    options: &PlanOptions,
    label: &str,
    features: &[String],
) -> Result<(Shard, usize)> {
    let label_type = plan
        .schema
        .field_with_name(label)
        .map_err(|_| {
            Error::InvalidArgument(format!(
                "label column {label:?} is not in the input (columns: {})",
                column_list(&plan.schema)
            ))
        })?
        .data_type()
        .clone();
    let is_class = label_type.is_integer();
    let mut x = Vec::new();
    let mut labels = if is_class { Labels::Class(Vec::new()) } else { Labels::Value(Vec::new()) };
    for p in plan.for_rank(ctx.rank(), ctx.world()) {
        for b in read_partition(p, &plan.schema, options).map_err(|e| e.with_rank(ctx.rank()))? {
            let b = b.map_err(|e| e.with_rank(ctx.rank()))?;
            append_rows(&mut x, &b, features)?;
            let a = b.column_by_name(label).expect("label column checked above");
            match &mut labels {
                Labels::Class(v) => {
                    let mut f = Vec::new();
                    push_f32(&mut f, a.as_ref(), label)?;
                    v.extend(f.into_iter().map(|c| c as i64));
                }
                Labels::Value(v) => push_f32(v, a.as_ref(), label)?,
            }
        }
    }
    let rows = match &labels {
        Labels::Class(v) => v.len(),
        Labels::Value(v) => v.len(),
    };
    let classes = match &labels {
        Labels::Class(v) => {
            if let Some(bad) = v.iter().find(|&&c| c < 0) {
                return Err(Error::InvalidArgument(format!(
                    "label {label} has the negative class {bad}; classes are 0..k"
                )));
            }
            let local_max = v.iter().copied().max().unwrap_or(0) as u64;
            ctx.comm().allreduce_scalar(local_max, ReduceOp::Max)? as usize + 1
        }
        Labels::Value(_) => 0,
    };
    Ok((Shard { x, labels, rows, features: features.len() }, classes.max(if is_class { 2 } else { 0 })))
}

fn column_list(schema: &Schema) -> String {
    schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
}
