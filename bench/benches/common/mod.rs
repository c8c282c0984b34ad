//! Inputs shared by the criterion benches: the benchmark's table (float32 features and an
//! int8 label, the layout of `bench/map.sh`), built in memory, and scratch directories on
//! tmpfs for the code paths that take a path.

#![allow(dead_code)] // each bench file uses part of this module

use arrow_array::{ArrayRef, Float32Array, Int8Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use gang_kernels::SplitMix64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Features per row of the benchmark's table (as in `bench/map.sh`).
pub const FEATURES: usize = 32;

/// `f0..f{FEATURES-1}` float32 and an int8 `label`.
pub fn schema() -> SchemaRef {
    let mut fields: Vec<Field> = (0..FEATURES).map(|i| Field::new(format!("f{i}"), DataType::Float32, false)).collect();
    fields.push(Field::new("label", DataType::Int8, false));
    Arc::new(Schema::new(fields))
}

/// `rows` rows of [`schema`]: uniform random features in `[-1, 1)` (random mantissas, as
/// real features have; they do not compress) and labels 0/1.
pub fn batch(rows: usize, seed: u64) -> RecordBatch {
    let mut rng = SplitMix64::new(seed);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(FEATURES + 1);
    for _ in 0..FEATURES {
        let v: Float32Array = (0..rows).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        columns.push(Arc::new(v));
    }
    let label: Int8Array = (0..rows).map(|_| (rng.next_u64() & 1) as i8).collect();
    columns.push(Arc::new(label));
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
}

/// Bytes of the values of `batch`'s columns (what a decoder produces, what an encoder
/// reads).
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(|c| c.get_buffer_memory_size()).sum()
}

/// The limit of the Parquet benches: `batch`'s column buffers copied into `out`, which
/// holds [`batch_bytes`] bytes (one memcpy per column).
pub fn copy_columns(batch: &RecordBatch, out: &mut [u8]) {
    let mut at = 0;
    for c in batch.columns() {
        for b in c.to_data().buffers() {
            out[at..at + b.len()].copy_from_slice(b.as_slice());
            at += b.len();
        }
    }
}

/// A directory on tmpfs (`/dev/shm` when it exists, else the system's temporary directory),
/// removed on drop: paths for gang's file-based code with memory underneath.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new empty directory named after `what` and this process.
    pub fn new(what: &str) -> ScratchDir {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("gang-bench-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        ScratchDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
