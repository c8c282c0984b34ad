//! `gang stats`: count, mean, standard deviation, min, max and null count of every numeric
//! column, combined across the ranks of a gang.
//!
//! Each partition is summarised on its own (Welford), the summaries of all partitions are
//! gathered, and every rank combines them in partition order (Chan et al.). The result is
//! therefore bitwise the same whatever the number of ranks, and the same on every rank.

use crate::comm::Comm;
use crate::error::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrowPrimitiveType, RecordBatch};
use arrow_schema::{DataType, Schema};
use serde::{Deserialize, Serialize};

/// Running summary of one numeric column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSummary {
    /// Column name.
    pub name: String,
    /// Non-null values seen.
    pub count: u64,
    /// Nulls seen.
    pub nulls: u64,
    // Sent between ranks as their bits: an empty summary's infinite min and max, and a
    // column's NaN, have no JSON number (serde_json would write `null` and refuse to read
    // it back), and the bits keep the combined figures exact.
    #[serde(with = "f64_bits")]
    mean: f64,
    #[serde(with = "f64_bits")]
    m2: f64,
    #[serde(with = "f64_bits")]
    min: f64,
    #[serde(with = "f64_bits")]
    max: f64,
}

/// An `f64` (de)serialized as the `u64` of its bits: every value, NaN and infinities
/// included, round-trips exactly through any serde format.
mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

impl ColumnSummary {
    fn new(name: &str) -> Self {
        ColumnSummary {
            name: name.to_string(),
            count: 0,
            nulls: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Adds a block of values: its own count, mean, sum of squared deviations (two passes
    /// over the block, which is in cache), minimum and maximum, merged in with Chan et al.'s
    /// update. Independent lanes, no division per value: several times faster than
    /// Welford's update per value, whose division chain bounds it, and as accurate.
    ///
    /// The values stay in their own type (`f32` columns are not first copied into `f64`):
    /// sums are taken in `f64`, minimum and maximum in the values' type (exact), with
    /// comparisons that skip NaN as `f64::min` does. Eight lanes, so that the compiler
    /// vectorizes both passes (with AVX2 where the CPU has it); the order of the additions
    /// is fixed by the code, so every build and every machine gives the same bits.
    fn push_block<T: BlockValue>(&mut self, xs: &[T]) {
        if xs.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)] // The AVX2 build, called where the CPU has AVX2.
        let (mean, m2, lo, hi) = if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { block_moments_avx2(xs) }
        } else {
            block_moments(xs)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (mean, m2, lo, hi) = block_moments(xs);
        let block = ColumnSummary { name: String::new(), count: xs.len() as u64, nulls: 0, mean, m2, min: lo, max: hi };
        self.merge(&block);
    }

    /// Adds another summary of the same column (Chan et al.'s parallel update).
    pub fn merge(&mut self, o: &ColumnSummary) {
        self.nulls += o.nulls;
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            // The other's figures, under this summary's own name and null count.
            (self.count, self.mean, self.m2, self.min, self.max) = (o.count, o.mean, o.m2, o.min, o.max);
            return;
        }
        let (na, nb) = (self.count as f64, o.count as f64);
        let n = na + nb;
        let delta = o.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += o.m2 + delta * delta * na * nb / n;
        self.count += o.count;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// Mean, if any value was seen.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }

    /// Sample standard deviation (n - 1), as Spark's `stddev` and pandas' `std`.
    pub fn std(&self) -> Option<f64> {
        (self.count > 1).then(|| (self.m2 / (self.count - 1) as f64).sqrt())
    }

    /// Smallest value.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// Largest value.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }
}

/// Summaries of every numeric column of a table (or of a part of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSummary {
    /// Rows seen.
    pub rows: u64,
    /// One per numeric column, in schema order.
    pub columns: Vec<ColumnSummary>,
}

/// Whether gang summarises columns of this type.
pub fn is_numeric(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Float32 | DataType::Float64)
}

impl TableSummary {
    /// An empty summary of the numeric columns of `schema`.
    pub fn new(schema: &Schema) -> Self {
        TableSummary {
            rows: 0,
            columns: schema
                .fields()
                .iter()
                .filter(|f| is_numeric(f.data_type()))
                .map(|f| ColumnSummary::new(f.name()))
                .collect(),
        }
    }

    /// Adds the rows of `batch` (same schema as given to [`TableSummary::new`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a summarised column is missing from the batch.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        for c in &mut self.columns {
            let array = batch
                .column_by_name(&c.name)
                .ok_or_else(|| Error::InvalidArgument(format!("column {} is missing from a batch", c.name)))?;
            c.nulls += array.null_count() as u64;
            match array.data_type() {
                DataType::Float32 => push_floats::<Float32Type>(c, array.as_ref()),
                DataType::Float64 => push_floats::<Float64Type>(c, array.as_ref()),
                DataType::Int8 => push_all::<Int8Type>(c, array.as_ref(), f64::from),
                DataType::Int16 => push_all::<Int16Type>(c, array.as_ref(), f64::from),
                DataType::Int32 => push_all::<Int32Type>(c, array.as_ref(), f64::from),
                DataType::Int64 => push_all::<Int64Type>(c, array.as_ref(), |v| v as f64),
                DataType::UInt8 => push_all::<UInt8Type>(c, array.as_ref(), f64::from),
                DataType::UInt16 => push_all::<UInt16Type>(c, array.as_ref(), f64::from),
                DataType::UInt32 => push_all::<UInt32Type>(c, array.as_ref(), f64::from),
                DataType::UInt64 => push_all::<UInt64Type>(c, array.as_ref(), |v| v as f64),
                other => {
                    return Err(Error::InvalidArgument(format!("column {} has type {other}, not a number", c.name)))
                }
            }
        }
        Ok(())
    }

    /// Adds another summary of the same columns.
    pub fn merge(&mut self, o: &TableSummary) {
        self.rows += o.rows;
        for (a, b) in self.columns.iter_mut().zip(&o.columns) {
            a.merge(b);
        }
    }

    /// The summary of a column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnSummary> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// A table for people.
    pub fn to_table(&self) -> String {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "{:<16} {:>12} {:>8} {:>14} {:>14} {:>14} {:>14}\n",
            "column", "count", "nulls", "mean", "std", "min", "max"
        );
        for c in &self.columns {
            s += &format!(
                "{:<16} {:>12} {:>8} {:>14} {:>14} {:>14} {:>14}\n",
                c.name,
                c.count,
                c.nulls,
                f(c.mean()),
                f(c.std()),
                f(c.min()),
                f(c.max())
            );
        }
        s + &format!("{} rows\n", self.rows)
    }

    /// A JSON report: `{rows, columns: [{name, count, nulls, mean, std, min, max}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rows": self.rows,
            "columns": self.columns.iter().map(|c| serde_json::json!({
                "name": c.name, "count": c.count, "nulls": c.nulls,
                "mean": c.mean(), "std": c.std(), "min": c.min(), "max": c.max(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Values per block of [`ColumnSummary::push_block`]: 32 KiB of f64, in L1/L2.
const BLOCK: usize = 4096;

/// Mean, sum of squared deviations, minimum and maximum of a non-empty block (see
/// [`ColumnSummary::push_block`]).
#[inline(always)]
fn block_moments<T: BlockValue>(xs: &[T]) -> (f64, f64, f64, f64) {
    const L: usize = 8;
    let mut sum = [0.0f64; L];
    let (mut lo, mut hi) = ([T::INFINITY; L], [T::NEG_INFINITY; L]);
    let mut chunks = xs.chunks_exact(L);
    for c in &mut chunks {
        for k in 0..L {
            let x = c[k];
            sum[k] += x.to_f64();
            lo[k] = if x < lo[k] { x } else { lo[k] };
            hi[k] = if x > hi[k] { x } else { hi[k] };
        }
    }
    for (k, &x) in chunks.remainder().iter().enumerate() {
        sum[k] += x.to_f64();
        lo[k] = if x < lo[k] { x } else { lo[k] };
        hi[k] = if x > hi[k] { x } else { hi[k] };
    }
    let mean = sum.iter().sum::<f64>() / xs.len() as f64;
    let mut sq = [0.0f64; L];
    let mut chunks = xs.chunks_exact(L);
    for c in &mut chunks {
        for k in 0..L {
            let d = c[k].to_f64() - mean;
            sq[k] += d * d;
        }
    }
    for (k, &x) in chunks.remainder().iter().enumerate() {
        let d = x.to_f64() - mean;
        sq[k] += d * d;
    }
    (
        mean,
        sq.iter().sum(),
        lo.iter().map(|v| v.to_f64()).fold(f64::INFINITY, f64::min),
        hi.iter().map(|v| v.to_f64()).fold(f64::NEG_INFINITY, f64::max),
    )
}

/// [`block_moments`] compiled for AVX2: the same additions in the same order (no fused
/// multiply-add), so the same bits, on wider registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn block_moments_avx2<T: BlockValue>(xs: &[T]) -> (f64, f64, f64, f64) {
    block_moments(xs)
}

/// A value [`ColumnSummary::push_block`] takes as it is.
trait BlockValue: Copy + PartialOrd {
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    fn to_f64(self) -> f64;
}

impl BlockValue for f32 {
    const INFINITY: f32 = f32::INFINITY;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl BlockValue for f64 {
    const INFINITY: f64 = f64::INFINITY;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// Float columns: blocks straight from the array's values when it has no nulls.
fn push_floats<T>(c: &mut ColumnSummary, array: &dyn Array)
where
    T: ArrowPrimitiveType,
    T::Native: BlockValue,
{
    let a = array.as_primitive::<T>();
    if a.null_count() == 0 {
        a.values().chunks(BLOCK).for_each(|chunk| c.push_block(chunk));
    } else {
        let valid: Vec<T::Native> = a.iter().flatten().collect();
        valid.chunks(BLOCK).for_each(|chunk| c.push_block(chunk));
    }
}

fn push_all<T: ArrowPrimitiveType>(c: &mut ColumnSummary, array: &dyn Array, to_f64: impl Fn(T::Native) -> f64) {
    let a = array.as_primitive::<T>();
    let mut buf: Vec<f64> = Vec::with_capacity(BLOCK.min(a.len()));
    let mut flush = |buf: &mut Vec<f64>| {
        c.push_block(buf);
        buf.clear();
    };
    if a.null_count() == 0 {
        for chunk in a.values().chunks(BLOCK) {
            buf.extend(chunk.iter().map(|&v| to_f64(v)));
            flush(&mut buf);
        }
    } else {
        for v in a.iter().flatten() {
            buf.push(to_f64(v));
            if buf.len() == BLOCK {
                flush(&mut buf);
            }
        }
        flush(&mut buf);
    }
}

/// Combines the per-partition summaries of every rank: every rank gets the same result,
/// combined in partition order, so the figures do not depend on the number of ranks.
///
/// # Errors
/// Communication errors.
pub fn combine_across_ranks(comm: &Comm, empty: &TableSummary, mine: &[(usize, TableSummary)]) -> Result<TableSummary> {
    let bytes = serde_json::to_vec(mine).map_err(Error::external)?;
    let all = comm.allgather_bytes(&bytes)?;
    let mut parts: Vec<(usize, TableSummary)> = Vec::new();
    for b in all.iter() {
        let v: Vec<(usize, TableSummary)> = serde_json::from_slice(b).map_err(Error::external)?;
        parts.extend(v);
    }
    parts.sort_by_key(|(id, _)| *id);
    let mut total = empty.clone();
    for (_, s) in &parts {
        total.merge(s);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, Int32Array};
    use arrow_schema::Field;
    use std::sync::Arc;

    fn batch(xs: &[Option<f64>], ks: &[i32]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Float64, true),
            Field::new("k", DataType::Int32, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(xs.to_vec())),
                Arc::new(Int32Array::from(ks.to_vec())),
                Arc::new(arrow_array::StringArray::from(vec!["a"; ks.len()])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn summary_matches_the_textbook_figures() {
        let b = batch(&[Some(2.0), None, Some(4.0), Some(4.0), Some(5.0)], &[1, 2, 3, 4, 5]);
        let mut s = TableSummary::new(&b.schema());
        s.add(&b).unwrap();
        assert_eq!(s.columns.len(), 2, "the string column is not summarised");
        let x = s.column("x").unwrap();
        assert_eq!((x.count, x.nulls), (4, 1));
        assert_eq!(x.mean(), Some(3.75));
        assert!((x.std().unwrap() - 1.2583057392117916).abs() < 1e-12);
        assert_eq!((x.min(), x.max()), (Some(2.0), Some(5.0)));
        assert_eq!(s.rows, 5);
    }

    #[test]
    fn merging_parts_equals_one_pass() {
        let whole = batch(&[Some(1.0), Some(7.5), Some(-3.0), Some(2.25), Some(9.0), Some(0.5)], &[1, 2, 3, 4, 5, 6]);
        let mut one = TableSummary::new(&whole.schema());
        one.add(&whole).unwrap();
        let mut merged = TableSummary::new(&whole.schema());
        for (off, len) in [(0, 2), (2, 3), (5, 1)] {
            let mut part = TableSummary::new(&whole.schema());
            part.add(&whole.slice(off, len)).unwrap();
            merged.merge(&part);
        }
        let (a, b) = (one.column("x").unwrap(), merged.column("x").unwrap());
        assert_eq!(a.count, b.count);
        assert!((a.mean().unwrap() - b.mean().unwrap()).abs() < 1e-12);
        assert!((a.std().unwrap() - b.std().unwrap()).abs() < 1e-12);
        assert_eq!(a.min(), b.min());
        // Merging an empty summary changes nothing.
        merged.merge(&TableSummary::new(&whole.schema()));
        assert_eq!(merged.column("k").unwrap().count, 6);
    }

    #[test]
    fn combined_across_ranks_is_the_same_for_every_gang_size() {
        let whole = batch(&[Some(1.0), Some(7.5), Some(-3.0), Some(2.25), Some(9.0), Some(0.5)], &[1, 2, 3, 4, 5, 6]);
        let empty = TableSummary::new(&whole.schema());
        let parts: Vec<(usize, TableSummary)> = (0..6)
            .map(|i| {
                let mut s = empty.clone();
                s.add(&whole.slice(i, 1)).unwrap();
                (i, s)
            })
            .collect();
        let mut results = Vec::new();
        for n in [1, 2, 4] {
            let parts = parts.clone();
            let empty = empty.clone();
            let r = crate::execute(crate::Config::local(n), move |ctx| {
                let mine: Vec<_> = parts.iter().filter(|(id, _)| id % n == ctx.rank()).cloned().collect();
                combine_across_ranks(ctx.comm(), &empty, &mine)
            })
            .unwrap();
            assert!(r.windows(2).all(|w| w[0] == w[1]));
            results.push(r[0].clone());
        }
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0], results[2]);
        // An empty part (a zero-row file) and a NaN travel between ranks too.
        let mut odd = vec![(0, empty.clone())];
        let mut nan = empty.clone();
        nan.add(&batch(&[Some(f64::NAN)], &[1])).unwrap();
        odd.push((1, nan));
        let r = crate::execute(crate::Config::local(2), move |ctx| {
            let mine: Vec<_> = odd.iter().filter(|(id, _)| id % 2 == ctx.rank()).cloned().collect();
            combine_across_ranks(ctx.comm(), &TableSummary::new(&whole.schema()), &mine)
        })
        .unwrap();
        assert_eq!(r[0].rows, 1);
        assert!(r[0].column("x").unwrap().mean().unwrap().is_nan());
        assert_eq!(r[0].column("k").unwrap().min(), Some(1.0));
        let j = results[0].to_json();
        assert_eq!(j["columns"][0]["count"], 6);
        assert!(results[0].to_table().contains("6 rows"));
    }
}
