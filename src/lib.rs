//! gang: Spark-style data and training jobs as MPI gangs on HPC clusters.
//!
//! This crate is the rank-side runtime. A program written with [`execute`] runs unchanged
//! as N threads of one process (`--local N`, the Local backend) or as N MPI ranks started
//! by `gang run -n N`, mpirun or srun:
//!
//! ```
//! use gang::{execute, Config, ReduceOp};
//!
//! // `Config::from_args(std::env::args())` in a real program; three threads here.
//! let results = execute(Config::local(3), |ctx| {
//!     ctx.comm().barrier()?;
//!     let mut v = [ctx.rank() as f64, 1.0];
//!     ctx.comm().allreduce(&mut v, ReduceOp::Sum)?;
//!     Ok(v)
//! })
//! .unwrap();
//! assert_eq!(results, vec![[3.0, 3.0]; 3]);
//! ```
//!
//! A rank never leaves its peers hanging: a panic or an error in one rank stops the whole
//! gang (under MPI through `MPI_Abort`, within about a second), and the failure is recorded
//! with its rank in the run directory for the launcher to report.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod comm;
mod context;
pub mod data;
mod digest;
mod durable;
pub mod env;
mod error;
pub mod failure;
mod fault;
pub mod gpu_bind;
mod heartbeat;
mod jobs;
pub mod section;
mod selftest;
pub mod stage;
mod sys;
pub mod train;

/// Not part of the API: what gang's own binary of the built-in jobs (`gang-rank`), its
/// tests and its benchmarks (`bench/`) share with the library (the jobs' logic, fault
/// injection, the self-test, the hashes and names of gang's files, the write-back call the
/// benchmarks measure their limits with). It changes without notice.
#[doc(hidden)]
pub mod internal {
    /// Fault injection (`GANG_FAULT`).
    pub mod fault {
        pub use crate::fault::*;
    }
    /// The built-in jobs' logic.
    pub mod jobs {
        pub use crate::jobs::*;
    }
    /// The self-check of every collective (`gang selftest`).
    pub mod selftest {
        pub use crate::selftest::*;
    }
    pub use crate::sys::start_writeback;

    /// Runs `f`, returning a panic's message instead of failing the rank (the C API's entry
    /// points: a panic never crosses into C).
    pub fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
        crate::failure::catch_panic(f)
    }

    /// The fault plan of `GANG_FAULT` (the C API checks it at each simulation step).
    pub fn fault_plan() -> crate::Result<crate::fault::FaultPlan> {
        crate::fault::FaultPlan::from_env()
    }

    /// `_gang_`: the prefix of what a job adds beside its committed output.
    pub const SIDECAR_PREFIX: &str = crate::stage::committer::SIDECAR_PREFIX;

    /// 64-bit FNV-1a, the hash of gang's fingerprints on disk.
    pub fn fnv1a64(bytes: &[u8]) -> u64 {
        crate::stage::manifest::fnv1a64(bytes)
    }

    /// The planner's grouping of consecutive pieces (row counts) into ranges of about
    /// `target` rows (`bench/benches/plan.rs`).
    pub fn group_pieces(rows: &[u64], target: u64) -> Vec<std::ops::Range<usize>> {
        crate::data::plan::group_pieces(rows, target)
    }

    /// The checkpoint shard encoder: the safetensors file of `tensors` as blocks in file
    /// order (`bench/benches/checkpoint.rs`).
    pub fn encode_safetensors<E>(
        tensors: &[&crate::checkpoint::Tensor],
        metadata: &std::collections::BTreeMap<String, String>,
        sink: impl FnMut(&[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let views: Vec<_> = tensors.iter().map(|t| crate::checkpoint::TensorRef::from(*t)).collect();
        crate::checkpoint::safetensors::encode_blocks(&views, metadata, sink)
    }
}

/// The rsmpi crate gang's Mpi backend is built on, for programs that initialize MPI
/// themselves and hand gang a communicator ([`init_from_comm`]).
#[cfg(feature = "mpi")]
pub use ::mpi;
pub use checkpoint::CheckpointStore;
pub use comm::{Comm, LocalGroup, LocalMember, RankBuffers, ReduceOp, Scalar};
pub use context::{
    execute, init, BackendChoice, Config, Context, MpiThreading, OnComm, Participant, EXIT_RANK_ERROR, EXIT_RANK_PANIC,
};
#[cfg(feature = "mpi")]
pub use context::{init_from_comm, init_from_raw_comm};
pub use env::{LauncherKind, RankEnv};
pub use error::{Error, Result};
pub use failure::{FailureClass, RunInfo};
pub use gang_protocol::device::Device;
pub use section::{Gang, TaskInfo};
pub use sys::keep_freed_memory;

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
