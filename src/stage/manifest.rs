//! The records of committed output: a sidecar per committed partition ([`PartStats`]) and
//! the job's `_SUCCESS` manifest ([`Manifest`]).

use crate::error::{Error, Result};
use arrow_schema::Schema;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Name of the manifest file that marks a committed output directory.
pub const SUCCESS: &str = "_SUCCESS";

/// One committed output partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartStats {
    /// Partition id (the input partition's id for a map stage).
    pub id: usize,
    /// File name inside the output directory, e.g. `part-00003.parquet`.
    pub file: String,
    /// Number of rows.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the file.
    pub crc32: u32,
    /// The rank that wrote it (informational: a relaunch may use another world size).
    pub rank: usize,
}

/// What a task commit leaves beside the data file: its stats and the output schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    pub stats: PartStats,
    pub schema: serde_json::Value,
}

/// The `_SUCCESS` manifest of a committed output directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version of this record (1).
    pub version: u32,
    /// Fingerprint of the stage that wrote the output.
    pub fingerprint: String,
    /// Output format, as [`super::OutputFormat`] prints it (`parquet:zstd:3`).
    pub format: String,
    /// Every partition, by id.
    pub partitions: Vec<PartStats>,
    /// Sum of the partitions' rows.
    pub total_rows: u64,
    /// Sum of the partitions' bytes.
    pub total_bytes: u64,
    /// The output schema (`{"fields": [{"name", "data_type", "nullable"}]}`), or `null`
    /// when the stage had no partitions.
    pub schema: serde_json::Value,
    /// Wall-clock time of the job commit, nanoseconds since the Unix epoch.
    pub committed_unix_ns: u128,
}

impl Manifest {
    /// Reads `dir/_SUCCESS`.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read; [`Error::Output`] if it is not a gang manifest.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(SUCCESS);
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&text).map_err(|e| Error::Output {
            path: path.clone(),
            detail: format!("not a gang output manifest ({e}); it was not written by gang"),
        })
    }

    /// Checks that every listed file exists in `dir` with the listed size and CRC-32.
    ///
    /// # Errors
    /// [`Error::Output`] naming the first file that differs; [`Error::Io`] if one cannot be
    /// read.
    pub fn verify(&self, dir: &Path) -> Result<()> {
        for p in &self.partitions {
            let path = dir.join(&p.file);
            let d = super::writer::FileDigest::of_file(&path)?;
            if d.bytes != p.bytes || d.crc32 != p.crc32 {
                return Err(Error::Output {
                    path,
                    detail: format!(
                        "damaged: {} bytes with CRC-32 {:08x}, but the manifest lists {} bytes with CRC-32 {:08x}",
                        d.bytes, d.crc32, p.bytes, p.crc32
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A schema as JSON: field names, data types (as arrow-rs prints them) and nullability.
pub fn schema_json(schema: &Schema) -> serde_json::Value {
    let fields: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({ "name": f.name(), "data_type": f.data_type().to_string(), "nullable": f.is_nullable() }))
        .collect();
    serde_json::json!({ "fields": fields })
}

/// 64-bit FNV-1a: a hash that stays the same across Rust versions and platforms (unlike
/// `DefaultHasher`), for fingerprints stored on disk.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};

    #[test]
    fn schemas_print_as_plain_json() {
        let s = Schema::new(vec![Field::new("a", DataType::Float32, true)]);
        assert_eq!(
            schema_json(&s),
            serde_json::json!({"fields": [{"name": "a", "data_type": "Float32", "nullable": true}]})
        );
    }

    #[test]
    fn fnv_is_the_published_function() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }
}
