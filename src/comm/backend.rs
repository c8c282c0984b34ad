//! The trait every transport of a [`Comm`](super::Comm) implements: a small set of
//! *bounded* primitives (no count beyond what one MPI call can count, an `int`).
//!
//! Everything else a `Comm` offers (chunking of large buffers, variable-size exchanges,
//! scalar helpers) is written once in [`super`] over this trait, so a new backend (NCCL, a
//! C API's adopted communicator) is one module that implements it.

use super::{ReduceOp, Scalar};
use crate::error::Result;

/// One of the [`Scalar`] element types, borrowed: what a backend receives, so that the trait
/// stays object-safe while `Comm`'s methods are generic.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Elements<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    U64(&'a [u64]),
    U8(&'a [u8]),
    Bool(&'a [bool]),
}

/// One of the [`Scalar`] element types, mutably borrowed.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum ElementsMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    I64(&'a mut [i64]),
    U64(&'a mut [u64]),
    U8(&'a mut [u8]),
    Bool(&'a mut [bool]),
}

/// Runs `$body` with `$b` bound to the typed slice inside an [`Elements`] or
/// [`ElementsMut`] (for gang's backends that compute on the elements themselves; a backend
/// outside this crate matches the variants it supports and refuses the others, since the
/// enums may grow).
macro_rules! with_elements {
    ($e:expr, $enum:ident, $b:ident => $body:expr) => {
        match $e {
            $crate::comm::$enum::F32($b) => $body,
            $crate::comm::$enum::F64($b) => $body,
            $crate::comm::$enum::I64($b) => $body,
            $crate::comm::$enum::U64($b) => $body,
            $crate::comm::$enum::U8($b) => $body,
            $crate::comm::$enum::Bool($b) => $body,
        }
    };
}

pub(crate) use with_elements;

impl Elements<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        with_elements!(self, Elements, b => b.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's name.
    pub fn type_name(&self) -> &'static str {
        with_elements!(self, Elements, b => elem_name(b))
    }
}

impl ElementsMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        with_elements!(self, ElementsMut, b => b.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's name.
    pub fn type_name(&self) -> &'static str {
        with_elements!(self, ElementsMut, b => elem_name(b))
    }
}

fn elem_name<T: Scalar>(_: &[T]) -> &'static str {
    T::NAME
}

/// What a failure of one rank does to the process it runs in, which decides how gang stops
/// the gang and where it records why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureScope {
    /// One rank per process (MPI): stopping the gang ends this process (and, through the
    /// job's launcher, every other), so a panic anywhere in the process is the rank's
    /// failure and is recorded by the process-wide panic hook.
    Process,
    /// Several ranks share this process (Local): a failing rank wakes its peers, whose
    /// collectives return [`Error::GangFailed`](crate::Error::GangFailed), and the error
    /// propagates as a value.
    Thread,
}

/// The bounded primitives of a transport. Implemented by the Local and Mpi backends;
/// [`Comm`](super::Comm) wraps one and adds everything else.
///
/// Every rank calls the same primitives in the same order with matching arguments (the
/// same root, counts that agree with the peers' counts). Counts never exceed
/// [`MPI_MAX_COUNT`](super::MPI_MAX_COUNT), and `Comm` guarantees it.
pub trait CommBackend: std::fmt::Debug {
    /// This rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Short name: `"local"`, `"mpi"`.
    fn name(&self) -> &'static str;
    /// A description for reports: the MPI library version, `local (N threads)`.
    fn description(&self) -> String;
    /// What a rank's failure does to its process.
    fn failure_scope(&self) -> FailureScope;

    /// Waits until every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Replaces `buf` with `root`'s `buf` (same length on every rank).
    fn broadcast(&self, root: usize, buf: ElementsMut<'_>) -> Result<()>;
    /// Combines `send` (or `recv` itself when `None`) elementwise over all ranks into `recv`.
    fn allreduce(&self, send: Option<Elements<'_>>, recv: ElementsMut<'_>, op: ReduceOp) -> Result<()>;
    /// Gathers every rank's `send` into `recv`: rank `i`'s `counts[i]` bytes at `displs[i]`.
    fn allgatherv(&self, send: &[u8], recv: &mut [u8], counts: &[usize], displs: &[usize]) -> Result<()>;
    /// Personalised exchange of bytes: `scounts[j]` bytes at `sdispls[j]` go to rank `j`;
    /// rank `i`'s arrive at `rdispls[i]`.
    #[allow(clippy::too_many_arguments)]
    fn alltoallv(
        &self,
        send: &[u8],
        scounts: &[usize],
        sdispls: &[usize],
        recv: &mut [u8],
        rcounts: &[usize],
        rdispls: &[usize],
    ) -> Result<()>;
    /// Splits the ranks by `color` into new communicators, ordered by `key` then by rank;
    /// ranks passing `None` get none. Collective.
    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Box<dyn CommBackend>>>;
    /// The largest count of one call and the number of calls so far, where the backend
    /// counts them (Local, for tests of the chunking).
    #[doc(hidden)]
    fn call_counters(&self) -> Option<(usize, usize)> {
        None
    }
    /// Stops the whole gang from this rank. Under [`FailureScope::Process`] this does not
    /// return.
    fn abort(&self, stage: &str, message: &str, code: i32);
}
