//! [`CheckpointStore`]: the collective save (write, fsync, vote, commit, prune) and the
//! collective restore (verify, fall back).

use super::manifest::{
    self, create_private_dir, create_private_file, entries, meta_file, read_checked, read_latest, step_dir_name,
    sync_dir, temp_dir_name, tensor_file, write_atomically, Entry, FileEntry, Manifest, ShardEntry, ShardMeta,
};
use super::safetensors::{self, ShardFile};
use super::view::{Dtype, TensorMut, TensorRef};
use super::{Meta, Restored, RestoredInPlace, State, Tensor, FORMAT};
use crate::comm::ReduceOp;
use crate::context::Participant;
use crate::error::{Error, Result};
use crate::fault::{FaultKind, FaultPlan};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A directory of checkpoints of one training run, written and read collectively by the
/// gang (see the [module documentation](super)).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    retention: usize,
    faults: FaultPlan,
}

/// What one rank reports after writing its shard.
#[derive(Debug, Serialize, Deserialize)]
struct Written {
    step: u64,
    replicated: Vec<String>,
    shard: ShardEntry,
}

/// Rank 0's choice during a restore, broadcast to every rank.
#[derive(Debug, Serialize, Deserialize)]
enum Decision {
    /// There is no checkpoint at all: start from scratch.
    Nothing,
    /// Load this checkpoint (checked by rank 0 as far as it can without reading shards).
    Try { name: String, manifest: Box<Manifest>, skipped: Vec<String> },
    /// Restoring is impossible.
    Fail { path: PathBuf, detail: String },
}

/// Why rank 0 passes over a checkpoint before the ranks read it.
enum Rejection {
    /// Damaged: try the previous one.
    Damaged(String),
    /// Cannot restore onto this gang: stop with this error.
    Incompatible(PathBuf, String),
}

/// A tensor as a shard file's header describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Saved {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
}

/// One rank's shard of a checkpoint, opened: metadata read and checked, header parsed,
/// data not yet read.
pub(crate) struct Opened {
    file: ShardFile,
    /// Rank 0's replicated tensors, in file order (empty on other ranks).
    replicated: Vec<Saved>,
    /// This rank's sharded tensors, in file order.
    sharded: Vec<Saved>,
    meta: Meta,
}

/// Why a rank's restore targets do not fit the checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct Mismatch {
    tensor: String,
    detail: String,
}

/// Where a restore puts the tensors' data: the caller's buffers ([`InPlace`]) or new
/// `f32` tensors ([`Owned`]).
trait Destination {
    /// Whether the buffers are the caller's (and so damaged data read into them before a
    /// fallback is worth saying).
    const IN_PLACE: bool;
    /// Makes ready to receive `replicated` (on every rank) and `sharded` (this rank's
    /// own), or says why it cannot.
    fn prepare(&mut self, replicated: &[Saved], sharded: &[Saved]) -> std::result::Result<(), Mismatch>;
    /// One buffer for each tensor prepared for.
    fn targets(&mut self) -> Vec<TensorMut<'_>>;
}

/// The caller's buffers, which must be exactly the tensors saved.
struct InPlace<'t, 'a>(&'t mut [TensorMut<'a>]);

impl Destination for InPlace<'_, '_> {
    const IN_PLACE: bool = true;

    fn prepare(&mut self, replicated: &[Saved], sharded: &[Saved]) -> std::result::Result<(), Mismatch> {
        let saved = || replicated.iter().chain(sharded);
        let list = |names: Vec<&str>| if names.is_empty() { "none".to_string() } else { names.join(", ") };
        for t in self.0.iter() {
            let Some(s) = saved().find(|s| s.name == t.name()) else {
                return Err(Mismatch {
                    tensor: t.name().into(),
                    detail: format!(
                        "no tensor of this name was saved on this rank (saved: {})",
                        list(saved().map(|s| s.name.as_str()).collect())
                    ),
                });
            };
            if s.dtype != t.dtype() || s.shape != t.shape() {
                return Err(Mismatch {
                    tensor: t.name().into(),
                    detail: format!(
                        "saved as {} {:?}, but the target is {} {:?}: restore into a buffer of the saved dtype and shape",
                        s.dtype,
                        s.shape,
                        t.dtype(),
                        t.shape()
                    ),
                });
            }
        }
        if let Some(s) = saved().find(|s| !self.0.iter().any(|t| t.name() == s.name)) {
            return Err(Mismatch {
                tensor: s.name.clone(),
                detail: format!(
                    "saved ({} {:?}) but no target was given for it; restore_into fills every saved tensor (targets: {})",
                    s.dtype,
                    s.shape,
                    list(self.0.iter().map(|t| t.name()).collect())
                ),
            });
        }
        Ok(())
    }

    fn targets(&mut self) -> Vec<TensorMut<'_>> {
        self.0.iter_mut().map(TensorMut::reborrow).collect()
    }
}

/// New `f32` tensors of the saved shapes, for [`CheckpointStore::restore`].
#[derive(Default)]
struct Owned {
    replicated: Vec<Tensor>,
    sharded: Vec<Tensor>,
}

impl Destination for Owned {
    const IN_PLACE: bool = false;

    fn prepare(&mut self, replicated: &[Saved], sharded: &[Saved]) -> std::result::Result<(), Mismatch> {
        let make = |s: &Saved| {
            if s.dtype != Dtype::F32 {
                return Err(Mismatch {
                    tensor: s.name.clone(),
                    detail: format!(
                        "is {} {:?}, but restore() returns f32 tensors only: restore it with CheckpointStore::restore_into into a buffer of that dtype",
                        s.dtype, s.shape
                    ),
                });
            }
            let data = vec![0f32; s.shape.iter().product()];
            Ok(Tensor { name: s.name.clone(), shape: s.shape.clone(), data })
        };
        self.replicated = replicated.iter().map(make).collect::<std::result::Result<_, _>>()?;
        self.sharded = sharded.iter().map(make).collect::<std::result::Result<_, _>>()?;
        Ok(())
    }

    fn targets(&mut self) -> Vec<TensorMut<'_>> {
        self.replicated.iter_mut().chain(&mut self.sharded).map(TensorMut::of).collect()
    }
}

/// The checkpoint a restore found, besides its data.
struct Found {
    step: u64,
    saved_world_size: usize,
    dir: PathBuf,
    meta: Meta,
    skipped: Vec<String>,
}

/// What one rank saves: its metadata and tensors.
struct Shard<'s, 'a> {
    meta: &'s Meta,
    replicated: &'s [TensorRef<'a>],
    sharded: &'s [TensorRef<'a>],
}

impl CheckpointStore {
    /// A store in `dir` keeping the newest `retention` complete checkpoints. Nothing is
    /// created until the first save. Reads the fault plan (`GANG_FAULT`) once.
    ///
    /// Keep `retention` at 2 or more: with 1 there is nothing to fall back to when the
    /// newest checkpoint is damaged.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `retention` is 0; [`Error::Environment`] for a
    /// malformed `GANG_FAULT`.
    pub fn new(dir: impl Into<PathBuf>, retention: usize) -> Result<CheckpointStore> {
        if retention == 0 {
            return Err(Error::InvalidArgument(
                "checkpoint retention must be at least 1 (2 or more to survive a damaged newest checkpoint)".into(),
            ));
        }
        Ok(CheckpointStore { dir: dir.into(), retention, faults: FaultPlan::from_env()? })
    }

    /// Replaces the fault plan (gang's tests and benchmarks; not API).
    #[doc(hidden)]
    pub fn with_faults(mut self, faults: FaultPlan) -> CheckpointStore {
        self.faults = faults;
        self
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many complete checkpoints are kept.
    pub fn retention(&self) -> usize {
        self.retention
    }

    /// Saves `state` as the checkpoint of `step`. Collective: every rank calls it with the
    /// same `step` and its own `state`. The `f32` tensors are saved as `F32` views
    /// ([`CheckpointStore::save_refs`]).
    ///
    /// Every rank writes and fsyncs its shard in a new directory under a temporary name;
    /// the ranks vote; only after a unanimous vote rank 0 writes the manifest, renames the
    /// directory to `step-<s>`, moves `LATEST` and prunes old checkpoints. A checkpoint of
    /// a step that already exists replaces it. On return every rank knows the checkpoint
    /// is committed, or every rank has an error.
    ///
    /// # Errors
    /// As [`CheckpointStore::save_refs`].
    pub fn save(&self, ctx: &impl Participant, step: u64, state: &State) -> Result<()> {
        fn views(ts: &[Tensor]) -> Vec<TensorRef<'_>> {
            ts.iter().map(TensorRef::of).collect()
        }
        self.save_refs(ctx, step, &state.meta, &views(&state.replicated), &views(&state.sharded))
    }

    /// Saves tensors that live in the caller's memory as the checkpoint of `step`:
    /// `replicated` (the same on every rank; rank 0's are stored, the other ranks' are not
    /// read) and this rank's `sharded` part, with `meta`. Collective, with the discipline
    /// of [`CheckpointStore::save`]. Each tensor's bytes go from the caller's memory
    /// through the checksum into the shard file, with no copy; its dtype is written in the
    /// safetensors header.
    ///
    /// # Errors
    /// This rank's own error ([`Error::Io`], [`Error::InvalidArgument`] for a tensor that
    /// does not fit its shape or a name used twice) if it could not write its shard; on the
    /// other ranks an [`Error::Output`] naming the ranks that failed (the vote failed,
    /// `LATEST` is unchanged). If rank 0 cannot commit: its error on rank 0,
    /// [`Error::GangFailed`] naming rank 0 elsewhere. Communication errors.
    pub fn save_refs(
        &self,
        ctx: &impl Participant,
        step: u64,
        meta: &Meta,
        replicated: &[TensorRef<'_>],
        sharded: &[TensorRef<'_>],
    ) -> Result<()> {
        let (rank, attempt) = (ctx.comm().rank(), ctx.run_info().attempt);
        let tmp = self.dir.join(temp_dir_name(step, attempt));
        let shard = Shard { meta, replicated, sharded };
        let written = self.write_shard(&tmp, rank, ctx.comm().size(), step, attempt, &shard);
        if let (Ok(_), Some(FaultKind::SlowCheckpoint(ms))) = (&written, self.faults.due(rank, step, attempt)) {
            eprintln!("gang: GANG_FAULT: rank {rank} takes {ms} ms longer to write its shard of step {step}");
            slow_disk(std::time::Duration::from_millis(ms));
        }
        if written.is_ok() && self.faults.due(rank, step, attempt) == Some(FaultKind::CrashDuringCheckpoint) {
            eprintln!("gang: GANG_FAULT: rank {rank} dies after writing its shard of step {step}, before the vote");
            crate::fault::fire(FaultKind::Kill, rank, step);
        }
        // From here on this rank waits in the vote for the slowest shard's writer, which
        // reports progress as it writes: a straggler is not a stall. Then the ranks wait
        // for rank 0's commit, which is at work (not waiting) and reports progress as it
        // prunes old checkpoints.
        let mut waiting = Some(crate::heartbeat::waiting_for_peers());
        let unanimous = ctx.comm().allreduce_scalar(written.is_ok(), ReduceOp::And)?;
        if !unanimous {
            let mine = written.as_ref().err().map(ToString::to_string).unwrap_or_default();
            let reasons = ctx.comm().allgather_bytes(mine.as_bytes())?;
            let failed: Vec<String> = reasons
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.is_empty())
                .map(|(i, r)| format!("rank {i}: {}", String::from_utf8_lossy(r)))
                .collect();
            let detail = format!(
                "the checkpoint of step {step} was not committed because not every rank could write its shard \
                 ({}); LATEST still names the previous checkpoint; free space or fix permissions in {} and save again",
                failed.join("; "),
                self.dir.display()
            );
            if rank == 0 {
                eprintln!("gang: {detail}");
            }
            return Err(match written {
                Err(e) => e,
                Ok(_) => Error::Output { path: tmp, detail },
            });
        }
        let written = written.expect("the vote was unanimous");
        let all = ctx.comm().allgather_bytes(&serde_json::to_vec(&written).map_err(Error::external)?)?;
        if rank == 0 {
            waiting.take();
        }
        ctx.comm().agree("checkpoint commit", || {
            self.commit(step, attempt, &tmp, all.iter()).inspect_err(|e| {
                eprintln!("gang: rank 0 could not commit the checkpoint: {e}");
            })
        })?;
        if self.faults.due(rank, step, attempt) == Some(FaultKind::CorruptLatestCheckpoint) {
            let path = self.dir.join(step_dir_name(step)).join(tensor_file(rank));
            eprintln!("gang: GANG_FAULT: rank {rank} damages {} and dies", path.display());
            if let Err(e) = damage(&path) {
                eprintln!("gang: GANG_FAULT: could not damage {}: {e}", path.display());
            }
            crate::fault::fire(FaultKind::Kill, rank, step);
        }
        Ok(())
    }

    /// Writes and fsyncs this rank's shard into the temporary directory `tmp`.
    fn write_shard(
        &self,
        tmp: &Path,
        rank: usize,
        world: usize,
        step: u64,
        attempt: u32,
        shard: &Shard<'_, '_>,
    ) -> Result<Written> {
        check_unique(shard.replicated.iter().chain(shard.sharded).cloned())?;
        create_private_dir(&self.dir, false)?;
        create_private_dir(tmp, true)?;
        // Replicated tensors are stored once, by rank 0.
        let replicated = if rank == 0 { shard.replicated } else { &[] };
        let replicated_names: Vec<String> = replicated.iter().map(|t| t.name().to_string()).collect();
        let sharded_names: Vec<String> = shard.sharded.iter().map(|t| t.name().to_string()).collect();
        let tensors: Vec<TensorRef<'_>> = replicated.iter().chain(shard.sharded).cloned().collect();
        let json = |v: &[String]| serde_json::to_string(v).expect("strings serialize");
        let metadata = BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), step.to_string()),
            ("rank".to_string(), rank.to_string()),
            ("world_size".to_string(), world.to_string()),
            ("replicated".to_string(), json(&replicated_names)),
            ("sharded".to_string(), json(&sharded_names)),
        ]);

        let tensor_name = tensor_file(rank);
        let path = tmp.join(&tensor_name);
        let file = create_private_file(&path)?;
        let (bytes, crc32) = write_durably(file, &tensors, &metadata).map_err(|e| Error::io(&path, e))?;
        let tensors_entry = FileEntry { name: tensor_name, bytes, crc32 };

        let meta = ShardMeta {
            format: FORMAT.to_string(),
            step,
            rank,
            world_size: world,
            attempt,
            replicated: replicated_names.clone(),
            sharded: sharded_names.clone(),
            meta: shard.meta.clone(),
        };
        let meta_bytes = serde_json::to_vec_pretty(&meta).map_err(Error::external)?;
        let meta_name = meta_file(rank);
        let path = tmp.join(&meta_name);
        let mut f = create_private_file(&path)?;
        f.write_all(&meta_bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&path, e))?;
        let meta_entry =
            FileEntry { name: meta_name, bytes: meta_bytes.len() as u64, crc32: crc32fast::hash(&meta_bytes) };

        sync_dir(tmp)?;
        Ok(Written {
            step,
            replicated: replicated_names,
            shard: ShardEntry { rank, sharded: sharded_names, files: vec![tensors_entry, meta_entry] },
        })
    }

    /// Rank 0, after a unanimous vote: manifest, final name, `LATEST`, pruning.
    fn commit<'a>(&self, step: u64, attempt: u32, tmp: &Path, all: impl Iterator<Item = &'a [u8]>) -> Result<()> {
        let mut shards = Vec::new();
        let mut replicated = Vec::new();
        for (r, bytes) in all.enumerate() {
            let w: Written = serde_json::from_slice(bytes).map_err(|e| Error::Output {
                path: tmp.into(),
                detail: format!("unreadable shard report of rank {r}: {e}"),
            })?;
            if w.step != step || w.shard.rank != r {
                return Err(Error::InvalidArgument(format!(
                    "rank {r} saved a checkpoint of step {} while rank 0 saved step {step}: every rank must pass the \
                     same step to save()",
                    w.step
                )));
            }
            if r == 0 {
                replicated = w.replicated;
            }
            shards.push(w.shard);
        }
        let manifest = Manifest {
            format: FORMAT.to_string(),
            step,
            world_size: shards.len(),
            attempt,
            created_unix_ns: gang_protocol::now_unix_ns(),
            replicated,
            shards,
        };
        write_atomically(
            &tmp.join(manifest::MANIFEST),
            &serde_json::to_vec_pretty(&manifest).map_err(Error::external)?,
        )?;
        let name = step_dir_name(step);
        let final_dir = self.dir.join(&name);
        let old = self.dir.join(format!("{name}.old-a{attempt}"));
        let replacing = final_dir.exists();
        let mut moves = Vec::with_capacity(2);
        if replacing {
            let _ = std::fs::remove_dir_all(&old);
            moves.push((final_dir.as_path(), old.as_path()));
        }
        moves.push((tmp, final_dir.as_path()));
        crate::durable::rename_all(moves)?;
        write_atomically(&self.dir.join(manifest::LATEST), format!("{name}\n").as_bytes())?;
        if replacing {
            let _ = std::fs::remove_dir_all(&old);
        }
        self.prune(step);
        Ok(())
    }

    /// Keeps `LATEST` (step `latest`) and the newest `retention - 1` complete checkpoints
    /// before it; removes every other directory gang made (older checkpoints, uncommitted
    /// ones, checkpoints newer than `LATEST` left from a timeline a restore abandoned).
    /// Failures are printed, not returned: the checkpoint is committed already.
    fn prune(&self, latest: u64) {
        let list = match entries(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("gang: could not prune checkpoints: {e}");
                return;
            }
        };
        let mut keep = vec![step_dir_name(latest)];
        for (name, kind) in list.iter().rev() {
            if keep.len() >= self.retention {
                break;
            }
            if let Entry::Step(s) = kind {
                if *s < latest && Manifest::read(&self.dir.join(name)).is_ok() {
                    keep.push(name.clone());
                }
            }
        }
        let mut removed = false;
        for (name, _) in list.iter().filter(|(n, _)| !keep.contains(n)) {
            let path = self.dir.join(name);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => removed = true,
                Err(e) => eprintln!("gang: could not remove old checkpoint {}: {e}", path.display()),
            }
            crate::heartbeat::pulse();
        }
        if removed {
            if let Err(e) = sync_dir(&self.dir) {
                eprintln!("gang: {e}");
            }
        }
    }

    /// Restores the newest usable checkpoint. Collective: rank 0 chooses, every rank
    /// verifies the files it reads (size and CRC-32 against the manifest), and a checkpoint
    /// that any rank finds damaged is passed over for the previous one, saying why on rank
    /// 0's stderr and in [`Restored::skipped`].
    ///
    /// Each rank gets the replicated tensors (read by rank 0 and broadcast) and, when the
    /// world size is the one that saved, its own sharded tensors and metadata; on another
    /// world size every rank gets rank 0's metadata.
    ///
    /// `Ok(None)` when the store holds no checkpoint at all.
    ///
    /// # Errors
    /// [`Error::Input`] naming the checkpoint if it holds sharded tensors saved by another
    /// world size, if it holds a tensor that is not `F32` (saved with
    /// [`CheckpointStore::save_refs`]: restore it with [`CheckpointStore::restore_into`]),
    /// or if checkpoints exist but none is usable (every rank gets the same error). I/O and
    /// communication errors.
    pub fn restore(&self, ctx: &impl Participant) -> Result<Option<Restored>> {
        let mut owned = Owned::default();
        let found = self.restore_to(ctx, &mut owned)?;
        Ok(found.map(|f| Restored {
            step: f.step,
            saved_world_size: f.saved_world_size,
            dir: f.dir,
            meta: f.meta,
            replicated: owned.replicated,
            sharded: owned.sharded,
            skipped: f.skipped,
        }))
    }

    /// Restores the newest usable checkpoint into the caller's buffers `targets`, which
    /// must be exactly the tensors the checkpoint holds for this rank: every replicated
    /// tensor, and this rank's sharded ones, each with the saved name, dtype and shape (in
    /// any order). Collective; the checkpoint is chosen, verified and passed over when
    /// damaged as by [`CheckpointStore::restore`]. Each rank reads its shard file straight
    /// into its sharded targets; rank 0 reads the replicated tensors into its targets and,
    /// once their checksum matched, broadcasts them into the other ranks' targets. Sharded
    /// tensors restore only onto the world size that saved them.
    ///
    /// What the targets hold afterwards:
    /// - `Ok(Some(_))`: the data of the checkpoint returned, every byte of every target.
    /// - `Ok(None)` (the store holds no checkpoint), an [`Error::InvalidArgument`] (two
    ///   targets with one name) or an [`Error::Input`] saying a target does not fit:
    ///   untouched.
    /// - An [`Error::Input`] saying no checkpoint is usable: untouched, unless the error
    ///   says the targets were partly overwritten (a checkpoint whose damage showed only
    ///   in its checksum, after its data was read into them): then they hold no
    ///   consistent state.
    /// - Any other error (I/O, communication): unspecified.
    ///
    /// `Ok(None)` when the store holds no checkpoint at all.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if two targets of a rank have the same name.
    /// [`Error::Input`] naming the checkpoint directory, the tensor and the rank, with both
    /// dtypes and shapes, when a target is not in the checkpoint or differs from what was
    /// saved, or a saved tensor has no target (every rank gets the same error); as
    /// [`CheckpointStore::restore`] otherwise.
    ///
    /// # Examples
    /// See the [module documentation](super).
    pub fn restore_into(
        &self,
        ctx: &impl Participant,
        targets: &mut [TensorMut<'_>],
    ) -> Result<Option<RestoredInPlace>> {
        let unique = check_unique(targets.iter().map(TensorMut::as_ref));
        if !ctx.comm().allreduce_scalar(unique.is_ok(), ReduceOp::And)? {
            return Err(unique.err().unwrap_or_else(|| {
                Error::InvalidArgument("another rank passed two restore targets with one name".into())
            }));
        }
        let found = self.restore_to(ctx, &mut InPlace(targets))?;
        Ok(found.map(|f| RestoredInPlace {
            step: f.step,
            saved_world_size: f.saved_world_size,
            dir: f.dir,
            meta: f.meta,
            skipped: f.skipped,
        }))
    }

    /// The restore, into `dest`: choose, open and check every shard, agree that `dest`
    /// fits, read the data into it, broadcast the replicated tensors; fall back to the
    /// previous checkpoint on damage.
    fn restore_to<D: Destination>(&self, ctx: &impl Participant, dest: &mut D) -> Result<Option<Found>> {
        let (rank, world) = (ctx.comm().rank(), ctx.comm().size());
        let mut chooser = if rank == 0 { Some(Chooser::new(self, world)) } else { None };
        // A damaged checkpoint whose data reached the caller's buffers before its damage
        // showed.
        let mut overwritten: Option<String> = None;
        loop {
            let decision: Decision =
                ctx.comm().agree("checkpoint restore", || Ok(chooser.as_mut().expect("rank 0 chooses").next()))?;
            let (name, manifest, skipped) = match decision {
                Decision::Nothing => return Ok(None),
                Decision::Fail { path, mut detail } => {
                    if let Some(o) = &overwritten {
                        detail.push_str(&format!(
                            "; the restore targets were partly overwritten with data of {o} before its damage \
                             showed: they hold no consistent state"
                        ));
                    }
                    return Err(Error::input(path, None, detail));
                }
                Decision::Try { name, manifest, skipped } => (name, manifest, skipped),
            };
            let step_dir = self.dir.join(&name);
            let same_world = manifest.world_size == world;
            let mut reject = |why: Vec<String>| {
                if let Some(c) = chooser.as_mut() {
                    c.reject(&name, &why.join("; "));
                }
            };

            // 1. Every rank that reads a shard opens it: metadata, sizes, header.
            let opened =
                if same_world || rank == 0 { open_shard(&step_dir, &manifest, rank).map(Some) } else { Ok(None) };
            if let Some(why) = any_damage(ctx, opened.as_ref().err())? {
                reject(why);
                continue;
            }
            let opened = opened.expect("no rank found damage");

            // 2. Rank 0's replicated tensors (names, dtypes, shapes) and metadata reach
            // every rank.
            let (replicated, meta0) = if world > 1 {
                let mut head = Vec::new();
                if let (0, Some(o)) = (rank, &opened) {
                    head = serde_json::to_vec(&(&o.replicated, &o.meta)).map_err(Error::external)?;
                }
                ctx.comm().broadcast_bytes(0, &mut head)?;
                serde_json::from_slice::<(Vec<Saved>, Meta)>(&head).map_err(|e| Error::GangFailed {
                    rank: 0,
                    stage: "checkpoint restore".into(),
                    message: format!("unreadable list of replicated tensors from rank 0: {e}"),
                })?
            } else {
                let o = opened.as_ref().expect("a single rank opens its shard");
                (o.replicated.clone(), o.meta.clone())
            };
            let (sharded, meta) = match &opened {
                Some(o) if same_world => (o.sharded.clone(), o.meta.clone()),
                _ => (Vec::new(), meta0),
            };

            // 3. Every rank's destination fits what was saved. A header that says otherwise
            // may be damaged: the files are checked whole before the mismatch is believed.
            let fit = dest.prepare(&replicated, &sharded);
            if !ctx.comm().allreduce_scalar(fit.is_ok(), ReduceOp::And)? {
                let intact = opened.map_or(Ok(()), |o| o.file.verify());
                if let Some(why) = any_damage(ctx, intact.as_ref().err())? {
                    reject(why);
                    continue;
                }
                let mine = match &fit {
                    Err(m) => serde_json::to_vec(m).map_err(Error::external)?,
                    Ok(()) => Vec::new(),
                };
                let all = ctx.comm().allgather_bytes(&mine)?;
                let (r, m) = all
                    .iter()
                    .enumerate()
                    .find(|(_, b)| !b.is_empty())
                    .map(|(r, b)| serde_json::from_slice::<Mismatch>(b).map(|m| (r, m)))
                    .expect("a rank did not fit")
                    .map_err(|e| Error::GangFailed {
                        rank,
                        stage: "checkpoint restore".into(),
                        message: format!("unreadable restore mismatch report: {e}"),
                    })?;
                return Err(Error::Input {
                    path: step_dir,
                    location: Some(format!("tensor {:?}", m.tensor)),
                    rank: Some(r),
                    detail: m.detail,
                });
            }

            // 4. The data, from each shard file straight into place, checksummed.
            let mut targets = dest.targets();
            let read = opened.map_or(Ok(()), |o| read_shard(o, &mut targets));
            if let Some(why) = any_damage(ctx, read.as_ref().err())? {
                if D::IN_PLACE {
                    overwritten.get_or_insert(name.clone());
                }
                reject(why);
                continue;
            }

            // 5. Rank 0's replicated tensors into every rank's targets.
            if world > 1 {
                for s in &replicated {
                    let t = targets.iter_mut().find(|t| t.name() == s.name).expect("prepared for every tensor");
                    ctx.comm().broadcast(0, t.bytes_mut())?;
                }
            }
            return Ok(Some(Found {
                step: manifest.step,
                saved_world_size: manifest.world_size,
                dir: step_dir,
                meta,
                skipped,
            }));
        }
    }
}

/// Whether any rank found damage (`mine` on this rank): `None` when none did, else every
/// rank's reason. Collective.
fn any_damage(ctx: &impl Participant, mine: Option<&Error>) -> Result<Option<Vec<String>>> {
    if ctx.comm().allreduce_scalar(mine.is_none(), ReduceOp::And)? {
        return Ok(None);
    }
    let mine = mine.map(ToString::to_string).unwrap_or_default();
    let reasons = ctx.comm().allgather_bytes(mine.as_bytes())?;
    Ok(Some(reasons.iter().filter(|r| !r.is_empty()).map(|r| String::from_utf8_lossy(r).into_owned()).collect()))
}

/// Checks each tensor and that no name is used twice.
fn check_unique<'a>(tensors: impl Iterator<Item = TensorRef<'a>>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        t.check()?;
        if !seen.insert(t.name()) {
            return Err(Error::InvalidArgument(format!(
                "tensor name {:?} appears twice in the checkpoint state; names must be unique over replicated and \
                 sharded tensors",
                t.name()
            )));
        }
    }
    Ok(())
}

/// Rank 0's walk through the candidates of a restore: `LATEST`, then older complete
/// checkpoints, newest first.
struct Chooser {
    dir: PathBuf,
    world: usize,
    candidates: std::vec::IntoIter<String>,
    skipped: Vec<String>,
    any: bool,
    error: Option<Error>,
}

impl Chooser {
    fn new(store: &CheckpointStore, world: usize) -> Chooser {
        let mut c = Chooser {
            dir: store.dir.clone(),
            world,
            candidates: Vec::new().into_iter(),
            skipped: Vec::new(),
            any: false,
            error: None,
        };
        match c.list() {
            Ok(list) => {
                c.any = !list.is_empty();
                c.candidates = list.into_iter();
            }
            Err(e) => c.error = Some(e),
        }
        c
    }

    /// Candidate directory names in the order to try them.
    fn list(&mut self) -> Result<Vec<String>> {
        let steps: Vec<(String, u64)> = entries(&self.dir)?
            .into_iter()
            .filter_map(|(n, e)| match e {
                Entry::Step(s) => Some((n, s)),
                _ => None,
            })
            .collect();
        let latest = match read_latest(&self.dir) {
            Ok(Some((name, s))) if self.dir.join(&name).is_dir() => Some(s),
            Ok(Some((name, _))) => {
                self.note(format!(
                    "LATEST names {name}, which is missing; trying the checkpoints that exist, newest first"
                ));
                None
            }
            Ok(None) if steps.is_empty() => None,
            Ok(None) => {
                self.note("there is no LATEST pointer; trying the checkpoints that exist, newest first".into());
                None
            }
            Err(why) => {
                self.note(format!("{why}; trying the checkpoints that exist, newest first"));
                None
            }
        };
        let mut out = Vec::new();
        for (name, s) in steps.into_iter().rev() {
            match latest {
                Some(l) if s > l => self.note(format!(
                    "{name} is newer than LATEST (never committed, or abandoned by an earlier restore): ignored"
                )),
                _ => out.push(name),
            }
        }
        Ok(out)
    }

    fn note(&mut self, why: String) {
        eprintln!("gang: restore from {}: {why}", self.dir.display());
        self.skipped.push(why);
    }

    fn reject(&mut self, name: &str, why: &str) {
        self.note(format!("{name} is damaged ({why}); falling back to the previous checkpoint"));
    }

    fn next(&mut self) -> Decision {
        if let Some(e) = self.error.take() {
            return Decision::Fail { path: self.dir.clone(), detail: format!("cannot list the checkpoints: {e}") };
        }
        while let Some(name) = self.candidates.next() {
            match self.precheck(&name) {
                Ok(manifest) => {
                    return Decision::Try { name, manifest: Box::new(manifest), skipped: self.skipped.clone() };
                }
                Err(Rejection::Damaged(why)) => self.reject(&name, &why),
                Err(Rejection::Incompatible(path, detail)) => return Decision::Fail { path, detail },
            }
        }
        if self.any {
            Decision::Fail {
                path: self.dir.clone(),
                detail: format!(
                    "no usable checkpoint: {}; run `gang ckpt verify {}` for details, or move the directory away to \
                     start from scratch",
                    self.skipped.join("; "),
                    self.dir.display()
                ),
            }
        } else {
            Decision::Nothing
        }
    }

    /// What rank 0 can check without reading shards: the manifest, the files' sizes, and
    /// whether the checkpoint fits this world size.
    fn precheck(&self, name: &str) -> std::result::Result<Manifest, Rejection> {
        let dir = self.dir.join(name);
        let m = match Manifest::read(&dir) {
            Ok(m) => m,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Rejection::Damaged("no manifest: never committed".into()))
            }
            Err(e) => return Err(Rejection::Damaged(e.to_string())),
        };
        m.check_sizes(&dir).map_err(Rejection::Damaged)?;
        if m.world_size != self.world && m.has_sharded() {
            let names: Vec<&str> = m.shards.iter().flat_map(|s| &s.sharded).map(String::as_str).take(5).collect();
            return Err(Rejection::Incompatible(
                dir,
                format!(
                    "holds sharded tensors ({}) saved by {} rank(s), but this gang has {}: sharded state restores only \
                     onto the same world size; run with -n {}, or save that state as replicated",
                    names.join(", "),
                    m.world_size,
                    self.world,
                    m.world_size
                ),
            ));
        }
        Ok(m)
    }
}

/// Opens `rank`'s shard in `dir`: reads and checks its metadata file, checks its tensor
/// file's size and parses its header, and checks that it holds the tensors the manifest
/// lists.
pub(crate) fn open_shard(dir: &Path, m: &Manifest, rank: usize) -> Result<Opened> {
    let file = |name: &str| {
        m.file(rank, name).ok_or_else(|| {
            Error::input(dir.join(manifest::MANIFEST), None, format!("lists no file {name} for rank {rank}"))
        })
    };
    let meta_name = meta_file(rank);
    let meta_path = dir.join(&meta_name);
    let meta_bytes = read_checked(&meta_path, file(&meta_name)?)?;
    let meta: ShardMeta = serde_json::from_slice(&meta_bytes)
        .map_err(|e| Error::input(&meta_path, None, format!("not a gang checkpoint metadata file: {e}")))?;
    if meta.step != m.step || meta.rank != rank {
        return Err(Error::input(
            &meta_path,
            None,
            format!("says step {} rank {}, the manifest says step {} rank {rank}", meta.step, meta.rank, m.step),
        ));
    }
    let tensor_name = tensor_file(rank);
    let tensor_path = dir.join(&tensor_name);
    let entry = file(&tensor_name)?;
    let shard_file = ShardFile::open(&tensor_path, entry.bytes, entry.crc32)?;
    let shard = &m.shards[rank];
    let (mut replicated, mut sharded) = (Vec::new(), Vec::new());
    for e in shard_file.entries() {
        let t = Saved { name: e.name.clone(), dtype: e.dtype, shape: e.shape.clone() };
        if rank == 0 && m.replicated.contains(&t.name) {
            replicated.push(t);
        } else if shard.sharded.contains(&t.name) {
            sharded.push(t);
        } else {
            return Err(Error::input(&tensor_path, Some(format!("tensor {:?}", t.name)), "not listed in the manifest"));
        }
    }
    let expected = shard.sharded.len() + if rank == 0 { m.replicated.len() } else { 0 };
    if replicated.len() + sharded.len() != expected {
        return Err(Error::input(
            &tensor_path,
            None,
            format!("holds {} of the {expected} tensors the manifest lists", replicated.len() + sharded.len()),
        ));
    }
    Ok(Opened { file: shard_file, replicated, sharded, meta: meta.meta })
}

/// Verifies every byte of `rank`'s shard in `dir` (`gang ckpt verify`).
pub(crate) fn verify_shard(dir: &Path, m: &Manifest, rank: usize) -> Result<()> {
    open_shard(dir, m, rank)?.file.verify()
}

/// Reads the data of the opened shard into the targets of the same names, checksummed.
fn read_shard(opened: Opened, targets: &mut [TensorMut<'_>]) -> Result<()> {
    let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
    let mut slots: Vec<Option<&mut [u8]>> = targets.iter_mut().map(|t| Some(t.bytes_mut())).collect();
    let mut dests = Vec::with_capacity(opened.file.entries().len());
    for e in opened.file.entries() {
        let slot = names.iter().position(|n| *n == e.name).and_then(|i| slots[i].take());
        dests.push(slot.ok_or_else(|| {
            Error::InvalidArgument(format!("no restore target for tensor {:?} (a bug in gang)", e.name))
        })?);
    }
    opened.file.read_into(dests)
}

/// Bytes written between the starts of write-back of a shard file.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Writes the safetensors file of `tensors` and `metadata` to `file` and fsyncs it;
/// returns its length and CRC-32. The blocks go straight from the encoder to the file (no
/// second buffer). Every 32 MiB the write-back of what was written is started and the piece
/// before the previous one is waited for: the disk works while the rest is encoded and
/// written, the writer goes at the disk's pace rather than filling the page cache for the
/// fsync, and the rank's progress is pulsed at each piece, so that a checkpoint longer than
/// the stall timeout is not taken for a stall while it is written.
fn write_durably(
    mut file: std::fs::File,
    tensors: &[TensorRef<'_>],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<(u64, u32)> {
    let mut crc = crc32fast::Hasher::new();
    // `flushed`: write-back started up to here; `before`: where the last piece started
    // (what lies before it is two pieces back); `waited`: on the disk up to here.
    let (mut written, mut flushed, mut before, mut waited) = (0u64, 0u64, 0u64, 0u64);
    safetensors::encode_blocks(tensors, metadata, |block| {
        file.write_all(block)?;
        crc.update(block);
        written += block.len() as u64;
        if written - flushed >= WRITEBACK_EVERY {
            crate::sys::start_writeback(&file, flushed, written - flushed);
            // Two pieces in flight: wait for what lies before the previous piece.
            if before > waited {
                // (A length of 0 would mean "to the end of the file".)
                crate::sys::wait_writeback(&file, waited, before - waited);
                waited = before;
            }
            crate::heartbeat::pulse();
            (before, flushed) = (flushed, written);
        }
        Ok::<_, std::io::Error>(())
    })?;
    file.sync_all()?;
    Ok((written, crc.finalize()))
}

/// Waits `delay` as a writer on a slow disk does, reporting progress every 200 ms (fault
/// injection: a straggler's shard).
fn slow_disk(delay: std::time::Duration) {
    let until = std::time::Instant::now() + delay;
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
        std::thread::sleep(left.min(std::time::Duration::from_millis(200)));
        crate::heartbeat::pulse();
    }
}

/// Flips bytes in the middle of `path` (fault injection).
fn damage(path: &Path) -> std::io::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let mid = bytes.len() / 2;
    let end = (mid + 16).min(bytes.len());
    for b in &mut bytes[mid..end] {
        *b ^= 0xFF;
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(&bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_written_with_writeback_ahead_is_the_encoded_file_and_its_checksum() {
        // Over 32 MiB, so that write-back starts part-way; tensors over several blocks.
        let big = Tensor::vector("big", (0..9_000_001).map(|i| (i % 977) as f32 * 0.25 - 7.0).collect());
        let small = Tensor::new("small", vec![2, 2], vec![1.0, -0.0, f32::MAX, f32::MIN_POSITIVE]).unwrap();
        let meta = BTreeMap::from([("step".to_string(), "3".to_string())]);
        let dir = std::env::temp_dir().join(format!("gang-write-durably-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rank-0.safetensors");
        let (bytes, crc32) =
            write_durably(create_private_file(&path).unwrap(), &[(&small).into(), (&big).into()], &meta).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let expected = safetensors::to_bytes(&[(&small).into(), (&big).into()], &meta);
        assert_eq!(bytes, expected.len() as u64);
        assert!(on_disk == expected, "the file differs from the encoded bytes");
        assert_eq!(crc32, crc32fast::hash(&expected));
    }
}
