//! `gang run`: validate, plan, spawn mpirun/srun, watch it, stop it on signals or a failed
//! rank, reap whatever is left, and report the root cause.

use crate::chatter;
use crate::detect::{self, LauncherChoice, SlurmAllocation};
use crate::heartbeat;
use crate::outcome;
use crate::plan::{self, LaunchPlan, LauncherKind, MpiFlavour, PlanInput, RankEnv};
use crate::ranks;
use crate::sys;
use anyhow::{bail, Context, Result};
use gang_protocol::heartbeat::Progress;
use gang_protocol::{hostname, signal_name, vars, ExitStatus, RunDir};
use signal_hook::iterator::Signals;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How to launch a gang: the options shared by `gang run` and the built-in jobs.
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchOptions {
    /// Number of ranks [default: inside a Slurm allocation its task count (SLURM_NTASKS);
    /// else one per visible GPU for a job that uses GPUs; else one per core].
    #[arg(short = 'n', long = "ranks", value_name = "N")]
    pub ranks: Option<usize>,
    /// Which launcher starts the ranks.
    #[arg(long, value_enum, default_value_t = LauncherChoice::Auto)]
    pub launcher: LauncherChoice,
    /// The mpirun (or mpiexec) of the MPI the program is built against, a path or a name
    /// on PATH, e.g. `mpiexec.mpich` for MPICH beside a default Open MPI [default:
    /// $GANG_MPIRUN, else mpirun on PATH]. Its `--version` tells Open MPI from MPICH; a
    /// program linked against the other MPI is refused.
    #[arg(long, value_name = "PATH")]
    pub mpirun: Option<PathBuf>,
    /// Hostfile for mpirun (Open MPI `--hostfile`, MPICH `-f`).
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
    /// GPUs for each rank (srun `--gpus-per-task`): Slurm gives each rank its own and sets
    /// its CUDA_VISIBLE_DEVICES. srun only; under mpirun bind GPUs through the device plan.
    #[arg(long, value_name = "N")]
    pub gpus_per_task: Option<u32>,
    /// How srun binds GPUs to ranks (srun `--gpu-bind`, e.g. `closest`, `single:1`). srun only.
    #[arg(long, value_name = "HOW")]
    pub gpu_bind: Option<String>,
    /// A GPU discovery script in Spark's format (prints `{"name": "gpu", "addresses":
    /// ["0", ...]}`; a Spark user's script works unchanged). Every rank runs it at start
    /// and its addresses are the GPUs the rank may use (`ctx.device()` is the rank's, by
    /// local rank among them); CUDA_VISIBLE_DEVICES, when set, still wins. Passed to the
    /// ranks as GANG_GPU_DISCOVERY_SCRIPT; `-n` left out counts its GPUs.
    #[arg(long, value_name = "SCRIPT")]
    pub gpu_discovery_script: Option<PathBuf>,
    /// Prefix every output line with `[rank R] ` (the default).
    #[arg(long, overrides_with = "no_tag_output")]
    pub tag_output: bool,
    /// Leave the ranks' output lines as they are.
    #[arg(long, overrides_with = "tag_output")]
    pub no_tag_output: bool,
    /// Directory under which the run directory is created [default: $GANG_RUN_ROOT, else
    /// ./.gang/runs].
    #[arg(long, value_name = "ROOT")]
    pub run_dir: Option<PathBuf>,
    /// Relaunch the whole gang up to K times when it fails transiently (a rank died,
    /// stalled or was killed, an MPI or I/O error, a panic, or the launcher failed). One
    /// budget for the whole job, not per node or rank. A failure its rank recorded as a
    /// usage or input failure is never restarted (a restart cannot mend it), nor is a gang
    /// stopped by SIGINT/SIGTERM.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub max_restarts: u32,
    /// Seconds to wait before the first restart; the wait doubles with every further
    /// restart, up to 30 s.
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    pub restart_backoff: Duration,
    /// Stop (and restart, if the budget allows) the gang when a rank that sends heartbeats
    /// has sent none, or a rank that reports progress has reported none, for this many
    /// seconds. Ranks of programs that do not use the gang library send nothing and are
    /// never checked. 0 turns stall detection off. A stall that is not restarted ends
    /// `gang` with exit code 124.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub stall_timeout: Duration,
    /// Stop (and restart, if the budget allows) the gang when not every rank has started
    /// this many seconds after mpirun/srun was started: a node the launcher cannot reach, a
    /// proxy that cannot call back (MPICH's hydra then waits forever), an allocation that
    /// never gives the CPUs. A rank has started when its supervisor is running. 0 waits
    /// forever. Ends `gang` with exit code 124 when not restarted.
    #[arg(long, value_name = "SECONDS", default_value = "300", value_parser = parse_seconds)]
    pub start_timeout: Duration,
    /// Every this many seconds, print how far the ranks have got, from the progress their
    /// heartbeats carry (`gang: 2m00s: train step 1180-1200 of 9600`; a map stage's
    /// partitions over all ranks), when it changed since the last line. 0 prints none.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub progress_every: Duration,
    /// Whole seconds Open MPI waits before it sends the ranks SIGTERM when it stops the gang
    /// (after a rank failed, or on SIGINT/SIGTERM to gang), and as long again before
    /// SIGKILL. 0, the default, stops them at once: gang's outputs and checkpoints are safe
    /// against SIGKILL at any point, and a restart begins sooner. Raise it for programs
    /// that clean up on SIGTERM. (Open MPI's mpirun; MPICH's hydra passes gang's SIGTERM
    /// on at once, and gang waits 5 s plus twice this before its SIGKILL.)
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub kill_grace: u32,
    /// The address of this host that ranks on other nodes send their heartbeats to (TCP).
    /// Used when ranks may run on other nodes (a --hostfile, or a Slurm allocation of
    /// several nodes); then, without it, every address of this host other than loopback is
    /// offered and each rank takes the first it reaches. Giving it also makes a gang of
    /// one node use TCP.
    #[arg(long, value_name = "IP")]
    pub heartbeat_address: Option<std::net::IpAddr>,
    /// Show everything mpirun/srun print (Open MPI's help banners, ORTE_ERROR_LOG lines,
    /// every rank's announcement of its failure). Without it they go to the run
    /// directory's launcher.log and the terminal gets the ranks' output and one root-cause
    /// line.
    #[arg(long)]
    pub verbose: bool,
}

/// Parses a non-negative number of seconds (fractions allowed).
///
/// # Errors
/// Not a number, negative, or not finite.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{s:?} is not a non-negative, finite number of seconds"))
}

/// Arguments of `gang run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// How to launch.
    #[command(flatten)]
    pub launch: LaunchOptions,
    /// The program each rank runs, and its arguments (after `--`).
    #[arg(last = true, required = true, num_args = 1.., value_name = "PROGRAM [ARGS]")]
    pub command: Vec<OsString>,
}

/// Grace between SIGTERM and SIGKILL when stopping the gang.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the launcher may keep running after a rank recorded a failure before gang
/// stops it (mpirun normally ends the job itself within a second or two).
const FAILURE_GRACE: Duration = Duration::from_secs(3);
/// How often the wait loop looks at the launcher and the heartbeat socket.
const POLL: Duration = Duration::from_millis(100);
/// How often the wait loop reads the run directory and checks for stalls.
const SCAN: Duration = Duration::from_millis(500);
/// How long the relay of the launcher's stderr may lag behind its exit.
const STDERR_DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Upper bound on waiting for SIGKILLed leftovers to disappear.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// Resolves the user program: through `PATH` when it has no slash, else relative to the
/// current directory. Returns an absolute path.
///
/// # Errors
/// Not found, not a file, or not executable, with what to do about it.
pub fn resolve_program(program: &OsStr, path_var: Option<&OsStr>, cwd: &Path) -> Result<PathBuf> {
    let shown = program.to_string_lossy();
    // `components()` drops inner `.` segments: `./tool` becomes `<cwd>/tool`.
    let absolute = |p: &Path| cwd.join(p).components().collect::<PathBuf>();
    let path = if program.as_encoded_bytes().contains(&b'/') {
        absolute(Path::new(program))
    } else {
        match detect::find_on_path(&shown, path_var) {
            Some(p) => return Ok(absolute(&p)),
            None => bail!(
                "program `{shown}` was not found on PATH: give its path (e.g. ./{shown}) or add \
                 its directory to PATH"
            ),
        }
    };
    let meta = path.metadata().with_context(|| {
        format!("program {shown} does not exist: check the path (it is resolved from {})", cwd.display())
    })?;
    if !meta.is_file() {
        bail!("program {shown} is not a file: give the path of an executable program");
    }
    if !detect::is_executable_file(&path) {
        bail!("program {shown} is not executable: make it so with `chmod +x {shown}`");
    }
    Ok(path)
}

/// `gang run`: starts `command` as a gang of `opts.ranks` ranks and returns the exit code.
///
/// # Errors
/// Anything that prevents the gang from starting (bad options, no launcher, ...). Failures
/// of the gang itself are reported through the exit code and a message on stderr.
pub fn run(opts: &LaunchOptions, command: &[OsString], uses_gpus: bool) -> Result<i32> {
    if opts.ranks == Some(0) {
        bail!("-n must be at least 1");
    }
    let Some((program, args)) = command.split_first() else { bail!("no program given after --") };
    let cwd = std::env::current_dir().context("the current directory is not accessible")?;
    let program = resolve_program(program, std::env::var_os("PATH").as_deref(), &cwd)?;
    let hostfile = match &opts.hostfile {
        Some(h) if !h.is_file() => {
            bail!("hostfile {} does not exist or is not a file", h.display())
        }
        Some(h) => Some(cwd.join(h)),
        None => None,
    };
    if let Some(script) = &opts.gpu_discovery_script {
        if !script.is_file() {
            bail!("GPU discovery script {} does not exist or is not a file", script.display());
        }
        // For every rank (forwarded below with the user's own GANG_* settings), before any
        // thread of this process starts.
        std::env::set_var(gang_protocol::vars::GPU_DISCOVERY_SCRIPT, cwd.join(script));
    }

    let slurm = SlurmAllocation::from_env();
    let path_var = std::env::var_os("PATH");
    let mpirun = detect::resolve_mpirun(
        opts.mpirun.as_deref().map(Path::as_os_str),
        std::env::var_os(detect::MPIRUN_VAR),
        path_var.as_deref(),
    )?;
    let (launcher, mut launcher_path) =
        detect::choose_launcher(opts.launcher, slurm.is_some(), detect::which("srun"), mpirun.clone())?;
    let linked = detect::linked_mpi(&program);
    let flavour = match (launcher, mpirun) {
        (LauncherKind::Mpirun, Some(mpirun)) => {
            let install = detect::probe_mpi(&mpirun)?;
            detect::check_program_mpi(&program, linked.as_ref(), &install, path_var.as_deref())?;
            launcher_path = install.mpirun;
            install.flavour
        }
        (LauncherKind::Mpirun, None) => unreachable!("choose_launcher found mpirun"),
        // srun's --mpi follows the program's MPI where its libraries tell it.
        (LauncherKind::Srun, mpirun) => match (&linked, mpirun) {
            (Some((flavour, _)), _) => *flavour,
            (None, Some(mpirun)) => detect::probe_mpi(&mpirun)?.flavour,
            (None, None) => {
                eprintln!(
                    "gang: neither the program's libraries nor an mpirun tell the MPI flavour; assuming \
                     Open MPI (srun --mpi=pmix)"
                );
                MpiFlavour::OpenMpi
            }
        },
    };
    let cpus = match (&slurm, launcher) {
        (Some(alloc), LauncherKind::Srun) => alloc.cpus().unwrap_or_else(|| detect::cores(None)),
        (alloc, _) => detect::cores(alloc.as_ref().and_then(|a| a.cpus_on_node).map(|n| n.to_string()).as_deref()),
    };
    // The GPUs a GPU job gets one rank each of when -n is left out. A discovery script is
    // run here too, so that a broken one is said once, before any rank starts.
    let gpus = match (uses_gpus && opts.ranks.is_none()) || opts.gpu_discovery_script.is_some() {
        true => ranks::visible_gpus().map_err(|e| anyhow::anyhow!("{e}"))?,
        false => 0,
    };
    let count = ranks::choose(opts.ranks, slurm.as_ref().and_then(|s| s.ntasks), uses_gpus, gpus, cpus);
    let n = count.ranks;

    let root = match (&opts.run_dir, std::env::var_os("GANG_RUN_ROOT")) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) if !r.is_empty() => PathBuf::from(r),
        _ => PathBuf::from(".gang/runs"),
    };
    let root = cwd.join(root);
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let run_id = format!("{secs}-{}", std::process::id());
    let run = RunDir::create(&root, &run_id).with_context(|| {
        format!(
            "could not create the run directory {}: pass --run-dir ROOT or set GANG_RUN_ROOT to \
             a writable directory",
            root.join(&run_id).display()
        )
    })?;
    let supervisor = std::env::current_exe().context("could not find the gang executable itself")?;
    // The user's GANG_* settings, for the ranks on every node (plain names only: mpirun's
    // `-x` reads some characters as patterns or lists).
    let plain = |k: &str| k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let mut forward: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("GANG_") && plain(k))
        .collect();
    forward.sort();
    let input = |attempt: u32, heartbeat: &str, token: &str| PlanInput {
        launcher,
        launcher_path: launcher_path.clone(),
        flavour,
        ranks: n,
        cpus,
        is_root: sys::effective_uid() == 0,
        hostfile: hostfile.clone(),
        gpus_per_task: opts.gpus_per_task,
        gpu_bind: opts.gpu_bind.clone(),
        supervisor: supervisor.clone(),
        tag_output: !opts.no_tag_output,
        kill_grace: opts.kill_grace,
        program: program.clone(),
        args: args.to_vec(),
        env: RankEnv {
            run_id: run_id.clone(),
            run_dir: run.path().to_path_buf(),
            world_size: n,
            attempt,
            launcher,
            flavour,
            heartbeat: heartbeat.to_string(),
            token: token.to_string(),
        },
        forward: forward.clone(),
    };
    // Fail on a bad plan (e.g. --hostfile with srun) before anything is started.
    plan::build(&input(0, "", ""))?;
    let log = match open_log(&run) {
        Ok(f) => Some(Arc::new(Mutex::new(f))),
        Err(e) => {
            eprintln!(
                "gang: warning: no launcher log in {} ({e}); mpirun's messages go to the terminal",
                run.path().display()
            );
            None
        }
    };
    if let Some(why) = &count.why {
        eprintln!("gang: {n} rank{} ({why})", if n == 1 { "" } else { "s" });
    }
    log_line(log.as_ref(), &format!("gang: {n} ranks ({})", count.why.as_deref().unwrap_or("-n given")));

    // Orphaned ranks are re-parented to us, so they can be found and killed below.
    if let Err(e) = sys::become_subreaper() {
        eprintln!("gang: warning: could not become a subreaper ({e}); orphaned ranks may be missed");
    }
    let signals =
        Signals::new([sys::SIGINT, sys::SIGTERM, sys::SIGHUP]).context("could not install signal handlers")?;
    let signals_handle = signals.handle();
    let (sig_tx, sig_rx) = mpsc::channel::<i32>();
    std::thread::spawn(move || {
        let mut signals = signals;
        for sig in signals.forever() {
            if sig_tx.send(sig).is_err() {
                break;
            }
        }
    });
    // Ranks on other nodes cannot reach a socket of this host's file system or loopback.
    let several_nodes = hostfile.is_some() || slurm.as_ref().and_then(|s| s.num_nodes).is_some_and(|k| k > 1);
    let bound = if several_nodes || opts.heartbeat_address.is_some() {
        heartbeat::Listener::bind_tcp(opts.heartbeat_address, &sys::host_addresses(), n)
    } else {
        heartbeat::Listener::bind(&run)
    };
    let listener = match bound {
        Ok(l) => {
            log_line(log.as_ref(), &format!("gang: heartbeats on {}", l.address()));
            Some(l)
        }
        Err(e) => {
            eprintln!("gang: warning: no heartbeat channel ({e}); stalled ranks will not be detected");
            None
        }
    };
    let (address, token) = match &listener {
        Some(l) => (l.address().to_string(), l.token().to_string()),
        None => (String::new(), String::new()),
    };
    // mpirun waits the kill grace before it sends the ranks SIGTERM and as long again before
    // SIGKILL: give it that time before stopping it by force.
    let stop_grace = STOP_GRACE + 2 * Duration::from_secs(u64::from(opts.kill_grace));
    let watch = Watch {
        sig_rx: &sig_rx,
        listener: listener.as_ref(),
        stall_timeout: opts.stall_timeout,
        start_timeout: opts.start_timeout,
        progress_every: opts.progress_every,
        stop_grace,
        verbose: opts.verbose || log.is_none(),
        log,
    };
    let code =
        attempts(opts, launcher, &run, &run_id, &watch, |attempt| plan::build(&input(attempt, &address, &token)));
    signals_handle.close();
    code
}

/// What every attempt is watched with.
struct Watch<'a> {
    sig_rx: &'a mpsc::Receiver<i32>,
    listener: Option<&'a heartbeat::Listener>,
    stall_timeout: Duration,
    start_timeout: Duration,
    /// How often the progress line is printed (zero: never).
    progress_every: Duration,
    /// From SIGTERM to the launcher to its SIGKILL.
    stop_grace: Duration,
    /// Show all of the launcher's stderr as it comes (see [`chatter`]).
    verbose: bool,
    /// The run directory's launcher log.
    log: Option<Log>,
}

/// The run directory's `launcher.log`, shared with the thread that relays mpirun's stderr.
type Log = Arc<Mutex<std::fs::File>>;

/// Name of the log, in the run directory, of everything mpirun/srun printed on stderr.
pub const LAUNCHER_LOG: &str = "launcher.log";

fn open_log(run: &RunDir) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(run.path().join(LAUNCHER_LOG))
}

/// Appends a line to the log (best effort: the log is an aid, not a record).
fn log_line(log: Option<&Log>, line: &str) {
    if let Some(log) = log {
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Copies the launcher's stderr, line by line, to the log and, unless [`chatter`] holds
/// it back, to our stderr; returns the filter with what it held.
fn relay_stderr(src: impl Read, verbose: bool, log: Option<Log>) -> chatter::Filter {
    let mut filter = chatter::Filter::new();
    let mut reader = BufReader::new(src);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return filter,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        if let Some(log) = &log {
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&line);
            }
        }
        let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        if verbose || filter.show(&text) {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&line);
            let _ = err.flush();
        }
    }
}

/// Copies the launcher's stdout (the ranks' output, and hydra's report of a failed rank)
/// line by line to our stdout, holding back what [`chatter::StdoutFilter`] recognises as
/// the launcher's; the held lines go to the log at the end. Returns the filter.
fn relay_stdout(src: impl Read, verbose: bool, log: Option<Log>) -> chatter::StdoutFilter {
    let mut filter = chatter::StdoutFilter::new();
    let mut reader = BufReader::new(src);
    let mut line = Vec::with_capacity(256);
    let mut out = std::io::BufWriter::new(std::io::stdout());
    loop {
        line.clear();
        let end = matches!(reader.read_until(b'\n', &mut line), Ok(0) | Err(_));
        let lines = match (end, verbose) {
            (true, _) => filter.finish(),
            (false, true) => vec![line.strip_suffix(b"\n").unwrap_or(&line).to_vec()],
            (false, false) => filter.take(line.strip_suffix(b"\n").unwrap_or(&line)),
        };
        for l in lines {
            let _ = out.write_all(&l);
            let _ = out.write_all(b"\n");
        }
        if end {
            let _ = out.flush();
            break;
        }
        // Flush whenever the input has nothing more waiting: lines are never held up.
        if reader.buffer().is_empty() {
            let _ = out.flush();
        }
    }
    if let Some(log) = &log {
        if let Ok(mut f) = log.lock() {
            for l in filter.held() {
                let _ = f.write_all(l);
                let _ = f.write_all(b"\n");
            }
        }
    }
    filter
}

/// Runs attempt after attempt until one succeeds, the user stops the gang, or the restart
/// budget is used up; prints the restarts and the summary; returns the exit code.
fn attempts(
    opts: &LaunchOptions,
    launcher: LauncherKind,
    run: &RunDir,
    run_id: &str,
    watch: &Watch<'_>,
    plan_for: impl Fn(u32) -> Result<LaunchPlan>,
) -> Result<i32> {
    let max = opts.max_restarts;
    let mut failed: Vec<outcome::FailedAttempt> = Vec::new();
    let mut attempt: u32 = 0;
    loop {
        let plan = plan_for(attempt)?;
        let this = run.clone().with_attempt(attempt);
        let ended = execute(&plan, launcher, &this, run_id, watch)?;
        let verdict = ended.verdict;
        if verdict.code == 0 {
            if !failed.is_empty() {
                eprintln!("{}", outcome::success_summary(&failed, max, attempt, run.path()));
            }
            return Ok(0);
        }
        let records = run.path();
        let Some(cause) = verdict.cause.clone() else {
            // Stopped by the user's signal: never restarted.
            if !failed.is_empty() {
                eprintln!("gang: not restarting: {}", outcome::history(&failed, failed.len(), max));
            }
            if let Some(m) = &verdict.message {
                eprintln!("{}", outcome::final_line(m, None, records));
            }
            return Ok(verdict.code);
        };
        let progress = match &cause {
            outcome::Cause::Stalled(_) => None,
            c => c.rank().and_then(|r| ended.progress.get(&r).cloned()),
        };
        let class = cause.class();
        failed.push(outcome::FailedAttempt { attempt, cause, progress });
        let restart = failed.len() as u32;
        // A signal that came while the attempt was ending also means: stop.
        let pending_signal = watch.sig_rx.try_recv().ok();
        if class.restartable() && restart <= max && ended.leftovers.is_empty() && pending_signal.is_none() {
            let delay = outcome::backoff(opts.restart_backoff, restart);
            let last = failed.last().expect("just pushed");
            eprintln!("{}", outcome::restart_line(last, delay, restart, max));
            if let Ok(sig) = watch.sig_rx.recv_timeout(delay) {
                eprintln!(
                    "gang: received {} while waiting to restart; not restarting. {}. Records: {}",
                    signal_name(sig),
                    outcome::history(&failed, failed.len() - 1, max),
                    records.display()
                );
                return Ok(128 + sig);
            }
            attempt += 1;
            continue;
        }
        // Not restarted: the history (if there were restarts) first, the root cause last.
        let message = verdict.message.clone().unwrap_or_else(|| format!("gang: attempt {attempt} failed"));
        let mut why_not = None;
        if let Some(sig) = pending_signal {
            why_not = Some(format!("received {}; not restarting", signal_name(sig)));
        } else if !ended.leftovers.is_empty() {
            why_not = Some(format!(
                "not restarting: rank processes {:?} of attempt {attempt} could not be stopped, and two \
                 gangs must never run at once",
                ended.leftovers
            ));
        } else if !class.restartable() {
            if failed.len() > 1 {
                eprintln!("gang: {}", outcome::history(&failed, failed.len() - 1, max));
            }
            // Said when a restart budget was given: without one, no restart was expected.
            if max > 0 {
                why_not = outcome::why_not_restarted(class);
            }
        } else if max > 0 {
            eprintln!("{}", outcome::exhausted_summary(&failed, max));
        }
        eprintln!("{}", outcome::final_line(&message, why_not.as_deref(), records));
        return Ok(match pending_signal {
            Some(sig) => 128 + sig,
            None => verdict.code,
        });
    }
}

/// How one attempt ended.
struct Ended {
    /// The verdict of [`outcome::judge`].
    verdict: outcome::Outcome,
    /// The last progress of every rank that reported some.
    progress: BTreeMap<usize, Progress>,
    /// Recorded rank processes on this host that were still running after cleanup.
    leftovers: Vec<u32>,
}

/// Why the wait loop is stopping the gang.
#[derive(Debug, Clone, Copy)]
enum StopReason {
    /// `gang` received this signal.
    Signal(i32),
    /// A rank recorded a failure but the launcher kept running.
    RankFailed,
    /// A rank stalled.
    Stalled,
    /// Only this many ranks had started when the start timeout ran out.
    NotStarted(usize),
}

/// Spawns the plan, waits for it while handling signals and watching heartbeats, cleans
/// up, judges.
fn execute(plan: &LaunchPlan, launcher: LauncherKind, run: &RunDir, run_id: &str, w: &Watch<'_>) -> Result<Ended> {
    let mut tracker = heartbeat::Tracker::new(w.listener.map_or("", |l| l.token()), run.attempt(), plan_world(plan));
    let mut cmd = Command::new(&plan.program);
    cmd.args(&plan.args).envs(plan.env.iter().map(|(k, v)| (k, v)));
    // Own process group: a terminal's Ctrl-C reaches only gang, which then stops the whole
    // group in order. A background group that reads the terminal would be stopped by
    // SIGTTIN (mpirun and srun read stdin to forward it), so a terminal stdin is not passed.
    cmd.process_group(0);
    // If gang itself is killed (even by SIGKILL), the launcher is told to stop the gang;
    // SIGTERM rather than SIGKILL so that mpirun/srun still clean up on remote nodes.
    sys::signal_child_when_we_die(&mut cmd, sys::SIGTERM);
    if std::io::stdin().is_terminal() {
        cmd.stdin(Stdio::null());
    }
    cmd.stderr(Stdio::piped());
    if plan.chatter_on_stdout {
        cmd.stdout(Stdio::piped());
    }
    let name = launcher.as_str();
    log_line(
        w.log.as_ref(),
        &format!(
            "== attempt {}: {} {}",
            run.attempt(),
            plan.program.display(),
            plan.args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
        ),
    );
    let mut child = cmd.spawn().with_context(|| format!("could not start {}", plan.program.display()))?;
    let pgid = child.id();
    let (relayed_tx, relayed) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        let (verbose, log) = (w.verbose, w.log.clone());
        std::thread::spawn(move || {
            let _ = relayed_tx.send(relay_stderr(stderr, verbose, log));
        });
    }
    let relayed_out = child.stdout.take().map(|stdout| {
        let (tx, rx) = mpsc::channel();
        let (verbose, log) = (w.verbose, w.log.clone());
        std::thread::spawn(move || {
            let _ = tx.send(relay_stdout(stdout, verbose, log));
        });
        rx
    });

    let (status, stop, stall) = watch(&mut child, pgid, w, run, &mut tracker)?;

    // Whatever is left of the launcher's process group, the recorded ranks on this host and
    // our orphaned descendants is a leftover of this gang.
    let _ = sys::signal_group(pgid, sys::SIGKILL);
    let leftovers = kill_recorded_ranks(run, run_id);
    kill_orphans();
    if let Some(l) = w.listener {
        l.drain(&mut tracker, Instant::now());
        let summary = tracker.summary();
        if let Err(e) = run.write_heartbeats(&summary) {
            eprintln!("gang: could not write the heartbeat summary: {e}");
        }
        if summary.wrong_token > 0 {
            eprintln!(
                "gang: warning: dropped {} heartbeat message{} without this run's token \
                 (attempt {})",
                summary.wrong_token,
                if summary.wrong_token == 1 { "" } else { "s" },
                run.attempt()
            );
        }
    }

    let launcher_status = match (status.code(), status.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(s)) => ExitStatus::Signal(s),
        (None, None) => ExitStatus::Code(1),
    };
    let failures = run.failures().unwrap_or_else(|e| {
        eprintln!("gang: could not read the failure records: {e}");
        Vec::new()
    });
    let exits = run.exits().unwrap_or_else(|e| {
        eprintln!("gang: could not read the exit records: {e}");
        Vec::new()
    });
    let stopped_by = match stop {
        Some(StopReason::Signal(s)) => Some(s),
        _ => None,
    };
    let hosts: std::collections::BTreeSet<String> =
        run.starts().unwrap_or_default().into_iter().map(|s| s.host).collect();
    let several_hosts = hosts.len() > 1;
    let mut stall = stall;
    if let (Some(s), false) = (stall.as_mut(), several_hosts) {
        s.host = None;
    }
    let verdict = match stop {
        // Ranks that never started record nothing; what mpirun said is in launcher.log.
        Some(StopReason::NotStarted(started)) if failures.is_empty() => {
            outcome::not_started(name, started, plan_world(plan), w.start_timeout.as_secs(), run.attempt())
        }
        _ => outcome::judge(
            several_hosts,
            stopped_by,
            stall.as_ref(),
            &failures,
            &exits,
            launcher_status,
            name,
            plan.exit_is_abort_code,
        ),
    };
    use outcome::Cause;
    let rank_failed = stopped_by.is_some()
        || matches!(verdict.cause, Some(Cause::Recorded { .. } | Cause::Exited { .. } | Cause::Stalled(_)));
    let recorded = matches!(verdict.cause, Some(Cause::Recorded { .. }));
    // Everything is dead by now, so the pipes are closed unless a process we could not find
    // still holds them.
    let stdout_held =
        relayed_out.and_then(|rx| rx.recv_timeout(STDERR_DRAIN_LIMIT).ok()).map(|f| f.release(rank_failed));
    if let Ok(filter) = relayed.recv_timeout(STDERR_DRAIN_LIMIT) {
        let mut err = std::io::stderr().lock();
        for line in filter.release(rank_failed, recorded).into_iter().chain(stdout_held.into_iter().flatten()) {
            let _ = writeln!(err, "{line}");
        }
    }
    if matches!(stop, Some(StopReason::RankFailed)) {
        eprintln!("gang: {name} did not end the gang after the failure; gang stopped it");
    }
    let progress = (0..plan_world(plan)).filter_map(|r| Some((r, tracker.progress_of(r)?.clone()))).collect();
    Ok(Ended { verdict, progress, leftovers })
}

/// The world size of a plan, from its `GANG_WORLD_SIZE`.
fn plan_world(plan: &LaunchPlan) -> usize {
    plan.env.iter().find(|(k, _)| k == vars::WORLD_SIZE).and_then(|(_, v)| v.to_str()?.parse().ok()).unwrap_or(0)
}

/// Waits for the launcher. On the first signal sends SIGTERM to its process group, on a
/// second signal or after [`STOP_GRACE`] (plus twice the kill grace) SIGKILL. Also stops
/// the gang when a rank recorded a failure and the launcher is still running
/// [`FAILURE_GRACE`] later, and when a rank stalls (see [`heartbeat`]).
fn watch(
    child: &mut Child,
    pgid: u32,
    w: &Watch<'_>,
    run: &RunDir,
    tracker: &mut heartbeat::Tracker,
) -> Result<(std::process::ExitStatus, Option<StopReason>, Option<heartbeat::Stall>)> {
    let mut stop: Option<StopReason> = None;
    let mut stall: Option<heartbeat::Stall> = None;
    let mut term_sent: Option<Instant> = None;
    let mut kill_sent = false;
    let mut failure_seen: Option<Instant> = None;
    let mut last_scan = Instant::now();
    let spawned = Instant::now();
    let world = tracker.world();
    let mut all_started = false;
    let (mut last_progress, mut last_line) = (Instant::now(), None::<String>);
    loop {
        if let Some(status) = child.try_wait().context("could not wait for the launcher")? {
            return Ok((status, stop, stall));
        }
        match w.sig_rx.recv_timeout(POLL) {
            Ok(sig) if term_sent.is_none() => {
                stop = Some(StopReason::Signal(sig));
                term_sent = Some(Instant::now());
                let _ = sys::signal_group(pgid, sys::SIGTERM);
            }
            Ok(sig) if !kill_sent => {
                // A second signal: the user wants it gone now.
                if !matches!(stop, Some(StopReason::Signal(_))) {
                    stop = Some(StopReason::Signal(sig));
                }
                kill_sent = true;
                let _ = sys::signal_group(pgid, sys::SIGKILL);
            }
            // A user's signal always wins over a stall or failure: it must not be restarted.
            Ok(sig) if !matches!(stop, Some(StopReason::Signal(_))) => {
                stop = Some(StopReason::Signal(sig));
            }
            _ => {}
        }
        if let Some(l) = w.listener {
            l.drain(tracker, Instant::now());
        }
        if last_scan.elapsed() >= SCAN {
            last_scan = Instant::now();
            let failed_record = run.failures().map(|f| !f.is_empty()).unwrap_or(false);
            let exits = run.exits().unwrap_or_default();
            for e in &exits {
                tracker.rank_finished(e.rank);
            }
            if failure_seen.is_none() && (failed_record || exits.iter().any(|e| !e.status.success())) {
                failure_seen = Some(Instant::now());
            }
            if !all_started {
                let started = run.starts().map(|s| s.len()).unwrap_or(0);
                all_started = started >= world;
                let late = !w.start_timeout.is_zero() && spawned.elapsed() >= w.start_timeout;
                if !all_started && late && term_sent.is_none() && failure_seen.is_none() {
                    eprintln!(
                        "gang: only {started} of {world} ranks started within {} s; stopping the gang",
                        w.start_timeout.as_secs()
                    );
                    stop = Some(StopReason::NotStarted(started));
                    term_sent = Some(Instant::now());
                    let _ = sys::signal_group(pgid, sys::SIGTERM);
                }
            }
            if term_sent.is_none() && !w.progress_every.is_zero() && last_progress.elapsed() >= w.progress_every {
                last_progress = Instant::now();
                if let Some(line) = tracker.progress_line().filter(|l| last_line.as_ref() != Some(l)) {
                    eprintln!("gang: {}: {line}", heartbeat::elapsed(spawned.elapsed()));
                    last_line = Some(line);
                }
            }
            if term_sent.is_none() {
                if let Some(s) = tracker.check(Instant::now(), w.stall_timeout) {
                    eprintln!("gang: {s}; stopping the gang");
                    stall = Some(s);
                    stop = Some(StopReason::Stalled);
                    term_sent = Some(Instant::now());
                    let _ = sys::signal_group(pgid, sys::SIGTERM);
                }
            }
        }
        if term_sent.is_none() && failure_seen.is_some_and(|t| t.elapsed() >= FAILURE_GRACE) {
            stop = Some(StopReason::RankFailed);
            term_sent = Some(Instant::now());
            let _ = sys::signal_group(pgid, sys::SIGTERM);
        }
        if !kill_sent && term_sent.is_some_and(|t| t.elapsed() >= w.stop_grace) {
            kill_sent = true;
            let _ = sys::signal_group(pgid, sys::SIGKILL);
        }
    }
}

/// SIGKILLs every supervisor and rank program recorded as started on this host that is
/// still running, then waits (bounded) until they are gone. A pid counts as ours only if
/// its environment carries this run's id, so a reused pid is never hit. Returns those
/// still running at the end.
fn kill_recorded_ranks(run: &RunDir, run_id: &str) -> Vec<u32> {
    let starts = match run.starts() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gang: could not read the start records to clean up: {e}");
            return Vec::new();
        }
    };
    let host = hostname();
    let marker = format!("{}={run_id}", vars::RUN_ID);
    let ours: Vec<u32> = starts
        .iter()
        .filter(|s| s.host == host)
        .flat_map(|s| [s.supervisor_pid, s.pid])
        .filter(|&pid| sys::is_running(pid) && sys::environ_has(pid, &marker))
        .collect();
    for &pid in &ours {
        let _ = sys::send_signal(pid, sys::SIGKILL);
    }
    let deadline = Instant::now() + REAP_LIMIT;
    while ours.iter().any(|&p| sys::is_running(p)) && Instant::now() < deadline {
        while sys::reap_one_child().is_some() {}
        std::thread::sleep(Duration::from_millis(10));
    }
    ours.into_iter().filter(|&p| sys::is_running(p)).collect()
}

/// SIGKILLs and reaps every remaining descendant that was re-parented to us (we are their
/// subreaper), until none is left or [`REAP_LIMIT`] has passed.
fn kill_orphans() {
    let me = std::process::id();
    let deadline = Instant::now() + REAP_LIMIT;
    loop {
        while sys::reap_one_child().is_some() {}
        let left = sys::children_of(me);
        if left.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in left {
            if sys::is_running(pid) {
                let _ = sys::send_signal(pid, sys::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn programs_resolve_through_path_or_relative_to_cwd() {
        let dir = std::env::temp_dir().join(format!("gang-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let noexec = dir.join("data.txt");
        std::fs::write(&noexec, "x").unwrap();
        let path = dir.as_os_str();

        assert_eq!(resolve_program("tool".as_ref(), Some(path), Path::new("/")).unwrap(), exe);
        assert_eq!(resolve_program("./tool".as_ref(), None, &dir).unwrap(), exe);
        let err = resolve_program("nope".as_ref(), Some(path), &dir).unwrap_err().to_string();
        assert!(err.contains("`nope` was not found on PATH"), "{err}");
        let err = resolve_program("./data.txt".as_ref(), None, &dir).unwrap_err().to_string();
        assert!(err.contains("is not executable") && err.contains("chmod +x"), "{err}");
        let err = resolve_program("./missing".as_ref(), None, &dir).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = resolve_program(dir.as_os_str(), None, &dir).unwrap_err().to_string();
        assert!(err.contains("is not a file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
