//! The Local backend: N ranks as threads of one process.
//!
//! Every collective is a rendezvous: each rank deposits its contribution, the last one to
//! arrive publishes all contributions, every rank reads what it needs, and the last one to
//! read opens the next round. A rank that fails marks the group aborted and wakes everyone,
//! so peers get [`Error::GangFailed`] instead of waiting forever; a rank that calls a
//! different collective than its peers gets [`Error::CollectiveMismatch`].

use super::{CommBackend, Elements, ElementsMut, FailureScope, ReduceOp, Scalar, MPI_MAX_COUNT};
use crate::error::{Error, Result};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

type Contribution = (&'static str, Arc<dyn Any + Send + Sync>);

struct Round {
    /// Contributions of the round being collected.
    slots: Vec<Option<Contribution>>,
    arrived: usize,
    /// Published contributions of a complete round, until every rank has read them.
    published: Option<Arc<Vec<Contribution>>>,
    read: usize,
    aborted: Option<(usize, String, String)>,
}

struct Shared {
    size: usize,
    round: Mutex<Round>,
    cv: Condvar,
}

/// A group of in-process ranks. [`LocalGroup::members`] hands out one member per rank, to
/// be moved to its own thread and turned into that rank's [`Comm`](crate::Comm) there
/// (a `Comm` stays on the thread that made it, as an MPI communicator must under
/// `MPI_THREAD_FUNNELED`).
///
/// ```
/// use gang::{LocalGroup, ReduceOp};
///
/// let group = LocalGroup::new(2);
/// std::thread::scope(|s| {
///     for member in group.members() {
///         s.spawn(move || {
///             let comm = member.into_comm();
///             assert_eq!(comm.allreduce_scalar(1u64, ReduceOp::Sum).unwrap(), 2);
///         });
///     }
/// });
/// ```
pub struct LocalGroup {
    shared: Arc<Shared>,
}

impl LocalGroup {
    /// A group of `size` ranks.
    ///
    /// # Panics
    /// If `size` is 0.
    pub fn new(size: usize) -> LocalGroup {
        assert!(size > 0, "a gang has at least one rank");
        LocalGroup { shared: Shared::new(size) }
    }

    /// One member per rank, in rank order.
    pub fn members(&self) -> Vec<LocalMember> {
        (0..self.shared.size).map(|rank| LocalMember { inner: LocalComm::new(rank, self.shared.clone()) }).collect()
    }
}

impl Shared {
    fn new(size: usize) -> Arc<Shared> {
        Arc::new(Shared {
            size,
            round: Mutex::new(Round {
                slots: (0..size).map(|_| None).collect(),
                arrived: 0,
                published: None,
                read: 0,
                aborted: None,
            }),
            cv: Condvar::new(),
        })
    }
}

impl std::fmt::Debug for LocalComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalComm").field("rank", &self.rank).field("size", &self.shared.size).finish()
    }
}

/// One rank of a [`LocalGroup`], on its way to its thread.
pub struct LocalMember {
    inner: LocalComm,
}

impl LocalMember {
    /// This member's rank.
    pub fn rank(&self) -> usize {
        self.inner.rank
    }

    /// The communicator of this rank.
    pub fn into_comm(self) -> crate::Comm {
        crate::Comm::from_backend(Box::new(self.inner))
    }
}

pub(crate) struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
    /// Number of primitive calls and the largest count seen, so tests can check that large
    /// buffers were split as the limit demands.
    calls: AtomicUsize,
    largest_count: AtomicUsize,
}

impl LocalComm {
    fn new(rank: usize, shared: Arc<Shared>) -> LocalComm {
        LocalComm { rank, shared, calls: AtomicUsize::new(0), largest_count: AtomicUsize::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        // A panic while holding the lock cannot leave the round half-updated in a way that
        // matters more than the abort that follows it; keep going.
        self.shared.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_aborted(&self, st: &Round) -> Result<()> {
        match &st.aborted {
            Some((rank, stage, message)) => {
                Err(Error::GangFailed { rank: *rank, stage: stage.clone(), message: message.clone() })
            }
            None => Ok(()),
        }
    }

    /// Deposits `value` and returns every rank's contribution, in rank order.
    fn exchange<T: Any + Send + Sync>(&self, op: &'static str, value: T) -> Result<Arc<Vec<Contribution>>> {
        let n = self.shared.size;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        // Wait until the previous round has been read by everyone.
        loop {
            self.check_aborted(&st)?;
            if st.published.is_none() {
                break;
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.slots[self.rank] = Some((op, Arc::new(value)));
        st.arrived += 1;
        if st.arrived == n {
            let all: Vec<Contribution> = st.slots.iter_mut().map(|s| s.take().expect("every rank deposited")).collect();
            st.published = Some(Arc::new(all));
            st.arrived = 0;
            self.shared.cv.notify_all();
        }
        let all = loop {
            self.check_aborted(&st)?;
            if let Some(p) = &st.published {
                break p.clone();
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        };
        st.read += 1;
        if st.read == n {
            st.published = None;
            st.read = 0;
            self.shared.cv.notify_all();
        }
        drop(st);
        for (other, (other_op, _)) in all.iter().enumerate() {
            if *other_op != op {
                return Err(Error::CollectiveMismatch {
                    rank: self.rank,
                    called: op,
                    other_rank: other,
                    other_called: other_op,
                });
            }
        }
        Ok(all)
    }

    fn note(&self, count: usize) -> Result<()> {
        self.largest_count.fetch_max(count, Ordering::Relaxed);
        check_count(count)
    }

    fn bcast_typed<T: Scalar>(&self, root: usize, buf: &mut [T]) -> Result<()> {
        self.note(buf.len())?;
        let mine: Option<Vec<T>> = (self.rank == root).then(|| buf.to_vec());
        let all = self.exchange("broadcast", (root, buf.len(), mine))?;
        let (r, len, data) = downcast::<(usize, usize, Option<Vec<T>>)>(&all[root])?;
        if *r != root || *len != buf.len() {
            return Err(Error::InvalidArgument(format!(
                "broadcast: rank {} passed root {root} and {} elements but root {r} sent {len}",
                self.rank,
                buf.len()
            )));
        }
        if self.rank != root {
            buf.copy_from_slice(data.as_ref().expect("root contributes its data"));
        }
        Ok(())
    }

    fn allreduce_typed<T: Scalar>(&self, send: Option<&[T]>, recv: &mut [T], op: ReduceOp) -> Result<()> {
        self.note(recv.len())?;
        let mine: Vec<T> = send.unwrap_or(recv).to_vec();
        let all = self.exchange("allreduce", (op, mine))?;
        // Reduce in rank order so that floating-point results are reproducible.
        for (i, c) in all.iter().enumerate() {
            let (o, v) = downcast::<(ReduceOp, Vec<T>)>(c)?;
            if *o != op || v.len() != recv.len() {
                return Err(Error::InvalidArgument(format!(
                    "allreduce: rank {} passed {op:?} over {} elements but rank {i} passed {o:?} over {}",
                    self.rank,
                    recv.len(),
                    v.len()
                )));
            }
            if i == 0 {
                recv.copy_from_slice(v);
            } else {
                for (r, x) in recv.iter_mut().zip(v) {
                    *r = T::combine(*r, *x, op);
                }
            }
        }
        Ok(())
    }
}

impl CommBackend for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn name(&self) -> &'static str {
        "local"
    }

    fn description(&self) -> String {
        format!("local ({} threads)", self.shared.size)
    }

    fn failure_scope(&self) -> FailureScope {
        FailureScope::Thread
    }

    fn abort(&self, stage: &str, message: &str, _code: i32) {
        let mut st = self.lock();
        if st.aborted.is_none() {
            st.aborted = Some((self.rank, stage.to_string(), message.to_string()));
        }
        self.shared.cv.notify_all();
    }

    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", ()).map(|_| ())
    }

    fn broadcast(&self, root: usize, buf: ElementsMut<'_>) -> Result<()> {
        super::backend::with_elements!(buf, ElementsMut, b => self.bcast_typed(root, b))
    }

    fn allreduce(&self, send: Option<Elements<'_>>, recv: ElementsMut<'_>, op: ReduceOp) -> Result<()> {
        macro_rules! typed {
            ($($v:ident),*) => {
                match (send, recv) {
                    $(
                        (None, ElementsMut::$v(r)) => self.allreduce_typed(None, r, op),
                        (Some(Elements::$v(s)), ElementsMut::$v(r)) => self.allreduce_typed(Some(s), r, op),
                    )*
                    (Some(s), r) => Err(Error::InvalidArgument(format!(
                        "allreduce: send holds {} but recv holds {}",
                        s.type_name(),
                        r.type_name()
                    ))),
                }
            };
        }
        typed!(F32, F64, I64, U64, U8, Bool)
    }

    fn call_counters(&self) -> Option<(usize, usize)> {
        Some((self.largest_count.load(Ordering::Relaxed), self.calls.load(Ordering::Relaxed)))
    }

    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Box<dyn CommBackend>>> {
        // Round 1: every rank's (color, key). Round 2: the first rank of each color (in
        // the new order) makes the new group and hands it to the others.
        let all = self.exchange("split", (color, key))?;
        let mut members: Vec<(i32, usize)> = Vec::new();
        for (r, c) in all.iter().enumerate() {
            let (rc, rk) = downcast::<(Option<u32>, i32)>(c)?;
            if rc.is_some() && *rc == color {
                members.push((*rk, r));
            }
        }
        members.sort();
        let leader = color.is_some() && members.first().map(|m| m.1) == Some(self.rank);
        let made: Option<Arc<Shared>> = leader.then(|| Shared::new(members.len()));
        let all = self.exchange("split", made)?;
        let Some(&(_, first)) = members.first().filter(|_| color.is_some()) else { return Ok(None) };
        let shared = downcast::<Option<Arc<Shared>>>(&all[first])?.clone().expect("the leader made the group");
        let new_rank = members.iter().position(|m| m.1 == self.rank).expect("this rank is a member");
        Ok(Some(Box::new(LocalComm::new(new_rank, shared))))
    }

    fn allgatherv(&self, send: &[u8], recv: &mut [u8], counts: &[usize], displs: &[usize]) -> Result<()> {
        self.note(counts.iter().sum())?;
        check_counts(counts, displs)?;
        let all = self.exchange("allgatherv", send.to_vec())?;
        for (i, c) in all.iter().enumerate() {
            let v = downcast::<Vec<u8>>(c)?;
            if v.len() != counts[i] {
                return Err(Error::InvalidArgument(format!(
                    "allgatherv: rank {i} sent {} bytes but rank {} expected {}",
                    v.len(),
                    self.rank,
                    counts[i]
                )));
            }
            recv[displs[i]..displs[i] + counts[i]].copy_from_slice(v);
        }
        Ok(())
    }

    fn alltoallv(
        &self,
        send: &[u8],
        scounts: &[usize],
        sdispls: &[usize],
        recv: &mut [u8],
        rcounts: &[usize],
        rdispls: &[usize],
    ) -> Result<()> {
        self.note(scounts.iter().sum::<usize>().max(rcounts.iter().sum()))?;
        check_counts(scounts, sdispls)?;
        check_counts(rcounts, rdispls)?;
        let parts: Vec<Vec<u8>> = scounts.iter().zip(sdispls).map(|(&c, &d)| send[d..d + c].to_vec()).collect();
        let all = self.exchange("alltoallv", parts)?;
        for (i, c) in all.iter().enumerate() {
            let from_i = &downcast::<Vec<Vec<u8>>>(c)?[self.rank];
            if from_i.len() != rcounts[i] {
                return Err(Error::InvalidArgument(format!(
                    "alltoallv: rank {i} sent {} bytes to rank {} which expected {}",
                    from_i.len(),
                    self.rank,
                    rcounts[i]
                )));
            }
            recv[rdispls[i]..rdispls[i] + rcounts[i]].copy_from_slice(from_i);
        }
        Ok(())
    }
}

fn downcast<T: Any>(c: &Contribution) -> Result<&T> {
    c.1.downcast_ref::<T>().ok_or_else(|| {
        Error::InvalidArgument(format!("{}: ranks passed different element types to the same collective", c.0))
    })
}

/// The Local backend enforces what one MPI call can count, so that the chunking above it is
/// exercised exactly as on MPI.
fn check_count(count: usize) -> Result<()> {
    if count > MPI_MAX_COUNT {
        return Err(Error::InvalidArgument(format!("count {count} exceeds what one MPI call can count")));
    }
    Ok(())
}

fn check_counts(counts: &[usize], displs: &[usize]) -> Result<()> {
    for (&c, &d) in counts.iter().zip(displs) {
        check_count(c)?;
        check_count(d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The splitting above the primitives really splits: no primitive call exceeds the
    /// limit, and a large buffer takes many calls.
    #[test]
    fn large_buffers_are_split_to_the_limit() {
        let group = LocalGroup::new(3);
        std::thread::scope(|s| {
            for member in group.members() {
                s.spawn(move || {
                    let mut comm = member.into_comm();
                    comm.set_max_count(7);
                    let me = comm.rank();
                    let got = comm.allgather_bytes(&vec![me as u8; 50 + me]).unwrap();
                    for r in 0..3 {
                        assert_eq!(got.get(r), vec![r as u8; 50 + r].as_slice());
                    }
                    let mut v = vec![1u64; 100];
                    comm.allreduce(&mut v, ReduceOp::Sum).unwrap();
                    assert!(v.iter().all(|&x| x == 3));
                    assert!(comm.max_count() == 7);
                    let l = format!("{:?}", comm.backend());
                    assert!(l.contains("LocalComm"), "{l}");
                    let (largest, calls) = comm.backend().call_counters().expect("a Local comm");
                    assert!(largest <= 7);
                    assert!(calls > 20);
                });
            }
        });
    }

    #[test]
    fn an_abort_wakes_ranks_already_waiting() {
        let group = LocalGroup::new(3);
        let mut members = group.members();
        let failing = members.remove(2).into_comm();
        std::thread::scope(|s| {
            let waiters: Vec<_> = members.into_iter().map(|m| s.spawn(move || m.into_comm().barrier())).collect();
            std::thread::sleep(std::time::Duration::from_millis(50));
            failing.abort_gang("stage-x", "disk full", 1);
            for w in waiters {
                match w.join().unwrap() {
                    Err(Error::GangFailed { rank: 2, stage, message }) => {
                        assert_eq!(stage, "stage-x");
                        assert_eq!(message, "disk full");
                    }
                    other => panic!("expected GangFailed from rank 2, got {other:?}"),
                }
            }
        });
    }
}
