//! Fixtures for the data-plane tests: files written by pyarrow and h5py (through
//! tests/fixtures/make_fixtures.py), and scratch directories for files gang writes.
#![allow(dead_code)]

use arrow_array::{Array, RecordBatch};
use gang::data::{read_partition, PartitionPlan, PlanOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The directory of the pyarrow/h5py fixtures, made once per test binary.
///
/// # Panics
/// Loudly, with the command that installs them, if python3, pyarrow, h5py or numpy are
/// missing: these tests must not pass by checking nothing.
pub fn python_fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("python-fixtures");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_fixtures.py");
        let out = crate::python::python().arg(&script).arg(&dir).output().unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); the data tests need python3 with pyarrow, h5py and numpy: python3 -m pip install pyarrow h5py numpy")
        });
        assert!(
            out.status.success(),
            "{} failed: {}\nthe data tests need pyarrow, h5py and numpy: python3 -m pip install pyarrow h5py numpy",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// A fresh, empty directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gang-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every batch of every partition of `plan`, in partition order.
pub fn read_all(plan: &PartitionPlan, opts: &PlanOptions) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for p in &plan.partitions {
        for b in read_partition(p, &plan.schema, opts).unwrap() {
            let b = b.unwrap();
            assert_eq!(b.schema(), plan.schema);
            assert!(
                b.num_rows() <= opts.batch_size(),
                "{} rows in a batch of at most {}",
                b.num_rows(),
                opts.batch_size()
            );
            out.push(b);
        }
    }
    out
}

/// Column `name` of all batches, as one vector.
pub fn column<T: arrow_array::ArrowPrimitiveType>(batches: &[RecordBatch], name: &str) -> Vec<T::Native> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
            let a = c
                .as_any()
                .downcast_ref::<arrow_array::PrimitiveArray<T>>()
                .unwrap_or_else(|| panic!("{name} is {}", c.data_type()));
            a.values().to_vec()
        })
        .collect()
}

/// String column `name` of all batches (nulls as `None`).
pub fn strings(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let a =
                b.column_by_name(name).unwrap().as_any().downcast_ref::<arrow_array::StringArray>().unwrap().clone();
            (0..a.len()).map(move |i| a.is_valid(i).then(|| a.value(i).to_string()))
        })
        .collect()
}
