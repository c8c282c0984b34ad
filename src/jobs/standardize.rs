//! The standardize map: `(x - mean) / std` for the feature columns, with the statistics of
//! the whole dataset (from [`super::stats`]).

use super::stats::TableSummary;
use crate::error::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{ArrayRef, Float32Array, Float64Array, RecordBatch};
use arrow_schema::DataType;
use std::sync::Arc;

/// Which columns to standardize: the floating-point columns, except those named in
/// `keep` (labels, ids).
pub fn feature_columns(batch_schema: &arrow_schema::Schema, keep: &[String]) -> Vec<String> {
    batch_schema
        .fields()
        .iter()
        .filter(|f| matches!(f.data_type(), DataType::Float32 | DataType::Float64))
        .filter(|f| !keep.iter().any(|k| k == f.name()))
        .map(|f| f.name().clone())
        .collect()
}

/// The version of the standardize function over `columns` with `stats`, for the stage's
/// fingerprint ([`crate::stage::MapStage::version`]): the columns and the exact mean and
/// standard deviation used for each. Other statistics give another version, so a stage
/// resumed over changed input never keeps partitions standardized with the old figures.
pub fn version(stats: &TableSummary, columns: &[String]) -> String {
    let used: Vec<(&str, Option<u64>, Option<u64>)> = columns
        .iter()
        .map(|c| {
            let s = stats.column(c);
            (c.as_str(), s.and_then(|s| s.mean()).map(f64::to_bits), s.and_then(|s| s.std()).map(f64::to_bits))
        })
        .collect();
    let doc = serde_json::to_string(&used).expect("plain values serialize");
    format!("stats-{:016x}", crate::stage::manifest::fnv1a64(doc.as_bytes()))
}

/// Standardizes `columns` of `batch`; other columns pass through. A column with zero (or
/// undefined) standard deviation is only centred.
///
/// Takes the batch by value: a column whose buffers nothing else holds (a batch just read)
/// is standardized in place, so the map stage touches no new memory for its output; a
/// shared column is copied as before. The values are the same either way.
///
/// # Errors
/// [`Error::InvalidArgument`] if a column is missing from the batch or the statistics.
pub fn standardize(batch: RecordBatch, stats: &TableSummary, columns: &[String]) -> Result<RecordBatch> {
    let (schema, mut arrays, _) = batch.into_parts();
    for name in columns {
        let idx =
            schema.index_of(name).map_err(|_| Error::InvalidArgument(format!("column {name} is not in the input")))?;
        let s = stats.column(name).ok_or_else(|| Error::InvalidArgument(format!("no statistics for column {name}")))?;
        let mean = s.mean().unwrap_or(0.0);
        let inv = match s.std() {
            Some(sd) if sd > 0.0 => 1.0 / sd,
            _ => 1.0,
        };
        // A typed handle on the column's buffers, then the batch's own handle dropped, so
        // that the buffers are this function's alone when nothing else holds them.
        let dt = arrays[idx].data_type().clone();
        arrays[idx] = match dt {
            DataType::Float32 => {
                let (m, k) = (mean as f32, inv as f32);
                let a = std::mem::replace(&mut arrays[idx], empty_column());
                let owned: Float32Array = a.as_primitive::<Float32Type>().clone();
                drop(a);
                Arc::new(in_place(owned, |x| (x - m) * k))
            }
            DataType::Float64 => {
                let a = std::mem::replace(&mut arrays[idx], empty_column());
                let owned: Float64Array = a.as_primitive::<Float64Type>().clone();
                drop(a);
                Arc::new(in_place(owned, |x| (x - mean) * inv))
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "column {name} has type {other}; only float columns are standardized"
                )))
            }
        };
    }
    Ok(RecordBatch::try_new(schema, arrays)?)
}

/// `op` applied to every value of `a`: in `a`'s own buffer when nothing else holds it, else
/// into a new one.
fn in_place<T, F>(a: arrow_array::PrimitiveArray<T>, op: F) -> arrow_array::PrimitiveArray<T>
where
    T: arrow_array::ArrowPrimitiveType,
    F: Fn(T::Native) -> T::Native,
{
    match a.unary_mut(&op) {
        Ok(done) => done,
        Err(shared) => shared.unary(op),
    }
}

/// A placeholder for a column taken out of a batch for a moment.
fn empty_column() -> ArrayRef {
    Arc::new(Float32Array::from(Vec::<f32>::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::gen::GenSpec;

    /// A generated batch of `rows` rows and `features` features, its statistics and its
    /// feature columns.
    fn fixture(rows: usize, features: usize, seed: u64) -> (RecordBatch, TableSummary, Vec<String>) {
        let spec = GenSpec { rows: rows as u64, features, classes: 2, partitions: 1, seed, noise: 0.0 };
        let batch = spec.generate(0, rows).unwrap().remove(0);
        let mut stats = TableSummary::new(&batch.schema());
        stats.add(&batch).unwrap();
        let cols = feature_columns(&batch.schema(), &["y".into(), "id".into()]);
        (batch, stats, cols)
    }

    #[test]
    fn standardized_features_have_mean_zero_and_unit_std() {
        let (batch, stats, cols) = fixture(5000, 3, 11);
        assert_eq!(cols, vec!["f0", "f1", "f2"]);
        let out = standardize(batch.clone(), &stats, &cols).unwrap();
        let mut after = TableSummary::new(&out.schema());
        after.add(&out).unwrap();
        for c in &cols {
            let s = after.column(c).unwrap();
            assert!(s.mean().unwrap().abs() < 1e-4, "{c}: mean {:?}", s.mean());
            assert!((s.std().unwrap() - 1.0).abs() < 1e-4, "{c}: std {:?}", s.std());
        }
        // Labels and ids pass through untouched.
        assert_eq!(out.column(0), batch.column(0));
        assert_eq!(out.column(4), batch.column(4));
    }

    #[test]
    fn a_batch_held_nowhere_else_is_standardized_in_its_own_buffers_with_the_same_values() {
        let (batch, stats, cols) = fixture(4000, 2, 5);
        // Shared (the test keeps `batch`): new buffers.
        let copied = standardize(batch.clone(), &stats, &cols).unwrap();
        let i = batch.schema().index_of(&cols[0]).unwrap();
        let before = batch.column(i).to_data().buffers()[0].as_ptr();
        assert_ne!(copied.column(i).to_data().buffers()[0].as_ptr(), before);
        // Held nowhere else (float columns in buffers of their own, as a reader hands
        // them over): the same buffers, the same values.
        let fresh = RecordBatch::try_new(
            batch.schema(),
            batch
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Float32 => {
                        Arc::new(Float32Array::from(c.as_primitive::<Float32Type>().values().to_vec())) as ArrayRef
                    }
                    _ => c.clone(),
                })
                .collect(),
        )
        .unwrap();
        let own = fresh.column(i).to_data().buffers()[0].as_ptr();
        let out = standardize(fresh, &stats, &cols).unwrap();
        assert_eq!(out.column(i).to_data().buffers()[0].as_ptr(), own, "not standardized in place");
        assert_eq!(out, copied);
    }
}
