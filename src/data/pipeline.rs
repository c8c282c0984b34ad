//! Prefetching: the batches of a rank's partitions decoded ahead on background threads,
//! while the caller processes the current one.
//!
//! Several partitions decode in parallel (one per thread), each into its own bounded
//! queue; the caller drains the queues in partition order, so the output order is
//! deterministic (by partition, then batch) whatever the timing. Memory is bounded: at most
//! `ceil(depth / threads)` decoded batches wait per thread (at least one), plus one being
//! decoded per thread.
//!
//! ```
//! use gang::data::{Prefetch, PrefetchOptions};
//! # use gang::data::{FileFormat, Partition, Slice, BatchIter};
//! # use arrow_array::{Int64Array, RecordBatch};
//! # use std::sync::Arc;
//! # let parts: Vec<Partition> = (0..3).map(|id| Partition { id, file: "f".into(),
//! #     format: FileFormat::Ipc, slice: Slice::Batches(0..1), rows: 1, bytes: 0,
//! #     hive: vec![], datasets: vec![] }).collect();
//! // In a job: Prefetch::new(plan.for_rank(r, w).into_iter().cloned().collect(), plan.schema.clone(), opts, PrefetchOptions::default())
//! let batches = Prefetch::with_reader(parts, PrefetchOptions::default(), |p| {
//!     let b = RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(vec![p.id as i64])) as _)])?;
//!     Ok(Box::new(std::iter::once(Ok(b))) as BatchIter)
//! });
//! let ids: Vec<usize> = batches.map(|r| r.unwrap().0).collect();
//! assert_eq!(ids, vec![0, 1, 2]);
//! ```

use super::{read_partition, BatchIter, Partition, PlanOptions};
use crate::error::{Error, Result};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How far ahead and with how many threads [`Prefetch`] decodes: a builder.
///
/// ```
/// use gang::data::PrefetchOptions;
///
/// let o = PrefetchOptions::new().with_depth(8).with_threads(2);
/// assert_eq!((o.depth(), o.threads()), (8, 2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchOptions {
    depth: usize,
    threads: usize,
}

impl Default for PrefetchOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|s| gang_protocol::device::parse_cpulist(s.trim()).ok())
            .map_or(cores, |c| c.len());
        let local = crate::env::RankEnv::from_vars(|k| std::env::var(k).ok()).ok().and_then(|e| e.local_size);
        PrefetchOptions { depth: 4, threads: default_threads(cores, online, local.unwrap_or(1)) }
    }
}

/// Decoding threads of a rank that may run on `cores` CPUs of a machine with `online`, one
/// of `local` ranks on it: one per core, at most 4. A rank bound to its own cores uses them;
/// a rank free to run anywhere (mpirun oversubscribed, or not binding) shares the machine
/// with the node's other ranks and takes its share, so that ranks do not crowd the cores
/// with threads.
fn default_threads(cores: usize, online: usize, local: usize) -> usize {
    let share = if cores >= online { cores / local.max(1) } else { cores };
    share.clamp(1, 4)
}

impl PrefetchOptions {
    /// Four batches ahead, one thread per core this rank may use (its share of the machine
    /// when it is not bound to cores of its own), at most 4.
    pub fn new() -> PrefetchOptions {
        PrefetchOptions::default()
    }

    /// Decoded batches that may wait ahead of the caller (at least one per thread; 0 counts
    /// as 1).
    pub fn with_depth(mut self, depth: usize) -> PrefetchOptions {
        self.depth = depth.max(1);
        self
    }

    /// Partitions decoded in parallel (0 counts as 1).
    pub fn with_threads(mut self, threads: usize) -> PrefetchOptions {
        self.threads = threads.max(1);
        self
    }

    /// Batches that may wait ahead.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Decoding threads.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// What a decoding thread sends about one partition.
enum Msg {
    Batch(RecordBatch),
    Failed(Error),
    Done,
}

/// The queue of one partition, taken by the first free thread.
struct Job {
    index: usize,
    partition: Partition,
    tx: SyncSender<Msg>,
}

type Reader = dyn Fn(&Partition) -> Result<BatchIter> + Send + Sync;

/// The batches of a list of partitions, `(partition id, batch)`, in order, decoded ahead on
/// background threads. An error ends the iteration (after it is returned). Dropping a
/// `Prefetch` stops and joins its threads.
pub struct Prefetch {
    ids: Vec<usize>,
    queues: Vec<Option<Receiver<Msg>>>,
    current: usize,
    finished: bool,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("partitions", &self.ids)
            .field("current", &self.current)
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Prefetch {
    /// Reads `partitions` (in the given order; normally a rank's partitions by id) with
    /// [`read_partition`].
    pub fn new(partitions: Vec<Partition>, schema: SchemaRef, plan: PlanOptions, opts: PrefetchOptions) -> Prefetch {
        Prefetch::with_reader(partitions, opts, move |p| read_partition(p, &schema, &plan))
    }

    /// As [`Prefetch::new`] with another way of reading a partition (tests, custom formats).
    pub fn with_reader<F>(partitions: Vec<Partition>, opts: PrefetchOptions, reader: F) -> Prefetch
    where
        F: Fn(&Partition) -> Result<BatchIter> + Send + Sync + 'static,
    {
        let threads = opts.threads.max(1).min(partitions.len().max(1));
        let capacity = opts.depth.div_ceil(threads).max(1);
        let ids = partitions.iter().map(|p| p.id).collect();
        let mut queues = Vec::with_capacity(partitions.len());
        let mut jobs = VecDeque::with_capacity(partitions.len());
        for (index, partition) in partitions.into_iter().enumerate() {
            let (tx, rx) = sync_channel(capacity);
            queues.push(Some(rx));
            jobs.push_back(Job { index, partition, tx });
        }
        let jobs = Arc::new(Mutex::new(jobs));
        let stop = Arc::new(AtomicBool::new(false));
        let first_failure = Arc::new(AtomicUsize::new(usize::MAX));
        let reader: Arc<Reader> = Arc::new(reader);
        let handles = (0..threads)
            .map(|t| {
                let (jobs, stop, first_failure, reader) =
                    (jobs.clone(), stop.clone(), first_failure.clone(), reader.clone());
                std::thread::Builder::new()
                    .name(format!("gang-prefetch-{t}"))
                    .spawn(move || work(&jobs, &stop, &first_failure, reader.as_ref()))
                    .expect("cannot start a prefetch thread")
            })
            .collect();
        Prefetch { ids, queues, current: 0, finished: false, stop, threads: handles }
    }

    fn shut_down(&mut self) {
        self.finished = true;
        self.stop.store(true, Ordering::SeqCst);
        // Dropping the receivers wakes threads blocked on a full queue.
        self.queues.clear();
        for t in self.threads.drain(..) {
            // A decoding thread that panicked has already reported it through its queue.
            let _ = t.join();
        }
    }
}

/// A decoding thread: takes partitions in order and fills their queues.
fn work(jobs: &Mutex<VecDeque<Job>>, stop: &AtomicBool, first_failure: &AtomicUsize, reader: &Reader) {
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(job) = jobs.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { return };
        // Partitions after a failed one will never be read.
        if job.index > first_failure.load(Ordering::SeqCst) {
            return;
        }
        let ok = crate::failure::catch_panic(|| decode(&job, stop, reader)).unwrap_or_else(|msg| {
            let e = Error::input(
                &job.partition.file,
                Some(job.partition.describe()),
                format!("the reader panicked: {msg}"),
            );
            let _ = job.tx.send(Msg::Failed(e));
            false
        });
        if !ok {
            first_failure.fetch_min(job.index, Ordering::SeqCst);
        }
    }
}

/// Sends the batches of one partition; `false` if it failed.
fn decode(job: &Job, stop: &AtomicBool, reader: &Reader) -> bool {
    let batches = match reader(&job.partition) {
        Ok(b) => b,
        Err(e) => {
            let _ = job.tx.send(Msg::Failed(e));
            return false;
        }
    };
    for b in batches {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let (msg, ok) = match b {
            Ok(b) => (Msg::Batch(b), true),
            Err(e) => (Msg::Failed(e), false),
        };
        // A send fails only when the consumer is gone: stop.
        if job.tx.send(msg).is_err() || !ok {
            return ok;
        }
    }
    let _ = job.tx.send(Msg::Done);
    true
}

/// The batches of one iterator decoded on a background thread, up to `depth` ahead of the
/// caller (`depth == 0`: `input` itself). An error ends the iteration after it is returned;
/// dropping the result stops the thread (after its current batch).
///
/// [`Prefetch`] is the multi-partition form, decoding several partitions in parallel.
pub fn readahead(input: BatchIter, depth: usize) -> BatchIter {
    if depth == 0 {
        return input;
    }
    let (tx, rx) = sync_channel::<Result<RecordBatch>>(depth);
    let handle = std::thread::Builder::new()
        .name("gang-readahead".into())
        .spawn(move || {
            for b in input {
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    return;
                }
            }
        })
        .expect("cannot start a readahead thread");
    Box::new(Readahead { rx: Some(rx), handle: Some(handle) })
}

struct Readahead {
    rx: Option<Receiver<Result<RecordBatch>>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for Readahead {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        let item = self.rx.as_ref()?.recv().ok();
        if !matches!(item, Some(Ok(_))) {
            self.finish();
        }
        item
    }
}

impl Readahead {
    fn finish(&mut self) {
        self.rx = None;
        if let Some(h) = self.handle.take() {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Iterator for Prefetch {
    type Item = Result<(usize, RecordBatch)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished && self.current < self.queues.len() {
            let rx = self.queues[self.current].as_ref().expect("queue of the current partition");
            let id = self.ids[self.current];
            match rx.recv() {
                Ok(Msg::Batch(b)) => return Some(Ok((id, b))),
                Ok(Msg::Done) => {
                    // Frees the queue as soon as the partition is done.
                    self.queues[self.current] = None;
                    self.current += 1;
                }
                Ok(Msg::Failed(e)) => {
                    self.shut_down();
                    return Some(Err(e));
                }
                Err(_) => {
                    self.shut_down();
                    return Some(Err(Error::from(format!(
                        "prefetch: the thread decoding partition {id} stopped without finishing it"
                    ))));
                }
            }
        }
        if !self.finished {
            self.shut_down();
        }
        None
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_not_bound_to_cores_take_their_share_of_the_machine() {
        // Bound ranks use their own cores, at most 4.
        assert_eq!(default_threads(1, 2, 2), 1);
        assert_eq!(default_threads(8, 64, 8), 4);
        // Free ranks share the machine with their node's ranks.
        assert_eq!(default_threads(2, 2, 4), 1);
        assert_eq!(default_threads(16, 16, 2), 4);
        assert_eq!(default_threads(16, 16, 8), 2);
        // One rank, or no launcher: every core, at most 4.
        assert_eq!(default_threads(2, 2, 1), 2);
        assert_eq!(default_threads(32, 32, 1), 4);
    }
    use crate::data::{FileFormat, Slice};
    use arrow_array::{Array, Int64Array};
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    fn parts(n: usize) -> Vec<Partition> {
        (0..n)
            .map(|id| Partition {
                id,
                file: format!("part-{id}.parquet").into(),
                format: FileFormat::Parquet,
                slice: Slice::RowGroups(0..1),
                rows: 10,
                bytes: 0,
                hive: vec![],
                datasets: vec![],
            })
            .collect()
    }

    fn batch(v: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(vec![v])) as _)]).unwrap()
    }

    fn value(b: &RecordBatch) -> i64 {
        b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0)
    }

    /// Partition p yields batches p*100 + 0..n, with a delay that makes later partitions
    /// finish first.
    fn slow_reader(n: usize, total: usize) -> impl Fn(&Partition) -> Result<BatchIter> + Send + Sync {
        move |p: &Partition| {
            let (id, delay) = (p.id, Duration::from_millis(((total - p.id) * 3) as u64));
            Ok(Box::new((0..n).map(move |i| {
                std::thread::sleep(delay);
                Ok(batch((id * 100 + i) as i64))
            })) as BatchIter)
        }
    }

    #[test]
    fn output_is_in_partition_then_batch_order() {
        for threads in [1, 2, 3, 8] {
            for depth in [1, 2, 4, 16] {
                let got: Vec<(usize, i64)> = Prefetch::with_reader(
                    parts(6),
                    PrefetchOptions::new().with_depth(depth).with_threads(threads),
                    slow_reader(4, 6),
                )
                .map(|r| r.map(|(id, b)| (id, value(&b))).unwrap())
                .collect();
                let want: Vec<(usize, i64)> =
                    (0..6).flat_map(|p| (0..4).map(move |i| (p, (p * 100 + i) as i64))).collect();
                assert_eq!(got, want, "threads {threads}, depth {depth}");
            }
        }
        // No partitions: nothing, and no thread left behind.
        assert_eq!(Prefetch::with_reader(vec![], PrefetchOptions::default(), slow_reader(1, 1)).count(), 0);
        // Ids come from the partitions, not their positions.
        let mut ps = parts(3);
        ps.remove(1);
        let ids: Vec<usize> =
            Prefetch::with_reader(ps, PrefetchOptions::default(), slow_reader(1, 3)).map(|r| r.unwrap().0).collect();
        assert_eq!(ids, vec![0, 2]);
    }

    #[test]
    fn producers_block_when_the_queue_is_full() {
        let produced = Arc::new(AtomicU64::new(0));
        let counter = produced.clone();
        let mut it = Prefetch::with_reader(parts(1), PrefetchOptions::new().with_depth(2).with_threads(1), move |_| {
            let c = counter.clone();
            Ok(Box::new((0..).map(move |i| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(batch(i))
            })) as BatchIter)
        });
        std::thread::sleep(Duration::from_millis(200));
        // Two in the queue, one waiting to be sent.
        assert!(produced.load(Ordering::SeqCst) <= 3, "{}", produced.load(Ordering::SeqCst));
        for i in 0..10 {
            assert_eq!(value(&it.next().unwrap().unwrap().1), i);
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(produced.load(Ordering::SeqCst) <= 13);
        // Dropping an endless pipeline returns promptly.
        let t = Instant::now();
        drop(it);
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn errors_arrive_in_order_and_stop_the_pipeline() {
        let reader = |p: &Partition| -> Result<BatchIter> {
            let id = p.id;
            match id {
                // Opening partition 4 fails at once: it must not overtake partitions 1-3.
                4 => Err(Error::input(&p.file, Some(p.describe()), "cannot open")),
                // Partition 2 fails on its second batch.
                2 => Ok(Box::new((0..3).map(move |i| {
                    std::thread::sleep(Duration::from_millis(5));
                    if i == 1 {
                        Err(Error::input(format!("part-{id}.parquet"), None, "decode error"))
                    } else {
                        Ok(batch(i))
                    }
                })) as BatchIter),
                _ => Ok(Box::new((0..3).map(|i| {
                    std::thread::sleep(Duration::from_millis(5));
                    Ok(batch(i))
                })) as BatchIter),
            }
        };
        let mut seen = Vec::new();
        let mut err = None;
        for r in Prefetch::with_reader(parts(6), PrefetchOptions::new().with_depth(4).with_threads(3), reader) {
            match r {
                Ok((id, b)) => seen.push((id, value(&b))),
                Err(e) => {
                    assert!(err.is_none(), "nothing after the error");
                    err = Some(e.to_string());
                }
            }
        }
        assert_eq!(seen, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]);
        let err = err.unwrap();
        assert!(err.contains("part-2.parquet") && err.contains("decode error"), "{err}");
    }

    #[test]
    fn a_panicking_reader_is_an_error_naming_the_partition() {
        let mut it = Prefetch::with_reader(parts(2), PrefetchOptions::new().with_depth(2).with_threads(2), |p| {
            if p.id == 1 {
                panic!("boom");
            }
            Ok(Box::new(std::iter::once(Ok(batch(7)))) as BatchIter)
        });
        assert_eq!(value(&it.next().unwrap().unwrap().1), 7);
        let e = it.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("part-1.parquet") && e.contains("boom"), "{e}");
        assert!(it.next().is_none());
    }

    #[test]
    fn early_drop_stops_the_threads() {
        let started = Arc::new(AtomicU64::new(0));
        let alive = Arc::new(AtomicU64::new(0));
        let (s, a) = (started.clone(), alive.clone());
        let mut it =
            Prefetch::with_reader(parts(50), PrefetchOptions::new().with_depth(2).with_threads(4), move |_| {
                s.fetch_add(1, Ordering::SeqCst);
                struct Alive(Arc<AtomicU64>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                a.fetch_add(1, Ordering::SeqCst);
                let guard = Alive(a.clone());
                Ok(Box::new((0..1000).map(move |i| {
                    let _ = &guard;
                    Ok(batch(i))
                })) as BatchIter)
            });
        assert!(it.next().unwrap().is_ok());
        let t = Instant::now();
        drop(it);
        assert!(t.elapsed() < Duration::from_secs(2));
        // Every reader was dropped (the threads are joined) and few partitions were started.
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        assert!(started.load(Ordering::SeqCst) <= 8, "{}", started.load(Ordering::SeqCst));
    }
}
