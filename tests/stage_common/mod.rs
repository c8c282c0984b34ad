//! Helpers of the stage tests: scratch directories, input datasets, reading outputs back.
#![allow(dead_code)]

use arrow_array::{Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use gang::stage::{open_sink, Manifest, OutputFormat};
use std::path::Path;
use std::sync::Arc;

pub use crate::common::Scratch;

pub fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("x", DataType::Float64, false)]))
}

/// `files` Parquet files `in-NN.parquet` in `dir`; file f holds ids `1000f .. 1000f + rows(f)`
/// with `rows(f) = 50 + 7f`, x = id / 8. Returns the total row count.
pub fn write_input(dir: &Path, files: usize) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut total = 0;
    for f in 0..files {
        let rows = 50 + 7 * f as i64;
        let ids: Vec<i64> = (0..rows).map(|i| 1000 * f as i64 + i).collect();
        let xs: Vec<f64> = ids.iter().map(|&i| i as f64 / 8.0).collect();
        let b = RecordBatch::try_new(
            input_schema(),
            vec![Arc::new(Int64Array::from(ids)), Arc::new(Float64Array::from(xs))],
        )
        .unwrap();
        let mut sink =
            open_sink(OutputFormat::default(), &dir.join(format!("in-{f:02}.parquet")), &input_schema()).unwrap();
        sink.write(&b).unwrap();
        sink.finish().unwrap();
        total += rows as u64;
    }
    total
}

/// The map function of the tests (and of `examples/map_stage.rs`): adds `y = 2x + 1`.
pub fn add_y(batch: RecordBatch) -> gang::Result<RecordBatch> {
    let x = batch.column_by_name("x").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
    let y: Float64Array = x.iter().map(|v| v.map(|v| 2.0 * v + 1.0)).collect();
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("y", DataType::Float64, true));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(y));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// What every correct run over `write_input(dir, files)` must produce: (id, x, y) by id.
pub fn expected_rows(files: usize) -> Vec<(i64, f64, f64)> {
    let mut v = Vec::new();
    for f in 0..files {
        for i in 0..50 + 7 * f as i64 {
            let id = 1000 * f as i64 + i;
            let x = id as f64 / 8.0;
            v.push((id, x, 2.0 * x + 1.0));
        }
    }
    v
}

pub use crate::common::visible;

/// Every row of a committed Parquet output `(id, x, y)`, sorted by id, after checking the
/// manifest against the files (all listed, sizes and CRC-32 right, rows right, nothing
/// else visible, no `_temporary`).
pub fn read_output(dir: &Path) -> Vec<(i64, f64, f64)> {
    let m = Manifest::read(dir).expect("a committed output has _SUCCESS");
    m.verify(dir).unwrap();
    assert!(!dir.join("_temporary").exists(), "_temporary left in {}", dir.display());
    let listed: Vec<String> = m.partitions.iter().map(|p| p.file.clone()).collect();
    assert_eq!(visible(dir), listed, "visible files differ from the manifest");
    let mut rows = Vec::new();
    for p in &m.partitions {
        let file = std::fs::File::open(dir.join(&p.file)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        let mut n = 0;
        for b in reader {
            let b = b.unwrap();
            let col = |name: &str| b.column_by_name(name).unwrap().clone();
            let (id, x, y) = (col("id"), col("x"), col("y"));
            let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
            let x = x.as_any().downcast_ref::<Float64Array>().unwrap();
            let y = y.as_any().downcast_ref::<Float64Array>().unwrap();
            for i in 0..b.num_rows() {
                rows.push((id.value(i), x.value(i), y.value(i)));
            }
            n += b.num_rows() as u64;
        }
        assert_eq!(n, p.rows, "{} has {n} rows, the manifest says {}", p.file, p.rows);
    }
    assert_eq!(rows.len() as u64, m.total_rows);
    rows.sort_by_key(|r| r.0);
    rows
}
