//! Collective communication among the ranks of a gang.
//!
//! [`Comm`] is one type over a trait of transports, [`CommBackend`]:
//!
//! - **Mpi** (cargo feature `mpi`, on by default): the real thing, through rsmpi over the
//!   system's Open MPI or MPICH, on a duplicate of `MPI_COMM_WORLD` (or of a communicator
//!   the program adopts) whose error handler is `MPI_ERRORS_RETURN`, so every MPI failure
//!   comes back as an [`Error::Mpi`] carrying MPI's error class.
//! - **Local** (always): N ranks as threads of one process with the same semantics: the
//!   default for a laptop run and the way unit tests exercise multi-rank logic without
//!   mpirun. It is not a distributed engine.
//!
//! Both backends implement the same small set of *bounded* primitives (counts and
//! displacements must fit what one MPI call can count, an `int`); everything in this module
//! is built on them, so the splitting of large buffers into chunks is one piece of code,
//! exercised on the Local backend with a tiny injected limit and on MPI for real.

mod agree;
mod backend;
pub(crate) mod local;
#[cfg(feature = "mpi")]
pub(crate) mod mpi;

use crate::error::{Error, Result};

pub use backend::{CommBackend, Elements, ElementsMut, FailureScope};
pub use local::{LocalGroup, LocalMember};

/// The largest count one MPI call takes (`int`).
pub const MPI_MAX_COUNT: usize = i32::MAX as usize;

/// A reduction operator for [`Comm::allreduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReduceOp {
    /// Sum (numeric types).
    Sum,
    /// Minimum (numeric types).
    Min,
    /// Maximum (numeric types).
    Max,
    /// Logical and (`bool`).
    And,
    /// Logical or (`bool`).
    Or,
}

/// Element types the collectives carry. Sealed: `f32`, `f64`, `i64`, `u64`, `u8`, `bool`.
pub trait Scalar: Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static + sealed::Sealed {
    /// Name of the type, for error messages.
    const NAME: &'static str;
    /// Whether `op` is defined for this type.
    fn supports(op: ReduceOp) -> bool;
    /// `a op b`, as the Local backend computes it (in rank order, like MPI's canonical
    /// order for commutative operations on one node).
    fn combine(a: Self, b: Self, op: ReduceOp) -> Self;
    /// The slice as a backend receives it.
    fn elements(s: &[Self]) -> Elements<'_>;
    /// The mutable slice as a backend receives it.
    fn elements_mut(s: &mut [Self]) -> ElementsMut<'_>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! numeric_scalar {
    ($t:ty, $d:ident, $add:ident) => {
        impl sealed::Sealed for $t {}
        impl Scalar for $t {
            const NAME: &'static str = stringify!($t);
            fn supports(op: ReduceOp) -> bool {
                matches!(op, ReduceOp::Sum | ReduceOp::Min | ReduceOp::Max)
            }
            fn combine(a: Self, b: Self, op: ReduceOp) -> Self {
                match op {
                    ReduceOp::Sum => numeric_scalar!(@$add a, b),
                    ReduceOp::Min => if b < a { b } else { a },
                    ReduceOp::Max => if b > a { b } else { a },
                    ReduceOp::And | ReduceOp::Or => unreachable!("checked by supports()"),
                }
            }
            fn elements(s: &[Self]) -> Elements<'_> {
                Elements::$d(s)
            }
            fn elements_mut(s: &mut [Self]) -> ElementsMut<'_> {
                ElementsMut::$d(s)
            }
        }
    };
    (@float $a:ident, $b:ident) => { $a + $b };
    // Integers wrap, as MPI_SUM does on every implementation we know.
    (@int $a:ident, $b:ident) => { $a.wrapping_add($b) };
}

numeric_scalar!(f32, F32, float);
numeric_scalar!(f64, F64, float);
numeric_scalar!(i64, I64, int);
numeric_scalar!(u64, U64, int);
numeric_scalar!(u8, U8, int);

impl sealed::Sealed for bool {}
impl Scalar for bool {
    const NAME: &'static str = "bool";
    fn supports(op: ReduceOp) -> bool {
        matches!(op, ReduceOp::And | ReduceOp::Or)
    }
    fn combine(a: Self, b: Self, op: ReduceOp) -> Self {
        match op {
            ReduceOp::And => a && b,
            ReduceOp::Or => a || b,
            _ => unreachable!("checked by supports()"),
        }
    }
    fn elements(s: &[Self]) -> Elements<'_> {
        Elements::Bool(s)
    }
    fn elements_mut(s: &mut [Self]) -> ElementsMut<'_> {
        ElementsMut::Bool(s)
    }
}

/// One byte buffer per rank, stored contiguously: what [`Comm::allgather_bytes`] and
/// [`Comm::all_to_all_bytes`] return, and what `all_to_all_bytes` sends (part `j` goes to
/// rank `j`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RankBuffers {
    data: Vec<u8>,
    offsets: Vec<usize>,
}

impl RankBuffers {
    /// No parts yet.
    pub fn new() -> Self {
        RankBuffers { data: Vec::new(), offsets: vec![0] }
    }

    /// One part per slice.
    pub fn from_parts<B: AsRef<[u8]>>(parts: &[B]) -> Self {
        let mut out = RankBuffers::new();
        out.data.reserve(parts.iter().map(|p| p.as_ref().len()).sum());
        for p in parts {
            out.push(p.as_ref());
        }
        out
    }

    /// Appends the next part.
    pub fn push(&mut self, part: &[u8]) {
        self.data.extend_from_slice(part);
        self.offsets.push(self.data.len());
    }

    fn from_lengths(lens: &[usize]) -> Self {
        let mut offsets = Vec::with_capacity(lens.len() + 1);
        offsets.push(0);
        let mut total = 0;
        for &l in lens {
            total += l;
            offsets.push(total);
        }
        RankBuffers { data: vec![0; total], offsets }
    }

    /// Number of parts.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are no parts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Part `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.data[self.offsets[i]..self.offsets[i + 1]]
    }

    /// The parts in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    /// Total bytes of all parts.
    pub fn total_len(&self) -> usize {
        self.data.len()
    }

    /// The parts as separate vectors.
    pub fn into_vecs(self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    fn part_len(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }
}

/// The communicator of a gang: collectives over all of its ranks.
///
/// Every rank must call the same collectives in the same order. On the Local backend a
/// mismatch is reported as [`Error::CollectiveMismatch`]; a rank that fails makes the
/// collectives of its peers return [`Error::GangFailed`] instead of hanging.
pub struct Comm {
    backend: Box<dyn CommBackend>,
    max_count: usize,
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comm")
            .field("backend", &self.backend_name())
            .field("rank", &self.rank())
            .field("size", &self.size())
            .finish()
    }
}

impl Comm {
    /// A communicator over `backend` (a transport of gang's or of the program's own).
    pub fn from_backend(backend: Box<dyn CommBackend>) -> Comm {
        Comm { backend, max_count: MPI_MAX_COUNT }
    }

    /// Limits every underlying call to `max` elements (bytes for byte buffers), so large
    /// buffers are split into several calls. The default is what MPI can count (`i32::MAX`);
    /// tests lower it to exercise the splitting on small buffers.
    ///
    /// # Panics
    /// If `max` is 0 or exceeds [`MPI_MAX_COUNT`].
    pub fn set_max_count(&mut self, max: usize) {
        assert!(max > 0 && max <= MPI_MAX_COUNT, "max count must be in 1..=i32::MAX");
        self.max_count = max;
    }

    /// The largest count of one underlying call (see [`Comm::set_max_count`]).
    pub fn max_count(&self) -> usize {
        self.max_count
    }

    /// This rank's index in the gang, `0..size()`.
    pub fn rank(&self) -> usize {
        self.backend.rank()
    }

    /// Number of ranks in the gang.
    pub fn size(&self) -> usize {
        self.backend.size()
    }

    /// The backend's short name: `"mpi"`, `"local"`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend's description: the MPI library's version, `local (N threads)`.
    pub fn backend_description(&self) -> String {
        self.backend.description()
    }

    /// What a rank's failure does to its process (one rank per process under MPI, several
    /// on the Local backend).
    pub fn failure_scope(&self) -> FailureScope {
        self.backend.failure_scope()
    }

    /// The transport underneath.
    pub fn backend(&self) -> &dyn CommBackend {
        self.backend.as_ref()
    }

    /// Splits the ranks into disjoint communicators, one per `color`, ordered within each
    /// by `key` and then by rank (`MPI_Comm_split`); a rank passing `None` takes part but
    /// gets `None`. The new communicators keep this one's [`Comm::max_count`]. Collective.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `color` exceeds `i32::MAX`; communication errors.
    pub fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Comm>> {
        if let Some(c) = color {
            if c > i32::MAX as u32 {
                return Err(Error::InvalidArgument(format!("split: color {c} exceeds i32::MAX")));
            }
        }
        Ok(self.backend.split(color, key)?.map(|b| Comm { backend: b, max_count: self.max_count }))
    }

    /// Waits until every rank has called `barrier`.
    ///
    /// # Errors
    /// [`Error::Mpi`] from MPI; [`Error::GangFailed`] on the Local backend if a peer failed.
    pub fn barrier(&self) -> Result<()> {
        self.backend.barrier()
    }

    /// Replaces `buf` on every rank with `root`'s `buf` (all ranks pass slices of the same
    /// length).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `root` is not a rank; communication errors.
    pub fn broadcast<T: Scalar>(&self, root: usize, buf: &mut [T]) -> Result<()> {
        self.check_root(root)?;
        for chunk in buf.chunks_mut(self.max_count) {
            self.backend.broadcast(root, T::elements_mut(chunk))?;
        }
        Ok(())
    }

    /// Replaces `buf` on every rank with `root`'s `buf`; the other ranks' buffers may have
    /// any length and are resized.
    ///
    /// # Errors
    /// As [`Comm::broadcast`].
    pub fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        let mut len = [buf.len() as u64];
        self.broadcast(root, &mut len)?;
        let len = to_usize(len[0])?;
        if self.rank() != root {
            buf.clear();
            buf.resize(len, 0);
        }
        self.broadcast(root, buf.as_mut_slice())
    }

    /// Combines `buf` elementwise over all ranks with `op`; every rank gets the result in
    /// place.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `op` is not defined for `T` (sum/min/max are for
    /// numbers, and/or for `bool`); communication errors.
    pub fn allreduce<T: Scalar>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        check_op::<T>(op)?;
        for chunk in buf.chunks_mut(self.max_count) {
            self.backend.allreduce(None, T::elements_mut(chunk), op)?;
        }
        Ok(())
    }

    /// Combines `send` over all ranks with `op` into `recv`, leaving `send` untouched.
    ///
    /// # Errors
    /// As [`Comm::allreduce`], and [`Error::InvalidArgument`] if the lengths differ.
    pub fn allreduce_into<T: Scalar>(&self, send: &[T], recv: &mut [T], op: ReduceOp) -> Result<()> {
        check_op::<T>(op)?;
        if send.len() != recv.len() {
            return Err(Error::InvalidArgument(format!(
                "allreduce_into: send has {} elements but recv has {}",
                send.len(),
                recv.len()
            )));
        }
        for (s, r) in send.chunks(self.max_count).zip(recv.chunks_mut(self.max_count)) {
            self.backend.allreduce(Some(T::elements(s)), T::elements_mut(r), op)?;
        }
        Ok(())
    }

    /// `value` combined over all ranks with `op`.
    ///
    /// # Errors
    /// As [`Comm::allreduce`].
    pub fn allreduce_scalar<T: Scalar>(&self, value: T, op: ReduceOp) -> Result<T> {
        let mut v = [value];
        self.allreduce(&mut v, op)?;
        Ok(v[0])
    }

    /// Every rank's `send`, in rank order, on every rank. Buffers may differ in length.
    ///
    /// # Errors
    /// Communication errors.
    pub fn allgather_bytes(&self, send: &[u8]) -> Result<RankBuffers> {
        let n = self.size();
        let lens = self.allgather_lengths(send.len())?;
        let mut out = RankBuffers::from_lengths(&lens);
        if out.total_len() <= self.max_count {
            // One call, straight into the result.
            let counts = lens;
            let displs = out.offsets[..n].to_vec();
            self.backend.allgatherv(send, &mut out.data, &counts, &displs)?;
            return Ok(out);
        }
        // Rounds: in round r every rank sends bytes [r*piece, (r+1)*piece) of its buffer,
        // so no call moves more than n*piece <= max_count bytes.
        let piece = (self.max_count / n).max(1);
        let max_len = lens.iter().copied().max().unwrap_or(0);
        let mut tmp = Vec::new();
        for start in (0..max_len).step_by(piece) {
            let counts: Vec<usize> = lens.iter().map(|&l| l.saturating_sub(start).min(piece)).collect();
            let displs = prefix_sums(&counts);
            tmp.clear();
            tmp.resize(counts.iter().sum(), 0);
            let mine = &send[start.min(send.len())..(start + piece).min(send.len())];
            self.backend.allgatherv(mine, &mut tmp, &counts, &displs)?;
            for j in (0..n).filter(|&j| counts[j] > 0) {
                let dst = out.offsets[j] + start;
                out.data[dst..dst + counts[j]].copy_from_slice(&tmp[displs[j]..displs[j] + counts[j]]);
            }
        }
        Ok(out)
    }

    /// Personalised exchange: part `j` of `send` goes to rank `j`; part `i` of the result
    /// came from rank `i`. Parts may have any length, including zero.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `send` does not have one part per rank; communication
    /// errors.
    pub fn all_to_all_bytes(&self, send: &RankBuffers) -> Result<RankBuffers> {
        let n = self.size();
        if send.len() != n {
            return Err(Error::InvalidArgument(format!(
                "all_to_all_bytes: {} parts for a gang of {n} ranks (one part per rank is needed)",
                send.len()
            )));
        }
        // Counts travel by an all-to-all of counts (8 bytes per peer, O(ranks) per rank).
        // Each rank also learns, through one small allreduce, whether any rank's send or
        // receive exceeds one call and the longest part anywhere, so that every rank makes
        // the same choice between one call and rounds (a split decision would hang).
        let send_lens: Vec<usize> = (0..n).map(|j| send.part_len(j)).collect();
        let recv_lens = self.all_to_all_counts(&send_lens)?;
        let sent: usize = send_lens.iter().sum();
        let received: usize = recv_lens.iter().sum();
        let longest_here = send_lens.iter().chain(&recv_lens).copied().max().unwrap_or(0);
        let mut agreed = [sent.max(received) as u64, longest_here as u64];
        self.allreduce(&mut agreed, ReduceOp::Max)?;
        let mut out = RankBuffers::from_lengths(&recv_lens);
        if to_usize(agreed[0])? <= self.max_count {
            let sd = send.offsets[..n].to_vec();
            let rd = out.offsets[..n].to_vec();
            self.backend.alltoallv(&send.data, &send_lens, &sd, &mut out.data, &recv_lens, &rd)?;
            return Ok(out);
        }
        // Rounds, as in allgather_bytes; the longest part anywhere sets their number.
        let piece = (self.max_count / n).max(1);
        let longest = to_usize(agreed[1])?;
        let (mut stmp, mut rtmp) = (Vec::new(), Vec::new());
        for start in (0..longest).step_by(piece) {
            let sc: Vec<usize> = send_lens.iter().map(|&l| l.saturating_sub(start).min(piece)).collect();
            let rc: Vec<usize> = recv_lens.iter().map(|&l| l.saturating_sub(start).min(piece)).collect();
            let (sd, rd) = (prefix_sums(&sc), prefix_sums(&rc));
            stmp.clear();
            for j in (0..n).filter(|&j| sc[j] > 0) {
                let from = send.offsets[j] + start;
                stmp.extend_from_slice(&send.data[from..from + sc[j]]);
            }
            rtmp.clear();
            rtmp.resize(rc.iter().sum(), 0);
            self.backend.alltoallv(&stmp, &sc, &sd, &mut rtmp, &rc, &rd)?;
            for i in (0..n).filter(|&i| rc[i] > 0) {
                let dst = out.offsets[i] + start;
                out.data[dst..dst + rc[i]].copy_from_slice(&rtmp[rd[i]..rd[i] + rc[i]]);
            }
        }
        Ok(out)
    }

    /// `counts[j]` goes to rank `j`; element `i` of the result came from rank `i`. One
    /// all-to-all of 8 bytes per peer, in rounds of fewer bytes per peer when the count
    /// limit is lower (as in tests).
    fn all_to_all_counts(&self, counts: &[usize]) -> Result<Vec<usize>> {
        let n = self.size();
        let bytes: Vec<[u8; 8]> = counts.iter().map(|&c| (c as u64).to_le_bytes()).collect();
        let mut recv = vec![[0u8; 8]; n];
        let piece = (self.max_count / n).clamp(1, 8);
        let (mut stmp, mut rtmp) = (Vec::with_capacity(piece * n), vec![0u8; piece * n]);
        for start in (0..8).step_by(piece) {
            let width = piece.min(8 - start);
            stmp.clear();
            for b in &bytes {
                stmp.extend_from_slice(&b[start..start + width]);
            }
            let c = vec![width; n];
            let d: Vec<usize> = (0..n).map(|i| i * width).collect();
            self.backend.alltoallv(&stmp, &c, &d, &mut rtmp[..width * n], &c, &d)?;
            for (i, r) in recv.iter_mut().enumerate() {
                r[start..start + width].copy_from_slice(&rtmp[i * width..(i + 1) * width]);
            }
        }
        recv.into_iter().map(|b| to_usize(u64::from_le_bytes(b))).collect()
    }

    /// Every rank's `len`. A sum over a vector in which each rank fills its own slot, so
    /// that the exchange itself is split by the same limit as everything else.
    fn allgather_lengths(&self, len: usize) -> Result<Vec<usize>> {
        let mut v = vec![0u64; self.size()];
        v[self.rank()] = len as u64;
        self.allreduce(&mut v, ReduceOp::Sum)?;
        v.into_iter().map(to_usize).collect()
    }

    fn check_root(&self, root: usize) -> Result<()> {
        if root >= self.size() {
            return Err(Error::InvalidArgument(format!("root {root} is not a rank of a gang of {}", self.size())));
        }
        Ok(())
    }

    /// Stops the whole gang at once from this rank: `MPI_Abort` on MPI (every process of
    /// the job is killed), on the Local backend every peer's next or current collective
    /// fails with [`Error::GangFailed`].
    pub(crate) fn abort_gang(&self, stage: &str, message: &str, code: i32) {
        self.backend.abort(stage, message, code)
    }
}

/// Whether a transport of [`FailureScope::Process`] is alive in this process (MPI
/// initialized and not finalized), so that stopping the gang can still reach the peers.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn process_scope_active() -> bool {
    #[cfg(feature = "mpi")]
    {
        mpi::is_active()
    }
    #[cfg(not(feature = "mpi"))]
    {
        false
    }
}

/// Ends this process and, through MPI when it is alive, every process of the job.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn abort_process(code: i32) -> ! {
    #[cfg(feature = "mpi")]
    mpi::abort_world(code);
    #[cfg(not(feature = "mpi"))]
    {
        let _ = code;
        std::process::abort()
    }
}

fn check_op<T: Scalar>(op: ReduceOp) -> Result<()> {
    if T::supports(op) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{op:?} is not defined for {}: use Sum/Min/Max for numbers and And/Or for bool",
            T::NAME
        )))
    }
}

fn prefix_sums(counts: &[usize]) -> Vec<usize> {
    let mut acc = 0;
    counts
        .iter()
        .map(|&c| {
            let d = acc;
            acc += c;
            d
        })
        .collect()
}

fn to_usize(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::InvalidArgument(format!("length {v} does not fit this platform")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_buffers_keep_parts_apart() {
        let b = RankBuffers::from_parts(&[&b"ab"[..], b"", b"cde"]);
        assert_eq!(b.len(), 3);
        assert_eq!(b.get(0), b"ab");
        assert_eq!(b.get(1), b"");
        assert_eq!(b.get(2), b"cde");
        assert_eq!(b.total_len(), 5);
        assert_eq!(b.clone().into_vecs(), vec![b"ab".to_vec(), vec![], b"cde".to_vec()]);
        assert!(RankBuffers::new().is_empty());
    }

    #[test]
    fn ops_are_checked_per_type() {
        assert!(check_op::<f64>(ReduceOp::Sum).is_ok());
        assert!(check_op::<bool>(ReduceOp::Or).is_ok());
        let e = check_op::<bool>(ReduceOp::Sum).unwrap_err().to_string();
        assert!(e.contains("Sum is not defined for bool"), "{e}");
        assert!(check_op::<u64>(ReduceOp::And).is_err());
    }

    #[test]
    fn combine_matches_the_operator() {
        assert_eq!(f64::combine(1.5, 2.0, ReduceOp::Sum), 3.5);
        assert_eq!(i64::combine(-3, 2, ReduceOp::Min), -3);
        assert_eq!(u64::combine(3, 9, ReduceOp::Max), 9);
        assert_eq!(u64::combine(u64::MAX, 1, ReduceOp::Sum), 0);
        assert!(!bool::combine(true, false, ReduceOp::And));
        assert!(bool::combine(true, false, ReduceOp::Or));
        assert_eq!(prefix_sums(&[2, 0, 3]), vec![0, 2, 2]);
    }
}
