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
/// # Errors
/// [`Error::InvalidArgument`] if a column is missing from the batch or the statistics.
pub fn standardize(batch: &RecordBatch, stats: &TableSummary, columns: &[String]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
    for name in columns {
        let idx =
            schema.index_of(name).map_err(|_| Error::InvalidArgument(format!("column {name} is not in the input")))?;
        let s = stats.column(name).ok_or_else(|| Error::InvalidArgument(format!("no statistics for column {name}")))?;
        let mean = s.mean().unwrap_or(0.0);
        let inv = match s.std() {
            Some(sd) if sd > 0.0 => 1.0 / sd,
            _ => 1.0,
        };
        let a = &arrays[idx];
        arrays[idx] = match a.data_type() {
            DataType::Float32 => {
                let (m, k) = (mean as f32, inv as f32);
                let out: Float32Array = a.as_primitive::<Float32Type>().unary(|x| (x - m) * k);
                Arc::new(out)
            }
            DataType::Float64 => {
                let out: Float64Array = a.as_primitive::<Float64Type>().unary(|x| (x - mean) * inv);
                Arc::new(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::gen::GenSpec;

    #[test]
    fn standardized_features_have_mean_zero_and_unit_std() {
        let spec = GenSpec { rows: 5000, features: 3, classes: 2, partitions: 1, seed: 11, noise: 0.0 };
        let batch = spec.generate(0, 5000).unwrap().remove(0);
        let mut stats = TableSummary::new(&batch.schema());
        stats.add(&batch).unwrap();
        let cols = feature_columns(&batch.schema(), &["y".into(), "id".into()]);
        assert_eq!(cols, vec!["f0", "f1", "f2"]);
        let out = standardize(&batch, &stats, &cols).unwrap();
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
}
