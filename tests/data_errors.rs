//! Bad input: every error names the file and where in it, and says what to do.

mod data_support;
mod python;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use data_support::{python_fixtures, scratch};
use gang::data::{read_partition, Input, PartitionPlan, PlanOptions};
use gang::Error;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

fn write_parquet(path: &Path, batch: &RecordBatch, row_group: usize) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .set_compression(Compression::ZSTD(Default::default()))
        .build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn batch(n: i64, x: ArrayRef) -> RecordBatch {
    RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef), ("v", x)]).unwrap()
}

fn floats(n: i64) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64)))
}

fn discover(paths: &[&Path]) -> gang::Result<PartitionPlan> {
    let inputs: Vec<Input> = paths.iter().map(|p| Input::parse(p.to_str().unwrap()).unwrap()).collect();
    PartitionPlan::discover(&inputs, &PlanOptions::new().with_target_rows(1000).unwrap())
}

fn input_error(e: &Error) -> (&Path, Option<&str>, &str) {
    match e {
        Error::Input { path, location, detail, .. } => (path, location.as_deref(), detail),
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn truncated_parquet_names_the_file() {
    let dir = scratch("truncated");
    let f = dir.join("t.parquet");
    write_parquet(&f, &batch(5000, floats(5000)), 1000);
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = discover(&[&f]).unwrap_err();
    let (path, location, detail) = input_error(&e);
    assert_eq!(path, f);
    assert_eq!(location, Some("footer"));
    assert!(detail.contains("truncated"), "{detail}");
    assert!(e.to_string().contains("t.parquet"), "{e}");
}

#[test]
fn corruption_inside_a_row_group_names_the_file_and_partition() {
    let dir = scratch("corrupt");
    let f = dir.join("c.parquet");
    write_parquet(&f, &batch(20_000, floats(20_000)), 5000);
    let plan = discover(&[&f]).unwrap();
    // Smash the middle of the data pages, keeping the footer intact.
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 3;
    for b in &mut bytes[mid..mid + 4000] {
        *b = 0xA5;
    }
    std::fs::write(&f, &bytes).unwrap();
    let mut failure = None;
    'outer: for p in &plan.partitions {
        match read_partition(p, &plan.schema, &PlanOptions::default()) {
            Err(e) => {
                failure = Some((p.describe(), e));
                break;
            }
            Ok(it) => {
                for b in it {
                    if let Err(e) = b {
                        failure = Some((p.describe(), e));
                        break 'outer;
                    }
                }
            }
        }
    }
    let (describe, e) = failure.expect("reading a smashed file must fail");
    let (path, location, _) = input_error(&e);
    assert_eq!(path, f);
    assert_eq!(location, Some(describe.as_str()));
    assert!(describe.contains("row groups"), "{describe}");
}

#[test]
fn garbage_with_a_parquet_name_names_the_file() {
    let dir = scratch("garbage");
    let f = dir.join("g.parquet");
    std::fs::write(&f, b"this is not parquet at all, just some text that is long enough").unwrap();
    let e = discover(&[&f]).unwrap_err();
    let (path, _, detail) = input_error(&e);
    assert_eq!(path, f);
    assert!(detail.contains("not a readable Parquet file"), "{detail}");
    // The same garbage in a dataset directory, beside a good file.
    write_parquet(&dir.join("a.parquet"), &batch(10, floats(10)), 10);
    let e = discover(&[&dir]).unwrap_err();
    assert_eq!(input_error(&e).0, f);
    // And as Arrow IPC and HDF5.
    for name in ["g.arrow", "g.h5"] {
        let g = dir.join(name);
        std::fs::write(&g, b"this is not arrow or hdf5 either, just text").unwrap();
        let e = discover(&[&g]).unwrap_err();
        assert_eq!(input_error(&e).0, g, "{e}");
    }
}

#[test]
fn missing_files_and_empty_directories_are_named() {
    let dir = scratch("missing");
    let e = discover(&[&dir.join("nope.parquet")]).unwrap_err();
    assert!(input_error(&e).2.contains("does not exist"), "{e}");
    std::fs::write(dir.join("_SUCCESS"), b"").unwrap();
    let e = discover(&[&dir]).unwrap_err();
    let (path, _, detail) = input_error(&e);
    assert_eq!(path, dir);
    assert!(detail.contains("no data files"), "{detail}");
}

#[test]
fn a_file_removed_after_planning_names_the_partition() {
    let dir = scratch("removed");
    let f = dir.join("r.parquet");
    write_parquet(&f, &batch(10, floats(10)), 10);
    let plan = discover(&[&f]).unwrap();
    std::fs::remove_file(&f).unwrap();
    let e = read_partition(&plan.partitions[0], &plan.schema, &PlanOptions::default()).err().unwrap();
    let (path, location, detail) = input_error(&e);
    assert_eq!((path, location), (f.as_path(), Some("partition 0 (row groups 0..1)")));
    assert!(detail.contains("cannot open"), "{detail}");
}

#[test]
fn a_missing_hdf5_dataset_lists_the_ones_that_exist() {
    let f = python_fixtures().join("data.h5");
    let e =
        PartitionPlan::discover(&[Input::parse(&format!("{}:a,nope", f.display())).unwrap()], &PlanOptions::default())
            .unwrap_err();
    let (path, location, detail) = input_error(&e);
    assert_eq!(path, f);
    assert_eq!(location, Some("dataset nope"));
    assert!(detail.contains("a, b, c, cube, labels, m"), "{detail}");
    // A dataset that exists but cannot be columns.
    let e =
        PartitionPlan::discover(&[Input::parse(&format!("{}:labels", f.display())).unwrap()], &PlanOptions::default())
            .unwrap_err();
    assert!(e.to_string().contains("dataset labels") && e.to_string().contains("not numeric"), "{e}");
    let e =
        PartitionPlan::discover(&[Input::parse(&format!("{}:cube", f.display())).unwrap()], &PlanOptions::default())
            .unwrap_err();
    assert!(e.to_string().contains("dataset cube") && e.to_string().contains("[4, 2, 2]"), "{e}");
}

#[test]
fn hdf5_datasets_of_different_lengths_name_both() {
    let f = python_fixtures().join("bad_lengths.h5");
    let e =
        PartitionPlan::discover(&[Input::parse(f.to_str().unwrap()).unwrap()], &PlanOptions::default()).unwrap_err();
    let (path, location, detail) = input_error(&e);
    assert_eq!(path, f);
    assert_eq!(location, Some("datasets a, b"));
    assert!(detail.contains("a has 100 rows, b has 99 rows"), "{detail}");
}

#[test]
fn schemas_that_differ_name_both_files_and_the_field() {
    let dir = scratch("schemas");
    write_parquet(&dir.join("part-0.parquet"), &batch(10, floats(10)), 10);
    let ints: ArrayRef = Arc::new(Int64Array::from_iter_values(0..10));
    write_parquet(&dir.join("part-1.parquet"), &batch(10, ints), 10);
    let e = discover(&[&dir]).unwrap_err();
    match &e {
        Error::SchemaMismatch { first, second, field, detail } => {
            assert_eq!(first, &dir.join("part-0.parquet"));
            assert_eq!(second, &dir.join("part-1.parquet"));
            assert_eq!(field, "v");
            assert!(detail.contains("Float64") && detail.contains("Int64"), "{detail}");
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("part-0.parquet") && msg.contains("part-1.parquet") && msg.contains("\"v\""), "{msg}");

    // Selecting only the common column makes the same files readable.
    let o = PlanOptions::new().with_columns(["id"]);
    let plan = PartitionPlan::discover(&[Input::Parquet(dir.clone())], &o).unwrap();
    assert_eq!(plan.total_rows(), 20);

    // A column only in the second file.
    let extra = scratch("schemas-extra");
    write_parquet(&extra.join("a.parquet"), &batch(5, floats(5)), 5);
    let wide = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from_iter_values(0..5)) as ArrayRef),
        ("v", floats(5)),
        ("w", floats(5)),
    ])
    .unwrap();
    write_parquet(&extra.join("b.parquet"), &wide, 5);
    let e = discover(&[&extra]).unwrap_err();
    assert!(matches!(&e, Error::SchemaMismatch { field, .. } if field == "w"), "{e:?}");

    // Files under different Hive keys.
    let hive = scratch("schemas-hive");
    std::fs::create_dir_all(hive.join("year=2024")).unwrap();
    write_parquet(&hive.join("year=2024/a.parquet"), &batch(5, floats(5)), 5);
    write_parquet(&hive.join("b.parquet"), &batch(5, floats(5)), 5);
    let e = discover(&[&hive]).unwrap_err();
    assert!(matches!(&e, Error::SchemaMismatch { field, .. } if field == "year"), "{e:?}");
}

#[test]
fn a_missing_column_lists_the_columns() {
    let f = python_fixtures().join("rowgroups.parquet");
    let o = PlanOptions::new().with_columns(["id", "nope"]);
    let e = PartitionPlan::discover(&[Input::Parquet(f.clone())], &o).unwrap_err();
    let (path, _, detail) = input_error(&e);
    assert_eq!(path, f);
    assert!(detail.contains("\"nope\"") && detail.contains("id, x, name, small"), "{detail}");
}
