//! Output: writers, the exactly-once output committer, and map stages.
//!
//! - [`writer`]: [`OutputFormat`] and the [`BatchSink`]s that write Parquet, Arrow IPC and
//!   HDF5 files, checksummed and fsynced.
//! - [`committer`]: [`OutputCommitter`], Hadoop/Spark's output-committer discipline: each
//!   partition is written under a temporary attempt path and renamed on success; after a
//!   barrier rank 0 writes the `_SUCCESS` [`Manifest`]. A relaunched gang skips partitions
//!   already committed, so the output equals that of a run that never failed.
//! - [`map`]: [`MapStage`], partition -> `f(batch)` -> output partition, as a builder.
//!
//! ```
//! use gang::stage::{OutputCommitter, OutputFormat, Manifest};
//! use arrow_array::{Int64Array, RecordBatch};
//! use std::sync::Arc;
//!
//! let dir = std::env::temp_dir().join(format!("gang-stage-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! gang::execute(gang::Config::local(2), |ctx| {
//!     let c = OutputCommitter::begin(ctx, &dir, OutputFormat::default(), false, "doc")?;
//!     // Rank r writes partition r.
//!     let batch = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![ctx.rank() as i64; 3])) as _)])?;
//!     c.write_partition(ctx.rank(), &batch.schema(), [Ok(batch)])?;
//!     c.finish(ctx, ctx.world())
//! })
//! .unwrap();
//! let m = Manifest::read(&dir).unwrap();
//! assert_eq!((m.partitions.len(), m.total_rows), (2, 6));
//! m.verify(&dir).unwrap();
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

pub mod committer;
#[cfg(feature = "hdf5")]
mod hdf5;
pub mod manifest;
pub mod map;
pub mod writer;

pub use committer::OutputCommitter;
#[cfg(feature = "hdf5")]
pub use hdf5::Hdf5Writer;
pub use manifest::{Manifest, PartStats};
pub use map::{MapStage, StageReport};
pub use writer::{open_sink, BatchSink, FileDigest, OutputFormat, ParquetCompression, WrittenFile};
