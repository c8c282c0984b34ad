//! Starting a rank: [`Config`] (plain data), [`init`] and [`execute`], and the guarantee
//! that a failing rank never leaves its peers hanging.

#[cfg(feature = "mpi")]
use crate::comm::mpi::{MpiComm, MpiRuntime};
use crate::comm::{Comm, FailureScope, LocalGroup};
use crate::env::{placement_from_hosts, RankEnv};
use crate::error::{Error, Result};
use crate::failure::{self, RunInfo};
pub use crate::failure::{EXIT_RANK_ERROR, EXIT_RANK_PANIC};
use gang_protocol::device::Device;
use gang_protocol::RunDir;
use std::path::Path;

/// How the ranks of this process are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendChoice {
    /// MPI when a launcher started this process, otherwise a single Local rank.
    Auto,
    /// One MPI rank per process (under `gang run`, mpirun or srun).
    Mpi,
    /// N ranks as threads of this process.
    Local(usize),
}

/// The MPI thread level a rank asks for (`MPI_Init_thread`).
///
/// The default is `Single`: gang calls MPI from the rank's main thread only, and on Open MPI
/// 4.1 any higher level costs 0.1-0.4 µs on every small collective (measured in
/// `bench/RESULTS.md`). Threads of the rank that do not call MPI (rayon, I/O) are fine in
/// practice with both Open MPI and MPICH. Ask for more with `GANG_MPI_THREADING` when
/// other code of the process calls MPI from several threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum MpiThreading {
    /// `MPI_THREAD_SINGLE`.
    #[default]
    Single,
    /// `MPI_THREAD_FUNNELED`.
    Funneled,
    /// `MPI_THREAD_SERIALIZED`.
    Serialized,
    /// `MPI_THREAD_MULTIPLE`.
    Multiple,
}

/// Plain-data configuration of a gang, separate from running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Backend to use.
    pub backend: BackendChoice,
    /// Largest count per underlying MPI call (see [`Comm::set_max_count`]).
    pub max_count: Option<usize>,
    /// MPI thread level to ask for.
    pub mpi_threading: MpiThreading,
}

impl Default for Config {
    fn default() -> Self {
        Config { backend: BackendChoice::Auto, max_count: None, mpi_threading: MpiThreading::Single }
    }
}

impl Config {
    /// `GANG_LOCAL=N` selects N Local ranks (otherwise [`BackendChoice::Auto`]);
    /// `GANG_MPI_THREADING=single|funneled|serialized|multiple` the MPI thread level.
    ///
    /// # Errors
    /// [`Error::Environment`] if `GANG_LOCAL` is not a positive integer or
    /// `GANG_MPI_THREADING` not one of the levels.
    pub fn from_env() -> Result<Config> {
        let mut c = Config::default();
        if let Ok(v) = std::env::var("GANG_LOCAL") {
            c.backend = BackendChoice::Local(parse_ranks(&v, "GANG_LOCAL")?);
        }
        if let Ok(v) = std::env::var("GANG_MPI_THREADING") {
            c.mpi_threading = match v.trim().to_ascii_lowercase().as_str() {
                "single" => MpiThreading::Single,
                "funneled" => MpiThreading::Funneled,
                "serialized" => MpiThreading::Serialized,
                "multiple" => MpiThreading::Multiple,
                _ => {
                    return Err(Error::Environment(format!(
                        "GANG_MPI_THREADING={v:?}: expected single, funneled, serialized or multiple"
                    )))
                }
            };
        }
        Ok(c)
    }

    /// [`Config::from_env`], then `--local N` (or `--local=N`) from `args`, which is removed;
    /// the remaining arguments are returned for the program's own parsing.
    ///
    /// # Errors
    /// [`Error::Environment`] if the value of `--local` is missing or not a positive integer.
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<(Config, Vec<String>)> {
        let mut c = Config::from_env()?;
        let mut rest = Vec::new();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if a == "--local" {
                let v = it.next().ok_or_else(|| Error::Environment("--local needs a number of ranks".into()))?;
                c.backend = BackendChoice::Local(parse_ranks(&v, "--local")?);
            } else if let Some(v) = a.strip_prefix("--local=") {
                c.backend = BackendChoice::Local(parse_ranks(v, "--local")?);
            } else {
                rest.push(a);
            }
        }
        Ok((c, rest))
    }

    /// N Local ranks.
    pub fn local(n: usize) -> Config {
        Config { backend: BackendChoice::Local(n), ..Config::default() }
    }

    /// Sets the largest count per underlying call (tests use tiny values to exercise the
    /// splitting of large buffers).
    pub fn with_max_count(mut self, max: usize) -> Config {
        self.max_count = Some(max);
        self
    }
}

fn parse_ranks(v: &str, what: &str) -> Result<usize> {
    match v.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Error::Environment(format!("{what} {v:?}: the number of ranks must be an integer of at least 1"))),
    }
}

/// Everything a rank knows about itself and its gang.
#[derive(Debug)]
pub struct Context {
    comm: Comm,
    local_rank: usize,
    local_size: usize,
    node_index: usize,
    host: String,
    device: Device,
    env: RankEnv,
    run_dir: Option<RunDir>,
    run: RunInfo,
    mpi_threading: Option<MpiThreading>,
    // Barrier sections this context has entered (see `crate::section`).
    sections_entered: std::sync::atomic::AtomicU64,
}

/// What a rank's storage and stages need of it: a communicator and a description of its
/// run (attempt, run directory). [`Context`] is one; [`OnComm`] makes one of any [`Comm`]
/// (a split, a communicator adopted by a C API) and a [`RunInfo`].
pub trait Participant {
    /// The communicator of the gang.
    fn comm(&self) -> &Comm;
    /// The attempt and the run directory.
    fn run_info(&self) -> &RunInfo;
}

impl Participant for Context {
    fn comm(&self) -> &Comm {
        &self.comm
    }
    fn run_info(&self) -> &RunInfo {
        &self.run
    }
}

/// A bare communicator with its run, for [`CheckpointStore`](crate::CheckpointStore) and
/// [`OutputCommitter`](crate::stage::OutputCommitter) without a [`Context`].
#[derive(Debug, Clone, Copy)]
pub struct OnComm<'a> {
    /// The communicator.
    pub comm: &'a Comm,
    /// The run.
    pub run: &'a RunInfo,
}

impl Participant for OnComm<'_> {
    fn comm(&self) -> &Comm {
        self.comm
    }
    fn run_info(&self) -> &RunInfo {
        self.run
    }
}

impl Context {
    /// The context of a rank of `comm`, any communicator (a [`Comm::split`] of another,
    /// one of a transport of the program's own), for barrier sections and map stages over
    /// it. Collective: the ranks exchange host names to find local ranks and nodes; the
    /// launcher's variables (read as [`init`] does) give the device plan. Failure handling
    /// follows `comm`'s [`FailureScope`].
    ///
    /// # Errors
    /// [`Error::Environment`] for malformed launcher variables; communication errors.
    pub fn from_comm(comm: Comm, run: RunInfo) -> Result<Context> {
        placed(comm, RankEnv::from_env()?, run, None, false)
    }

    /// This rank, `0..world()`.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of ranks in the gang.
    pub fn world(&self) -> usize {
        self.comm.size()
    }

    /// Rank among the ranks on this node.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Number of ranks on this node.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Index of this node among the gang's nodes.
    pub fn node_index(&self) -> usize {
        self.node_index
    }

    /// Host name of this rank.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The device of this rank, planned from its environment when the context was made:
    /// the visible GPUs from `CUDA_VISIBLE_DEVICES`, else the discovery script of `gang run
    /// --gpu-discovery-script` (`GANG_GPU_DISCOVERY_SCRIPT`), else Slurm's GPU ids, else one
    /// per `/dev/nvidiaN` file; the only one the rank sees, or local rank among them; the
    /// CPU when there is none ([`crate::gpu_bind::rank_device`]). CUDA ordinals: pass
    /// `ordinal` to your CUDA library.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The communicator of the gang.
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// Mutable access to the communicator (to tune it, e.g. [`Comm::set_max_count`]).
    pub fn comm_mut(&mut self) -> &mut Comm {
        &mut self.comm
    }

    /// Attempt number: 0 on the first launch, k after k restarts of the gang.
    pub fn attempt(&self) -> u32 {
        self.env.attempt
    }

    /// The run directory the launcher created, if launched by `gang`.
    pub fn run_dir(&self) -> Option<&Path> {
        self.run_dir.as_ref().map(RunDir::path)
    }

    /// The run id the launcher assigned, if launched by `gang`.
    pub fn run_id(&self) -> Option<&str> {
        self.env.run_id.as_deref()
    }

    /// Batch job id (`SLURM_JOB_ID`), if any.
    pub fn job_id(&self) -> Option<&str> {
        self.env.job_id.as_deref()
    }

    /// What the launcher's environment said.
    pub fn rank_env(&self) -> &RankEnv {
        &self.env
    }

    /// The MPI library's version string, or `local (N threads)` on the Local backend.
    pub fn backend_description(&self) -> String {
        self.comm.backend_description()
    }

    /// The thread level MPI provides to this rank (asked for with `GANG_MPI_THREADING`, or
    /// whatever the program that adopted its communicator initialized); `None` on the
    /// Local backend.
    pub fn mpi_threading(&self) -> Option<MpiThreading> {
        self.mpi_threading
    }

    /// The attempt and run directory, as storage and stages that work on a bare
    /// communicator take them.
    pub fn run_info(&self) -> &RunInfo {
        &self.run
    }

    /// The number of barrier sections this context entered before, then counts one more
    /// (for the entry check of `crate::section`).
    pub(crate) fn next_section_index(&self) -> u64 {
        self.sections_entered.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Reports progress: step `step` of `total` (0 when unknown) of `what` (`"train"`,
    /// `"map"`). Cheap (atomics, no system call): call it every step. Under `gang run` the
    /// heartbeats carry it to the launcher, which restarts a gang whose progress stops for
    /// `--stall-timeout` seconds; report `step == total` when a counted phase is over.
    pub fn progress(&self, step: u64, total: u64, what: &str) {
        crate::heartbeat::report(step, total, what);
    }

    /// Records why this rank failed (with the error's [`class`](Error::class)) in the run
    /// directory and stops the whole gang: under MPI every process of the job is killed
    /// (`MPI_Abort`, this does not return); on the Local backend the peers' collectives
    /// fail with [`Error::GangFailed`].
    pub fn fail_gang(&self, stage: &str, error: &Error) {
        failure::fail_gang(&self.comm, &self.run, stage, error, EXIT_RANK_ERROR);
    }
}

/// The context of this process's rank.
///
/// Under a launcher (the `gang` launcher, mpirun, srun) this initializes MPI, checks that
/// MPI agrees with the launcher about rank and world size, and installs a panic hook that
/// aborts the whole gang. Started by hand it is a single rank on the Local backend.
///
/// A process whose MPI rank or world size disagrees with what its launcher said
/// (typically a program built against another MPI than the launcher's) prints the
/// disagreement, naming the variables, and aborts: its peers cannot be told otherwise.
///
/// # Errors
/// [`Error::Environment`] for malformed launcher variables; [`Error::Mpi`] from MPI; [`Error::Environment`] if `GANG_LOCAL` asks for
/// more than one rank (use [`execute`] for that).
pub fn init() -> Result<Context> {
    init_with(&Config::from_env()?)
}

fn init_with(config: &Config) -> Result<Context> {
    let env = RankEnv::from_env()?;
    let use_mpi = match config.backend {
        BackendChoice::Mpi => true,
        BackendChoice::Auto => env.launched(),
        BackendChoice::Local(1) => false,
        BackendChoice::Local(n) => {
            return Err(Error::Environment(format!(
                "init() makes this process's single rank but {n} Local ranks were asked for; \
                 use gang::execute() to run them as threads"
            )))
        }
    };
    if use_mpi {
        init_mpi(config, env)
    } else {
        let member = LocalGroup::new(1).members().remove(0);
        Ok(local_context(member.into_comm(), env, config))
    }
}

#[cfg(feature = "mpi")]
fn init_mpi(config: &Config, env: RankEnv) -> Result<Context> {
    let runtime = MpiRuntime::init(config.mpi_threading)?;
    let threading = runtime.threading();
    let comm = Comm::from_backend(Box::new(MpiComm::world(runtime)?));
    mpi_context(comm, env, config, Some(threading), false)
}

#[cfg(not(feature = "mpi"))]
fn init_mpi(_config: &Config, _env: RankEnv) -> Result<Context> {
    Err(Error::Environment(
        "this program was started by an MPI launcher but gang was built without its `mpi` \
         feature: rebuild with the default features to run as MPI ranks"
            .into(),
    ))
}

/// The context of this rank on a duplicate of `comm`, a communicator the program owns
/// (from rsmpi: its world, or a split of it). MPI stays the program's: gang never calls
/// `MPI_Finalize` for it, frees its duplicate only while MPI is alive, and reads the thread
/// level with `MPI_Query_thread`. Collective over `comm`.
///
/// The gang is `comm`'s ranks: rank, size, local ranks and nodes are `comm`'s, found by
/// exchanging host names (the launcher's variables describe the whole job and are not
/// checked against it). A panic or a failure stops the whole MPI job, as MPI does.
///
/// # Examples
/// ```no_run
/// use gang::mpi::topology::{Color, Communicator};
///
/// let universe = gang::mpi::initialize().unwrap();
/// let world = universe.world();
/// let half = world.split_by_color(Color::with_value(world.rank() % 2)).unwrap();
/// let ctx = gang::init_from_comm(&half).unwrap();
/// assert_eq!(ctx.world(), half.size() as usize);
/// drop(ctx); // before `universe`, which finalizes MPI
/// ```
///
/// # Errors
/// [`Error::Environment`] if MPI is not initialized or already finalized; [`Error::Mpi`].
#[cfg(feature = "mpi")]
pub fn init_from_comm<C>(comm: &C) -> Result<Context>
where
    C: ::mpi::raw::AsRaw<Raw = ::mpi::ffi::MPI_Comm>,
{
    let comm = MpiComm::adopt(comm)?;
    let threading = comm.runtime().threading();
    mpi_context(Comm::from_backend(Box::new(comm)), RankEnv::from_env()?, &Config::default(), Some(threading), true)
}

/// [`init_from_comm`] for a raw `MPI_Comm` handle (from C, or `MPI_Comm_f2c` of a Fortran
/// handle).
///
/// # Safety
/// `raw` is a valid communicator of the initialized, not finalized MPI of this process,
/// and every rank of it makes this call.
///
/// # Errors
/// As [`init_from_comm`].
#[cfg(feature = "mpi")]
#[allow(unsafe_code)] // The entry point of the C API: the handle's validity is the caller's.
pub unsafe fn init_from_raw_comm(raw: ::mpi::ffi::MPI_Comm) -> Result<Context> {
    // SAFETY: the caller's contract.
    let comm = unsafe { MpiComm::adopt_raw(raw) }?;
    let threading = comm.runtime().threading();
    mpi_context(Comm::from_backend(Box::new(comm)), RankEnv::from_env()?, &Config::default(), Some(threading), true)
}

/// A Process-scope rank's context: failure hook, kernels' thread pool, heartbeats, the
/// check against the launcher's variables (unless `adopted`), placement.
#[cfg(feature = "mpi")]
fn mpi_context(
    mut comm: Comm,
    env: RankEnv,
    config: &Config,
    mpi_threading: Option<MpiThreading>,
    adopted: bool,
) -> Result<Context> {
    if let Some(m) = config.max_count {
        comm.set_max_count(m);
    }
    let (rank, size) = (comm.rank(), comm.size());
    let mut run = RunInfo::new(env.attempt);
    run.run_dir = env.run_dir.clone();
    failure::claim_process(&comm, &run);
    // The rank's main thread makes MPI calls and runs the training kernels: as a worker
    // of their thread pool (when the rank has two cores or more) it computes its share of
    // each step rather than sleeping on it.
    gang_kernels::adopt_current_thread();
    // Heartbeats name the process by its rank in the launcher's job, which for an adopted
    // communicator is not its rank in the gang.
    crate::heartbeat::start(if adopted { env.rank.unwrap_or(rank) } else { rank }, env.attempt);
    if !adopted {
        if let Err(e) = env.check_against_mpi(rank, size, &crate::comm::mpi::library_version()) {
            // Every process checks on its own (with a mismatched MPI they are separate
            // worlds and no collective is possible), so a process that finds a
            // disagreement must not return into code whose collectives its peers might
            // wait in: report and abort.
            failure::fail_gang(&comm, &run, "init", &e, EXIT_RANK_ERROR);
        }
    }
    placed(comm, env, run, mpi_threading, !adopted)
}

/// The context of a rank of `comm` once it is up: local rank, local size and node from an
/// exchange of host names (collective), or from the launcher's variables where
/// `env_placement` allows them (they describe the launcher's world, which an adopted or
/// split communicator is not).
fn placed(
    comm: Comm,
    env: RankEnv,
    run: RunInfo,
    mpi_threading: Option<MpiThreading>,
    env_placement: bool,
) -> Result<Context> {
    let host = gang_protocol::hostname();
    let hosts = comm.allgather_bytes(host.as_bytes())?;
    let hosts: Vec<String> = hosts.iter().map(|h| String::from_utf8_lossy(h).into_owned()).collect();
    let (derived_local, derived_local_size, derived_node) = placement_from_hosts(&hosts, comm.rank());
    let (local_rank, local_size, node_index) = if env_placement {
        (
            env.local_rank.unwrap_or(derived_local),
            env.local_size.unwrap_or(derived_local_size),
            env.node_index.unwrap_or(derived_node),
        )
    } else {
        (derived_local, derived_local_size, derived_node)
    };
    let device = crate::gpu_bind::rank_device_or_cpu(local_rank, local_size, comm.rank() == 0);
    let run_dir = run.run_dir.clone().map(|d| RunDir::open(d).with_attempt(run.attempt));
    Ok(Context {
        comm,
        local_rank,
        local_size,
        node_index,
        host,
        device,
        env,
        run_dir,
        run,
        mpi_threading,
        sections_entered: Default::default(),
    })
}

fn local_context(mut comm: Comm, env: RankEnv, config: &Config) -> Context {
    if let Some(m) = config.max_count {
        comm.set_max_count(m);
    }
    let local_rank = comm.rank();
    let local_size = comm.size();
    let device = crate::gpu_bind::rank_device_or_cpu(local_rank, local_size, local_rank == 0);
    let run_dir = env.run_dir.clone().map(|d| RunDir::open(d).with_attempt(env.attempt));
    let mut run = RunInfo::new(env.attempt);
    run.run_dir = env.run_dir.clone();
    Context {
        comm,
        local_rank,
        local_size,
        node_index: 0,
        host: gang_protocol::hostname(),
        device,
        env,
        run_dir,
        run,
        mpi_threading: None,
        sections_entered: Default::default(),
    }
}

/// Runs `f` on every rank of the gang described by `config` and returns the results of the
/// ranks of this process: all N of them, in rank order, on the Local backend; this rank's
/// alone under MPI.
///
/// A rank whose `f` fails (error or panic) stops the gang: under MPI its error is printed
/// with its rank, recorded in the run directory, and `MPI_Abort` ends every process (this
/// function does not return); on the Local backend its peers' collectives fail and the
/// first failure is returned.
///
/// # Examples
/// ```
/// use gang::{execute, Config, ReduceOp};
///
/// let sums = execute(Config::local(3), |ctx| {
///     ctx.comm().allreduce_scalar(ctx.rank() as u64, ReduceOp::Sum)
/// })
/// .unwrap();
/// assert_eq!(sums, vec![3, 3, 3]);
/// ```
///
/// # Errors
/// Under MPI: launch errors (see [`init`]). On the Local backend: the first rank's error.
pub fn execute<T, F>(config: Config, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(&Context) -> Result<T> + Send + Sync,
{
    match config.backend {
        BackendChoice::Local(n) if n > 1 => execute_local(n, &config, &f),
        _ => {
            let ctx = init_with(&config)?;
            if ctx.comm().failure_scope() == FailureScope::Thread {
                return execute_local(1, &config, &f);
            }
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&ctx))) {
                Ok(Ok(v)) => Ok(vec![v]),
                Ok(Err(e)) => {
                    ctx.fail_gang(failure::EXECUTE, &e);
                    // fail_gang does not return under Process scope (MPI).
                    Err(e)
                }
                // The panic hook has already aborted the gang; this is unreachable under
                // MPI, kept for completeness.
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    }
}

fn execute_local<T, F>(n: usize, config: &Config, f: &F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(&Context) -> Result<T> + Send + Sync,
{
    let env = RankEnv::from_env()?;
    let members = LocalGroup::new(n).members();
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|member| {
                let env = env.clone();
                s.spawn(move || {
                    let ctx = local_context(member.into_comm(), env, config);
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&ctx)));
                    match out {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => {
                            // A peer's abort reaching this rank is not this rank's failure.
                            if !matches!(e, Error::GangFailed { .. }) {
                                ctx.comm().abort_gang("execute", &e.to_string(), EXIT_RANK_ERROR);
                            }
                            Err(e)
                        }
                        Err(p) => {
                            let msg = failure::panic_message(p.as_ref());
                            ctx.comm().abort_gang("execute", &format!("panicked: {msg}"), EXIT_RANK_PANIC);
                            Err(Error::GangFailed {
                                rank: ctx.rank(),
                                stage: "execute".into(),
                                message: format!("panicked: {msg}"),
                            })
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank threads catch their panics")).collect()
    });
    // Report the root cause: the first rank whose own code failed, not a peer that merely
    // saw the abort.
    let mut first_gang_failure = None;
    let mut out = Vec::with_capacity(n);
    for r in results {
        match r {
            Ok(v) => out.push(v),
            Err(e @ Error::GangFailed { .. }) => {
                first_gang_failure.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match first_gang_failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
