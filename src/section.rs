//! Barrier sections: code that every rank of the gang runs together, as in Spark's barrier
//! mode.
//!
//! [`Context::barrier_section`] checks on entry that every rank enters the same section
//! (the same name, the same number of sections entered before); a mismatch is an
//! [`Error::SectionMismatch`] on every rank, never a hang. Inside, the closure gets a
//! [`Gang`]: the collectives, [`Gang::task_infos`] (rank, host and device of every member,
//! gathered once at entry, like Spark's `BarrierTaskContext.getTaskInfos`),
//! [`Gang::all_gather`], the current step and checkpoints.
//!
//! An error or a panic on any rank inside a section stops the whole gang: that rank records
//! `section <name> step <s>: <error>` (with its rank) in the run directory and aborts the
//! gang (`MPI_Abort` under MPI; on the Local backend its peers' collectives fail with
//! [`Error::GangFailed`]).
//!
//! # Examples
//! ```
//! use gang::{execute, Config, ReduceOp};
//!
//! let out = execute(Config::local(3), |ctx| {
//!     ctx.barrier_section("train", |gang| {
//!         assert_eq!(gang.task_infos().len(), 3);
//!         for step in 0..4 {
//!             gang.set_step(step);
//!             let mut g = [1.0f64];
//!             gang.comm().allreduce(&mut g, ReduceOp::Sum)?;
//!         }
//!         let names = gang.all_gather(format!("r{}", gang.rank()).as_bytes())?;
//!         Ok(names.len())
//!     })
//! })
//! .unwrap();
//! assert_eq!(out, vec![3, 3, 3]);
//! ```

use crate::checkpoint::{CheckpointStore, Restored, State};
use crate::comm::Comm;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::failure::{self, stage_label as stage, FailureClass, EXIT_RANK_PANIC};
use gang_protocol::device::Device;
use gang_protocol::FailureKind;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where a member of the gang runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Its rank.
    pub rank: usize,
    /// Its host name.
    pub host: String,
    /// Its device.
    pub device: Device,
    /// Its rank among the ranks of its node.
    pub local_rank: usize,
    /// Index of its node.
    pub node_index: usize,
}

/// What every rank sends on entering a section.
#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    index: u64,
    info: TaskInfo,
}

/// The gang as seen from inside a barrier section.
#[derive(Debug)]
pub struct Gang<'a> {
    ctx: &'a Context,
    name: String,
    index: u64,
    infos: Vec<TaskInfo>,
    step: Arc<AtomicU64>,
    store: Option<&'a CheckpointStore>,
}

impl Gang<'_> {
    /// The communicator of the gang.
    pub fn comm(&self) -> &Comm {
        self.ctx.comm()
    }

    /// The context of this rank.
    pub fn context(&self) -> &Context {
        self.ctx
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.ctx.rank()
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.ctx.world()
    }

    /// The name of the section.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many sections this rank had entered before this one.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Rank, host and device of every member, in rank order (gathered at entry).
    pub fn task_infos(&self) -> &[TaskInfo] {
        &self.infos
    }

    /// Every rank's `bytes`, in rank order, on every rank. Collective.
    ///
    /// # Errors
    /// Communication errors.
    pub fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(self.ctx.comm().allgather_bytes(bytes)?.into_vecs())
    }

    /// The step this rank reported last (0 at entry); it is named in the failure record if
    /// the section fails.
    pub fn step(&self) -> u64 {
        self.step.load(Ordering::Relaxed)
    }

    /// Reports the current step.
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// Saves `state` as the checkpoint of `step` in the section's store (see
    /// [`CheckpointStore::save`]) and sets the current step. Collective.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the section was entered without a store (use
    /// [`Context::barrier_section_with_checkpoints`]); the errors of
    /// [`CheckpointStore::save`].
    pub fn checkpoint(&self, step: u64, state: &State) -> Result<()> {
        self.set_step(step);
        self.store()?.save(self.ctx, step, state)
    }

    /// Restores the newest usable checkpoint of the section's store (see
    /// [`CheckpointStore::restore`]) and sets the current step to its step. Collective.
    ///
    /// # Errors
    /// As [`Gang::checkpoint`] and [`CheckpointStore::restore`].
    pub fn restore(&self) -> Result<Option<Restored>> {
        let r = self.store()?.restore(self.ctx)?;
        if let Some(r) = &r {
            self.set_step(r.step);
        }
        Ok(r)
    }

    fn store(&self) -> Result<&CheckpointStore> {
        self.store.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "barrier section {:?} has no checkpoint store: enter it with \
                 Context::barrier_section_with_checkpoints(name, &store, ..)",
                self.name
            ))
        })
    }
}

impl Context {
    /// Runs `f` as the barrier section `name` on every rank; see the
    /// [module documentation](crate::section).
    ///
    /// # Errors
    /// [`Error::SectionMismatch`] (on every rank) if the ranks entered different sections;
    /// `f`'s error, after the gang has been stopped (under MPI this function does not
    /// return then); [`Error::GangFailed`] if another rank failed, or if `f` panicked on
    /// the Local backend; communication errors of the entry check.
    pub fn barrier_section<T, F>(&self, name: &str, f: F) -> Result<T>
    where
        F: FnOnce(&Gang<'_>) -> Result<T>,
    {
        self.run_section(name, None, f)
    }

    /// [`Context::barrier_section`] with a checkpoint store for [`Gang::checkpoint`] and
    /// [`Gang::restore`].
    ///
    /// # Errors
    /// As [`Context::barrier_section`].
    pub fn barrier_section_with_checkpoints<T, F>(&self, name: &str, store: &CheckpointStore, f: F) -> Result<T>
    where
        F: FnOnce(&Gang<'_>) -> Result<T>,
    {
        self.run_section(name, Some(store), f)
    }

    /// Restores the newest usable checkpoint of `store` (see
    /// [`CheckpointStore::restore`]). Collective.
    ///
    /// # Errors
    /// As [`CheckpointStore::restore`].
    pub fn restore(&self, store: &CheckpointStore) -> Result<Option<Restored>> {
        store.restore(self)
    }

    fn run_section<'a, T, F>(&'a self, name: &str, store: Option<&'a CheckpointStore>, f: F) -> Result<T>
    where
        F: FnOnce(&Gang<'a>) -> Result<T>,
    {
        let index = self.next_section_index();
        let me = Entry {
            name: name.to_string(),
            index,
            info: TaskInfo {
                rank: self.rank(),
                host: self.host().to_string(),
                device: self.device().clone(),
                local_rank: self.local_rank(),
                node_index: self.node_index(),
            },
        };
        // The entry collective: every rank reaches it, whatever section it thinks it is in.
        let all = self.comm().allgather_bytes(&serde_json::to_vec(&me).map_err(Error::external)?)?;
        // A peer that called another collective here sends something that is not an entry.
        let entries: Vec<Option<Entry>> = all.iter().map(|b| serde_json::from_slice(b).ok()).collect();
        if entries.iter().any(|e| e.as_ref().is_none_or(|e| e.name != name || e.index != index)) {
            return Err(Error::SectionMismatch {
                rank: self.rank(),
                entered: entries
                    .into_iter()
                    .map(|e| {
                        e.map_or_else(
                            || ("<another collective, not a barrier section>".to_string(), 0),
                            |e| (e.name, e.index),
                        )
                    })
                    .collect(),
            });
        }
        let entries: Vec<Entry> = entries.into_iter().flatten().collect();
        let gang = Gang {
            ctx: self,
            name: name.to_string(),
            index,
            infos: entries.into_iter().map(|e| e.info).collect(),
            step: Arc::new(AtomicU64::new(0)),
            store,
        };
        let _mark = Mark::enter(self, &gang);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&gang))) {
            Ok(Ok(v)) => Ok(v),
            // A peer's failure reaching this rank is not this rank's failure.
            Ok(Err(e @ Error::GangFailed { .. })) => Err(e),
            Ok(Err(e)) => {
                if !REPORTED.replace(true) {
                    self.fail_gang(&stage(name, gang.step()), &e);
                }
                Err(e)
            }
            // Under MPI the panic hook has already recorded the failure and aborted.
            Err(p) => {
                let stage = stage(name, gang.step());
                let message = format!("panicked: {}", failure::panic_message(p.as_ref()));
                if !REPORTED.replace(true) {
                    failure::record(
                        self.rank(),
                        self.run_info(),
                        FailureKind::Panic,
                        FailureClass::Transient,
                        &format!("{stage}: {message}"),
                    );
                    self.comm().abort_gang(&stage, &message, EXIT_RANK_PANIC);
                }
                Err(Error::GangFailed { rank: self.rank(), stage, message })
            }
        }
    }
}

thread_local! {
    /// Sections this thread is inside of, and whether a failure inside them has been
    /// reported already (so that nested sections report the innermost one only).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static REPORTED: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside a section until dropped (and, under MPI, the process, so
/// that a panic is recorded as `section <name> step <s>: panicked: ...`).
struct Mark {
    _stage: failure::StageMark,
}

impl Mark {
    fn enter(ctx: &Context, gang: &Gang<'_>) -> Mark {
        if DEPTH.get() == 0 {
            REPORTED.set(false);
        }
        DEPTH.set(DEPTH.get() + 1);
        Mark { _stage: failure::enter_stage(ctx.comm(), &gang.name, gang.step.clone()) }
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        DEPTH.set(DEPTH.get().saturating_sub(1));
    }
}
