//! Checkpoints of a gang, with SCR's discipline.
//!
//! [`CheckpointStore::save`] is collective: every rank writes its shard (a safetensors
//! file of its tensors and a JSON file of its metadata) into a new step directory under a
//! temporary name and fsyncs it; then all ranks vote (`allreduce(And)`). Only after a
//! unanimous vote does rank 0 write `MANIFEST.json` (world size, step, every file's size
//! and CRC-32), give the directory its final name and atomically move the `LATEST`
//! pointer; then it prunes to the newest `retention` checkpoints. A failed vote leaves a
//! temporary directory without a manifest, which is never used and is removed later.
//!
//! [`CheckpointStore::restore`] starts from `LATEST`, verifies every file it uses against
//! the manifest, and falls back to the previous complete checkpoint when the newest is
//! damaged (missing shard, bad checksum, torn manifest), saying which and why.
//!
//! ```text
//! DIR/                                    owner-only (0o700)
//!     LATEST                              "step-00000040"
//!     step-00000040/
//!         MANIFEST.json                   written last, by rank 0, after the vote
//!         rank-0.safetensors              replicated tensors + rank 0's sharded tensors
//!         rank-0.meta.json                step, epoch, RNG state, data cursor, ...
//!         rank-1.safetensors              rank 1's sharded tensors
//!         rank-1.meta.json
//!     step-00000050.tmp-a0/               attempt 0 died before its vote: never used
//! ```
//!
//! Replicated tensors (the same on every rank: model, optimizer state) are stored once, in
//! rank 0's shard, and restore onto any world size; sharded tensors (one part per rank)
//! restore only onto the world size that saved them.
//!
//! # Tensors in the caller's memory
//!
//! [`CheckpointStore::save`] and [`CheckpointStore::restore`] deal in owned `f32`
//! [`Tensor`]s. A program that keeps its state in its own buffers (a simulation's f64
//! fields, integer arrays, raw bytes) saves and restores them in place, without copies:
//!
//! - [`TensorRef`] and [`TensorMut`] are views of the caller's memory: a name, a
//!   [`Dtype`] (`F32`, `F64`, `I32`, `I64`, `U8`), a shape, and the little-endian element
//!   bytes, checked to hold exactly the shape's elements. `from_slice`/`vector` make them
//!   from slices of any [`Element`] (`f32`, `f64`, `i32`, `i64`, `u8`); `new` from bytes.
//!   (Every target gang builds for is little-endian; on a big-endian one gang does not
//!   compile rather than write files other readers would misread.)
//! - [`CheckpointStore::save_refs`]`(ctx, step, &meta, &replicated, &sharded)` saves with
//!   exactly the discipline of `save` (which is a thin layer over it): the encoder hands
//!   the caller's bytes to the checksum and the file, and the header records each dtype,
//!   so Python's `safetensors.numpy.load_file` gives `float64` for an `F64` field.
//! - [`CheckpointStore::restore_into`]`(ctx, &mut targets)` finds the newest usable
//!   checkpoint as `restore` does (which shares its code), checks that the targets are
//!   exactly what was saved (names, dtypes, shapes; an [`Error::Input`] naming the
//!   checkpoint, the tensor, the rank and both dtypes and shapes otherwise, before any
//!   byte is written), reads each shard file straight into them, checksummed, and
//!   broadcasts rank 0's replicated tensors into the other ranks' targets. It returns a
//!   [`RestoredInPlace`] (step, metadata, saved world size, checkpoints passed over).
//!   When a checkpoint's damage shows only in its checksum, its data has reached the
//!   targets already; the restore then falls back to the previous checkpoint, which
//!   overwrites every byte of them, and if none is usable the error says the targets were
//!   partly overwritten.
//!
//! `restore` refuses a checkpoint holding a tensor that is not `F32`, saying to use
//! `restore_into`; checkpoints of `f32` tensors are the same files either way.
//!
//! ```
//! use gang::checkpoint::{CheckpointStore, Meta, TensorMut, TensorRef};
//! use gang::{execute, Config};
//!
//! let dir = std::env::temp_dir().join(format!("gang-ckpt-refs-doc-{}", std::process::id()));
//! let store = CheckpointStore::new(&dir, 2).unwrap();
//! execute(Config::local(2), |ctx| {
//!     // The simulation's own buffers: a replicated f64 grid, this rank's i32 ids.
//!     let mut grid = vec![0.25f64, -1.5, 3.0, 1e-300];
//!     let mut ids = vec![ctx.rank() as i32; 3];
//!     let meta = Meta { data_cursor: 7, ..Meta::default() };
//!     store.save_refs(
//!         ctx,
//!         7,
//!         &meta,
//!         &[TensorRef::from_slice("grid", vec![2, 2], &grid)?],
//!         &[TensorRef::vector("ids", &ids)?],
//!     )?;
//!     grid.fill(0.0);
//!     ids.fill(-1);
//!     let mut targets =
//!         [TensorMut::vector("ids", &mut ids)?, TensorMut::from_slice("grid", vec![2, 2], &mut grid)?];
//!     let back = store.restore_into(ctx, &mut targets)?.expect("a checkpoint");
//!     assert_eq!((back.step, back.meta.data_cursor), (7, 7));
//!     assert_eq!(grid, [0.25, -1.5, 3.0, 1e-300]);
//!     assert_eq!(ids, [ctx.rank() as i32; 3]);
//!     Ok(())
//! })
//! .unwrap();
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```
//!
//! # Examples
//! ```
//! use gang::checkpoint::{CheckpointStore, Meta, State, Tensor};
//! use gang::{execute, Config};
//!
//! let dir = std::env::temp_dir().join(format!("gang-ckpt-doc-{}", std::process::id()));
//! let store = CheckpointStore::new(&dir, 2).unwrap();
//! execute(Config::local(2), |ctx| {
//!     let state = State::new()
//!         .with_replicated(Tensor::new("w", vec![2], vec![0.5, -1.0])?)
//!         .with_sharded(Tensor::new("m", vec![1], vec![ctx.rank() as f32])?)
//!         .with_meta(Meta { epoch: 3, ..Meta::default() });
//!     store.save(ctx, 10, &state)?;
//!     let back = store.restore(ctx)?.expect("a checkpoint");
//!     assert_eq!((back.step, back.meta.epoch), (10, 3));
//!     assert_eq!(back.tensor("w").unwrap().data, vec![0.5, -1.0]);
//!     assert_eq!(back.tensor("m").unwrap().data, vec![ctx.rank() as f32]);
//!     Ok(())
//! })
//! .unwrap();
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

mod inspect;
mod manifest;
pub(crate) mod safetensors;
mod store;
mod view;

pub use inspect::{list, verify, CheckpointInfo, CheckpointVerdict, VerifyReport};
pub use manifest::{step_dir_name, FileEntry, Manifest, ShardEntry, LATEST, MANIFEST};
pub use store::CheckpointStore;
pub use view::{Dtype, Element, TensorMut, TensorRef};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The format tag of manifests and metadata files.
pub const FORMAT: &str = "gang-checkpoint/1";

/// A named `f32` tensor: row-major `data` of `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Name, unique within a [`State`].
    pub name: String,
    /// Dimensions (empty for a scalar).
    pub shape: Vec<usize>,
    /// The values, row-major; as many as the product of `shape`.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor, checked.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the name is empty or reserved (`__metadata__`) or
    /// `data` does not hold the product of `shape` values.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let t = Tensor { name: name.into(), shape, data };
        t.check()?;
        Ok(t)
    }

    /// A one-dimensional tensor holding `data`.
    pub fn vector(name: impl Into<String>, data: Vec<f32>) -> Tensor {
        let shape = vec![data.len()];
        Tensor { name: name.into(), shape, data }
    }

    fn check(&self) -> Result<()> {
        if self.name.is_empty() || self.name == "__metadata__" {
            return Err(Error::InvalidArgument(format!("tensor name {:?} is empty or reserved", self.name)));
        }
        let numel = self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(self.data.len()) {
            return Err(Error::InvalidArgument(format!(
                "tensor {:?}: shape {:?} needs {} values but data holds {}",
                self.name,
                self.shape,
                numel.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string()),
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// What a rank saves besides its tensors. The step and the world size are recorded by
/// [`CheckpointStore::save`] itself.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Epoch of training.
    pub epoch: u64,
    /// State of the random number generator(s), as words.
    pub rng_state: Vec<u64>,
    /// Position in the input data (rows or batches consumed).
    pub data_cursor: u64,
    /// Anything else, free-form.
    pub extra: serde_json::Value,
}

/// What one rank passes to [`CheckpointStore::save`].
///
/// Replicated tensors are the same on every rank (model, optimizer state): rank 0's are
/// stored and the other ranks' are not read. Sharded tensors are this rank's own part.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// Metadata of this rank.
    pub meta: Meta,
    /// Tensors that are the same on every rank.
    pub replicated: Vec<Tensor>,
    /// This rank's part of partitioned tensors.
    pub sharded: Vec<Tensor>,
}

impl State {
    /// An empty state.
    pub fn new() -> State {
        State::default()
    }

    /// Sets the metadata.
    pub fn with_meta(mut self, meta: Meta) -> State {
        self.meta = meta;
        self
    }

    /// Adds a replicated tensor.
    pub fn with_replicated(mut self, t: Tensor) -> State {
        self.replicated.push(t);
        self
    }

    /// Adds a sharded tensor.
    pub fn with_sharded(mut self, t: Tensor) -> State {
        self.sharded.push(t);
        self
    }

    /// Checks shapes and that names are unique over both sets.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the tensor.
    pub fn check(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for t in self.replicated.iter().chain(&self.sharded) {
            t.check()?;
            if !seen.insert(t.name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "tensor name {:?} appears twice in the checkpoint state; names must be unique over \
                     replicated and sharded tensors",
                    t.name
                )));
            }
        }
        Ok(())
    }
}

/// What [`CheckpointStore::restore`] gives each rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The step of the checkpoint.
    pub step: u64,
    /// The world size that saved it (may differ from the current one when only replicated
    /// tensors were saved).
    pub saved_world_size: usize,
    /// Its step directory.
    pub dir: PathBuf,
    /// This rank's metadata as saved; rank 0's when the world size changed.
    pub meta: Meta,
    /// The replicated tensors (from rank 0's shard), in saved order.
    pub replicated: Vec<Tensor>,
    /// This rank's sharded tensors, in saved order.
    pub sharded: Vec<Tensor>,
    /// Newer checkpoints that were passed over, each with why (damaged, torn, ...).
    pub skipped: Vec<String>,
}

impl Restored {
    /// The tensor `name`, replicated or sharded.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.replicated.iter().chain(&self.sharded).find(|t| t.name == name)
    }

    /// Whether the world size differs from the one that saved the checkpoint.
    pub fn resharded(&self, world: usize) -> bool {
        self.saved_world_size != world
    }
}

/// What [`CheckpointStore::restore_into`] gives each rank besides the data, which is in
/// its targets.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredInPlace {
    /// The step of the checkpoint.
    pub step: u64,
    /// The world size that saved it (may differ from the current one when only replicated
    /// tensors were saved).
    pub saved_world_size: usize,
    /// Its step directory.
    pub dir: PathBuf,
    /// This rank's metadata as saved; rank 0's when the world size changed.
    pub meta: Meta,
    /// Newer checkpoints that were passed over, each with why (damaged, torn, ...).
    pub skipped: Vec<String>,
}

impl RestoredInPlace {
    /// Whether the world size differs from the one that saved the checkpoint.
    pub fn resharded(&self, world: usize) -> bool {
        self.saved_world_size != world
    }
}
