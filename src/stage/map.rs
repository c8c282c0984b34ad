//! Map stages: every input partition goes through a function, batch by batch, into one
//! output partition, committed exactly once.
//!
//! [`MapStage`] is the builder for the common case (read a planned dataset, map, write);
//! [`StageOutput`] is the rank's side of any stage that writes partitions (the built-in
//! jobs `gen` and `convert` use it directly): it skips committed partitions, commits new
//! ones, counts, and stops the gang when a partition fails.

use super::committer::{OutputCommitter, WrittenPartition};
use super::manifest::{fnv1a64, schema_json, Manifest, PartStats};
use super::writer::OutputFormat;
use crate::context::Context;
use crate::data::plan::{Input, PartitionPlan, PlanOptions};
use crate::data::{BatchIter, Partition, Prefetch, PrefetchOptions};
use crate::error::{Error, Result};
use crate::ReduceOp;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use std::iter::Peekable;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// What a stage did, over the whole gang.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReport {
    /// Output partitions in the committed result.
    pub partitions: usize,
    /// Partitions found already committed by an earlier attempt, and skipped.
    pub skipped: usize,
    /// The output had been committed already by this same stage (same fingerprint: an
    /// earlier attempt or an earlier run), so nothing was written: `skipped` equals
    /// `partitions` and `manifest` is the committed one.
    pub already_complete: bool,
    /// Rows in the committed result.
    pub rows: u64,
    /// Bytes of the committed result's files.
    pub bytes: u64,
    /// Wall-clock seconds of the stage on this rank, from begin to job commit.
    pub seconds: f64,
    /// The `_SUCCESS` manifest.
    pub manifest: Manifest,
}

/// The rank's side of a stage that writes partitions: begin, commit partitions, finish.
///
/// A failure while producing or writing a partition stops the gang on every backend
/// ([`Context::fail_gang`]) so that no peer waits in the job commit: under MPI that does
/// not return; on the Local backend the error is returned after the peers were stopped.
///
/// Partitions given to [`StageOutput::submit`] are committed *behind*: the rank writes a
/// partition's bytes and goes on to its next partition while a background thread waits for
/// the disk (fsync), renames the file into `committed/` and writes its sidecar. At most
/// [`WRITE_BEHIND`] partitions wait so; an error of one fails the next call, and
/// [`StageOutput::finish`] waits for all of them before the job commit.
#[derive(Debug)]
pub struct StageOutput<'c> {
    ctx: &'c Context,
    label: String,
    committer: OutputCommitter,
    skipped: u64,
    started: Instant,
    behind: WriteBehind,
}

/// Partitions a rank may have written but not yet committed, while it writes the next one.
pub const WRITE_BEHIND: usize = 2;

/// The background thread that commits written partitions, in the order given.
#[derive(Debug, Default)]
struct WriteBehind {
    /// Started on the first partition (a stage with nothing to write starts no thread).
    worker: Option<Worker>,
    /// Given to the thread and not yet reported back.
    pending: usize,
    /// Committed and not yet taken by [`StageOutput::take_committed`].
    committed: Vec<PartStats>,
}

#[derive(Debug)]
struct Worker {
    jobs: Option<mpsc::Sender<WrittenPartition>>,
    done: mpsc::Receiver<Result<PartStats>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriteBehind {
    /// Hands `written` to the thread, after waiting until fewer than [`WRITE_BEHIND`]
    /// partitions are pending; where no thread can be started, commits it here.
    fn give(&mut self, written: WrittenPartition) -> Result<()> {
        self.collect(false)?;
        while self.pending >= WRITE_BEHIND {
            self.wait_one()?;
        }
        if self.worker.is_none() {
            let (jobs, rx) = mpsc::channel::<WrittenPartition>();
            let (tx, done) = mpsc::channel();
            let thread = std::thread::Builder::new().name("gang-commit".into()).spawn(move || {
                for written in rx {
                    if tx.send(written.commit()).is_err() {
                        break;
                    }
                }
            });
            let (jobs, thread) = match thread {
                Ok(t) => (Some(jobs), Some(t)),
                Err(_) => (None, None),
            };
            self.worker = Some(Worker { jobs, done, thread });
        }
        let worker = self.worker.as_ref().expect("a worker");
        let unsent = match &worker.jobs {
            Some(jobs) => jobs.send(written).err().map(|mpsc::SendError(w)| w),
            None => Some(written),
        };
        match unsent {
            None => self.pending += 1,
            Some(written) => self.committed.push(written.commit()?),
        }
        Ok(())
    }

    /// Takes the results reported back so far (all of them with `all`, waiting); the first
    /// error wins.
    fn collect(&mut self, all: bool) -> Result<()> {
        if all {
            while self.pending > 0 {
                self.wait_one()?;
            }
            return Ok(());
        }
        let Some(worker) = &self.worker else { return Ok(()) };
        while let Ok(r) = worker.done.try_recv() {
            self.pending -= 1;
            self.committed.push(r?);
        }
        Ok(())
    }

    fn wait_one(&mut self) -> Result<()> {
        let worker = self.worker.as_ref().expect("a partition is pending, so a worker runs");
        let r = worker.done.recv().map_err(|_| {
            Error::Environment("the thread that commits this rank's output partitions ended before them".into())
        })?;
        self.pending -= 1;
        self.committed.push(r?);
        Ok(())
    }
}

impl Drop for Worker {
    /// Lets the thread finish the partitions it holds (they are complete and correct: a
    /// relaunched stage keeps them), so that nothing writes into the output after the stage.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<'c> StageOutput<'c> {
    /// Begins the output of stage `name` (collective; see [`OutputCommitter::begin`]).
    ///
    /// # Errors
    /// As [`OutputCommitter::begin`], on every rank alike.
    pub fn begin(
        ctx: &'c Context,
        name: &str,
        dir: impl Into<PathBuf>,
        format: OutputFormat,
        overwrite: bool,
        fingerprint: &str,
    ) -> Result<Self> {
        let started = Instant::now();
        let committer = OutputCommitter::begin(ctx, dir.into(), format, overwrite, fingerprint)?;
        Ok(StageOutput {
            ctx,
            label: format!("stage {name}"),
            committer,
            skipped: 0,
            started,
            behind: WriteBehind::default(),
        })
    }

    /// The committer (for its directory, format and part names).
    pub fn committer(&self) -> &OutputCommitter {
        &self.committer
    }

    /// Whether partition `id` was committed by an earlier attempt; counts it as skipped if so.
    pub fn skip_if_committed(&mut self, id: usize) -> bool {
        let done = self.committer.is_committed(id);
        self.skipped += u64::from(done);
        done
    }

    /// Writes partition `id` (see [`OutputCommitter::write_data`]) and leaves its commit to
    /// the background thread: it is committed when [`StageOutput::take_committed`] reports
    /// it, and at the latest when [`StageOutput::flush`] or [`StageOutput::finish`] returns.
    ///
    /// # Errors
    /// On the Local backend, the error of `batches`, of writing, or of committing an earlier
    /// partition; under MPI the gang is stopped instead.
    pub fn submit<I>(&mut self, id: usize, schema: &SchemaRef, batches: I) -> Result<()>
    where
        I: IntoIterator<Item = Result<RecordBatch>>,
    {
        let written = self.committer.write_data(id, schema, batches).map_err(|e| self.fail(e))?;
        self.behind.give(written).map_err(|e| self.fail(e))
    }

    /// Writes and commits partition `id`, waiting for the commit (and for every partition
    /// submitted before it).
    ///
    /// # Errors
    /// As [`StageOutput::submit`].
    pub fn commit<I>(&mut self, id: usize, schema: &SchemaRef, batches: I) -> Result<PartStats>
    where
        I: IntoIterator<Item = Result<RecordBatch>>,
    {
        self.submit(id, schema, batches)?;
        self.flush()?;
        Ok(self.behind.committed.last().cloned().expect("the partition just committed"))
    }

    /// The partitions committed since the last call, in the order submitted (progress,
    /// tests). Does not wait.
    ///
    /// # Errors
    /// An error of a background commit (under MPI the gang is stopped instead).
    pub fn take_committed(&mut self) -> Result<Vec<PartStats>> {
        self.behind.collect(false).map_err(|e| self.fail(e))?;
        Ok(std::mem::take(&mut self.behind.committed))
    }

    /// Waits until every submitted partition is committed.
    ///
    /// # Errors
    /// As [`StageOutput::take_committed`].
    pub fn flush(&mut self) -> Result<()> {
        self.behind.collect(true).map_err(|e| self.fail(e))
    }

    /// Records `err` as this rank's failure in the stage and stops the gang, on every
    /// backend alike: under MPI this does not return (`MPI_Abort`); on the Local backend
    /// the peers' collectives fail and `err` comes back to be returned. For failures of a
    /// partition outside [`StageOutput::commit`].
    pub fn fail(&self, err: Error) -> Error {
        self.ctx.fail_gang(&self.label, &err);
        err
    }

    /// Waits for this rank's submitted partitions, then commits the job (collective) with
    /// partitions `0..partitions` and reports.
    ///
    /// # Errors
    /// As [`StageOutput::flush`] and [`OutputCommitter::finish`].
    pub fn finish(mut self, partitions: usize) -> Result<StageReport> {
        self.flush()?;
        let already_complete = self.committer.already_complete().is_some();
        let manifest = self.committer.finish(self.ctx, partitions)?;
        let skipped = self.ctx.comm().allreduce_scalar(self.skipped, ReduceOp::Sum)?;
        Ok(StageReport {
            partitions: manifest.partitions.len(),
            skipped: skipped as usize,
            already_complete,
            rows: manifest.total_rows,
            bytes: manifest.total_bytes,
            seconds: self.started.elapsed().as_secs_f64(),
            manifest,
        })
    }
}

/// Reads one partition: `(partition, schema of the plan, options) -> batches`.
pub type PartitionReader = Arc<dyn Fn(&Partition, &SchemaRef, &PlanOptions) -> Result<BatchIter> + Send + Sync>;

/// Called after each partition a rank commits.
type CommitHook<'c> = Box<dyn FnMut(&PartStats) + 'c>;

/// A map stage: input partitions -> `f(batch)` -> output partitions, committed exactly once.
///
/// ```no_run
/// # fn main() -> gang::Result<()> {
/// use gang::data::plan::Input;
/// use gang::stage::{MapStage, OutputFormat};
///
/// gang::execute(gang::Config::from_env()?, |ctx| {
///     let report = MapStage::new(ctx, vec![Input::parse("data/")?])
///         .output("out/", OutputFormat::default())
///         .name("identity")
///         .run(Ok)?;
///     println!("{} rows in {} partitions", report.rows, report.partitions);
///     Ok(())
/// })?;
/// # Ok(())
/// # }
/// ```
pub struct MapStage<'c> {
    ctx: &'c Context,
    inputs: Vec<Input>,
    options: PlanOptions,
    output: Option<(PathBuf, OutputFormat)>,
    overwrite: bool,
    prefetch: usize,
    name: String,
    version: String,
    reader: PartitionReader,
    on_commit: Option<CommitHook<'c>>,
}

impl std::fmt::Debug for MapStage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStage")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("inputs", &self.inputs)
            .field("output", &self.output)
            .field("overwrite", &self.overwrite)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

impl<'c> MapStage<'c> {
    /// A stage over `inputs`, named `map`, prefetching 2 batches, not overwriting.
    pub fn new(ctx: &'c Context, inputs: Vec<Input>) -> Self {
        MapStage {
            ctx,
            inputs,
            options: PlanOptions::default(),
            output: None,
            overwrite: false,
            prefetch: 2,
            name: "map".into(),
            version: String::new(),
            reader: Arc::new(default_reader),
            on_commit: None,
        }
    }

    /// Planning and reading options (partition size, columns, batch size).
    pub fn options(mut self, options: PlanOptions) -> Self {
        self.options = options;
        self
    }

    /// Where and how to write the output (required).
    pub fn output(mut self, dir: impl Into<PathBuf>, format: OutputFormat) -> Self {
        self.output = Some((dir.into(), format));
        self
    }

    /// Replace a committed result in the output directory (`--overwrite`).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Batches decoded ahead of the function, on background threads that decode several
    /// partitions in parallel (at least one batch per thread; see [`PrefetchOptions`]).
    pub fn prefetch(mut self, depth: usize) -> Self {
        self.prefetch = depth;
        self
    }

    /// The stage's name, part of its fingerprint and of its error messages.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The version of the stage's function, part of its fingerprint (empty by default).
    ///
    /// A resumed stage keeps the partitions an earlier attempt committed, and a stage run
    /// again over its own committed output reports it complete, only when the fingerprint
    /// is the same; so whatever changes what `f` computes (a model, statistics, options,
    /// a code revision) belongs in the version, or the output would mix partitions of two
    /// functions.
    ///
    /// ```no_run
    /// # fn main() -> gang::Result<()> {
    /// # use gang::data::plan::Input;
    /// # use gang::stage::{MapStage, OutputFormat};
    /// let scale = 2.5f64;
    /// gang::execute(gang::Config::from_env()?, |ctx| {
    ///     MapStage::new(ctx, vec![Input::parse("data/")?])
    ///         .output("out/", OutputFormat::default())
    ///         .name("scale")
    ///         .version(&format!("scale={scale}"))
    ///         .run(Ok)
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.to_string();
        self
    }

    /// Reads partitions with `reader` instead of the data plane's readers.
    pub fn reader(mut self, reader: PartitionReader) -> Self {
        self.reader = reader;
        self
    }

    /// Calls `f` after each partition this rank commits (progress, tests).
    pub fn on_commit(mut self, f: impl FnMut(&PartStats) + 'c) -> Self {
        self.on_commit = Some(Box::new(f));
        self
    }

    /// Plans the input on rank 0, writes this rank's uncommitted partitions through `f`,
    /// and commits the output (collective).
    ///
    /// The fingerprint of the stage is its name, its [version](MapStage::version), the
    /// planned partitions (file, slice, rows), the input schema and the output format, not
    /// the world size: a gang relaunched with another number of ranks resumes the same
    /// stage. An output already committed by the same stage is reported
    /// [complete](StageReport::already_complete) without running `f`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] without [`MapStage::output`]; planning errors and
    /// [`Error::Output`] on every rank alike. A partition that fails to read or map gives
    /// [`Error::Input`] naming file, partition and rank; under MPI it stops the gang
    /// instead of returning.
    pub fn run<F>(mut self, mut f: F) -> Result<StageReport>
    where
        F: FnMut(RecordBatch) -> Result<RecordBatch>,
    {
        let (dir, format) = self.output.clone().ok_or_else(|| {
            Error::InvalidArgument(format!("map stage {}: no output directory (call .output(dir, format))", self.name))
        })?;
        let plan = PartitionPlan::discover_on_root(self.ctx.comm(), &self.inputs, &self.options)?;
        let fingerprint = versioned_fingerprint(&self.name, &self.version, &plan, format);
        let mut out = StageOutput::begin(self.ctx, &self.name, dir, format, self.overwrite, &fingerprint)?;
        let rank = self.ctx.rank();
        let todo: Vec<Partition> = plan
            .for_rank(rank, self.ctx.world())
            .into_iter()
            .filter(|p| !out.skip_if_committed(p.id))
            .cloned()
            .collect();
        let (reader, schema, options) = (self.reader.clone(), plan.schema.clone(), self.options.clone());
        let prefetch = PrefetchOptions::new().with_depth(self.prefetch);
        let mut stream = Prefetch::with_reader(todo.clone(), prefetch, move |p| {
            let batches = reader(p, &schema, &options).map_err(|e| input_error(e, p, rank))?;
            let part = p.clone();
            Ok(Box::new(batches.map(move |b| b.map_err(|e| input_error(e, &part, rank)))) as BatchIter)
        })
        .peekable();
        // Progress for the launcher's stall detection: partitions done of this rank's, and
        // a pulse for every batch mapped (`map_partition`).
        let (what, total) = (format!("map stage {}", self.name), todo.len() as u64);
        for (done, part) in todo.iter().enumerate() {
            self.ctx.progress(done as u64, total, &what);
            self.map_partition(&mut out, &plan, part, &mut stream, &mut f).map_err(|e| out.fail(e))?;
            self.report(out.take_committed()?);
        }
        drop(stream);
        out.flush()?;
        if total > 0 {
            self.ctx.progress(total, total, &what);
        }
        self.report(out.take_committed()?);
        out.finish(plan.partitions.len())
    }

    fn report(&mut self, committed: Vec<PartStats>) {
        if let Some(cb) = self.on_commit.as_mut() {
            committed.iter().for_each(cb);
        }
    }

    /// Maps and submits `part`, whose batches are the next ones of `stream`.
    fn map_partition<F>(
        &self,
        out: &mut StageOutput<'_>,
        plan: &PartitionPlan,
        part: &Partition,
        stream: &mut Peekable<Prefetch>,
        f: &mut F,
    ) -> Result<()>
    where
        F: FnMut(RecordBatch) -> Result<RecordBatch>,
    {
        let rank = self.ctx.rank();
        let fn_err = |e: Error| Error::Input {
            path: part.file.clone(),
            location: Some(part.describe()),
            rank: Some(rank),
            detail: format!("the function of map stage {:?} failed: {e}", self.name),
        };
        // This partition's batches: up to the first batch of the next partition. An error
        // ends the stream; it fails this partition (it names its own).
        let batches = std::iter::from_fn(|| match stream.peek()? {
            Ok((id, _)) if *id != part.id => None,
            _ => stream.next().map(|r| r.map(|(_, b)| b)),
        });
        let mut mapped = batches.map(|b| {
            crate::heartbeat::pulse();
            b.and_then(|b| f(b).map_err(fn_err))
        });
        match mapped.next().transpose()? {
            Some(first) => {
                let schema = first.schema();
                out.submit(part.id, &schema, std::iter::once(Ok(first)).chain(mapped))
            }
            None => {
                drop(mapped);
                // An empty partition: the function applied to no rows gives the schema.
                let schema = f(RecordBatch::new_empty(plan.schema.clone())).map_err(fn_err)?.schema();
                out.submit(part.id, &schema, std::iter::empty())
            }
        }
    }
}

/// The data plane's reader.
fn default_reader(part: &Partition, schema: &SchemaRef, options: &PlanOptions) -> Result<BatchIter> {
    crate::data::read_partition(part, schema, options)
}

/// Names the file, partition and rank in a reading error.
fn input_error(e: Error, part: &Partition, rank: usize) -> Error {
    match e {
        Error::Input { path, location, rank: r, detail } => {
            Error::Input { path, location: location.or_else(|| Some(part.describe())), rank: r.or(Some(rank)), detail }
        }
        Error::GangFailed { .. } => e,
        other => Error::Input {
            path: part.file.clone(),
            location: Some(part.describe()),
            rank: Some(rank),
            detail: other.to_string(),
        },
    }
}

/// `name-<16 hex digits>`: a stable hash of the stage name, planned partitions, input
/// schema and output format ([`versioned_fingerprint`] with no version).
pub fn fingerprint(name: &str, plan: &PartitionPlan, format: OutputFormat) -> String {
    versioned_fingerprint(name, "", plan, format)
}

/// `name-<16 hex digits>`: a stable hash of the stage name, the version of its function,
/// planned partitions, input schema and output format. An empty version hashes as
/// [`fingerprint`] always did.
pub fn versioned_fingerprint(name: &str, version: &str, plan: &PartitionPlan, format: OutputFormat) -> String {
    let parts: Vec<serde_json::Value> = plan
        .partitions
        .iter()
        .map(|p| serde_json::json!([p.file.to_string_lossy(), p.slice, p.rows, p.hive, p.datasets]))
        .collect();
    let mut doc = serde_json::json!({
        "stage": name,
        "format": format.to_string(),
        "schema": schema_json(&plan.schema),
        "partitions": parts,
    });
    if !version.is_empty() {
        doc["version"] = version.into();
    }
    format!("{name}-{:016x}", fnv1a64(doc.to_string().as_bytes()))
}
