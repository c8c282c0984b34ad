//! What the `gang` launcher and the rank processes of a gang agree on.
//!
//! The launcher never links MPI and the ranks never talk to the launcher through MPI, so the
//! contract between them is this crate: the names of the environment variables the launcher
//! sets ([`vars`]), the layout of the run directory and the JSON records written into it
//! ([`RunDir`]), and the rank-to-device plan ([`device`]) that `gang info` prints and each
//! rank applies.
//!
//! ```
//! use gang_protocol::{RunDir, FailureRecord, FailureKind};
//!
//! let root = std::env::temp_dir().join(format!("gang-protocol-doc-{}", std::process::id()));
//! let run = RunDir::create(&root, "run-1").unwrap();
//! let rec = FailureRecord::now(2, 0, FailureKind::Error, "input.parquet: bad magic".into());
//! run.write_failure(&rec).unwrap();
//! let failures = run.failures().unwrap();
//! assert_eq!(failures[0].rank, 2);
//! # std::fs::remove_dir_all(&root).unwrap();
//! ```
#![forbid(unsafe_code)]

pub mod device;
pub mod durable;
pub mod heartbeat;

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variables the launcher sets for every rank.
pub mod vars {
    /// Unique id of the run (one `gang run` invocation, all attempts).
    pub const RUN_ID: &str = "GANG_RUN_ID";
    /// Absolute path of the run directory.
    pub const RUN_DIR: &str = "GANG_RUN_DIR";
    /// The world size the launcher asked for; ranks check MPI's size against it.
    pub const WORLD_SIZE: &str = "GANG_WORLD_SIZE";
    /// Attempt number, 0 for the first launch of the gang.
    pub const ATTEMPT: &str = "GANG_ATTEMPT";
    /// Which launcher started the ranks: `mpirun` or `srun`.
    pub const LAUNCHER: &str = "GANG_LAUNCHER";
    /// The MPI flavour the launcher detected: `openmpi` or `mpich`.
    pub const MPI_FLAVOUR: &str = "GANG_MPI";
    /// Where ranks send heartbeats: `unix:/path` or `udp:127.0.0.1:PORT` (see
    /// [`crate::heartbeat::Address`]); empty when the launcher has no heartbeat channel.
    pub const HEARTBEAT: &str = "GANG_HEARTBEAT";
    /// The run's secret token, which every heartbeat must carry.
    pub const TOKEN: &str = "GANG_TOKEN";
    /// A Spark GPU discovery script (`--gpu-discovery-script`) whose addresses are the
    /// rank's visible GPUs unless `CUDA_VISIBLE_DEVICES` is set (see
    /// [`crate::device::VisibleDevices::from_env`]). Set only when given, so not in [`ALL`].
    pub const GPU_DISCOVERY_SCRIPT: &str = "GANG_GPU_DISCOVERY_SCRIPT";
    /// All variable names above, for forwarding them to remote nodes (`mpirun -x`).
    pub const ALL: [&str; 8] = [RUN_ID, RUN_DIR, WORLD_SIZE, ATTEMPT, LAUNCHER, MPI_FLAVOUR, HEARTBEAT, TOKEN];
}

/// Why a rank failed, as the rank itself saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The rank's code panicked.
    Panic,
    /// The rank's code returned an error.
    Error,
}

/// Whether a restart of the gang can mend a failure: what the launcher's restart policy
/// reads from a rank's [`FailureRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureClass {
    /// Options or arguments that cannot work: the same command fails the same way again.
    Usage,
    /// A bad input file or dataset: it fails the same way until the input is fixed.
    Input,
    /// A rank died or stalled, an MPI or I/O error, a panic: a restart may succeed.
    #[default]
    Transient,
}

impl FailureClass {
    /// Whether restarting the gang can help.
    pub fn restartable(self) -> bool {
        matches!(self, FailureClass::Transient)
    }

    /// `usage`, `input` or `transient`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Usage => "usage",
            FailureClass::Input => "input",
            FailureClass::Transient => "transient",
        }
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Written by a rank (through the `gang` library) just before it aborts the gang.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// World rank of the failing process.
    pub rank: usize,
    /// Attempt number of the gang.
    pub attempt: u32,
    /// Panic or error.
    pub kind: FailureKind,
    /// Whether a restart can help (records of older versions read as transient).
    #[serde(default)]
    pub class: FailureClass,
    /// The error or panic message, with its location where known.
    pub message: String,
    /// Host name of the rank.
    pub host: String,
    /// Process id of the rank.
    pub pid: u32,
    /// Wall-clock time of the failure, nanoseconds since the Unix epoch.
    pub time_unix_ns: u128,
}

impl FailureRecord {
    /// A record stamped with the current time, host and process id.
    pub fn now(rank: usize, attempt: u32, kind: FailureKind, message: String) -> Self {
        FailureRecord {
            rank,
            attempt,
            kind,
            class: FailureClass::Transient,
            message,
            host: hostname(),
            pid: std::process::id(),
            time_unix_ns: now_unix_ns(),
        }
    }

    /// The same record with `class` (the default is [`FailureClass::Transient`]).
    pub fn with_class(mut self, class: FailureClass) -> Self {
        self.class = class;
        self
    }
}

/// How a rank process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Whether this is a clean exit (code 0).
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signal(s) => write!(f, "was killed by signal {s} ({})", signal_name(*s)),
        }
    }
}

/// Conventional name of a Linux signal number.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// Written by the per-rank supervisor of the launcher when the rank process ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// World rank.
    pub rank: usize,
    /// Attempt number of the gang.
    pub attempt: u32,
    /// Process id of the rank program.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
    /// Host name.
    pub host: String,
    /// Wall-clock time of the exit, nanoseconds since the Unix epoch.
    pub time_unix_ns: u128,
}

/// Written by the per-rank supervisor when the rank program has started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartRecord {
    /// World rank.
    pub rank: usize,
    /// Attempt number of the gang.
    pub attempt: u32,
    /// Process id of the supervisor.
    pub supervisor_pid: u32,
    /// Process id of the rank program.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// Wall-clock time of the start, nanoseconds since the Unix epoch.
    pub time_unix_ns: u128,
}

/// What the launcher heard on the heartbeat channel during one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatSummary {
    /// Attempt number.
    pub attempt: u32,
    /// One entry per rank that sent at least one accepted heartbeat, by rank.
    pub ranks: Vec<RankHeartbeats>,
    /// Messages dropped because they did not carry the run's token.
    pub wrong_token: u64,
    /// Messages dropped because they were not heartbeats (or too long).
    pub malformed: u64,
    /// Messages with the right token from another attempt or an out-of-range rank.
    pub stale: u64,
}

/// What one rank sent during an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankHeartbeats {
    /// World rank.
    pub rank: usize,
    /// Process id from its heartbeats.
    pub pid: u32,
    /// Accepted heartbeats.
    pub beats: u64,
    /// Its latest progress.
    pub progress: Option<heartbeat::Progress>,
}

/// Layout of a run directory:
///
/// ```text
/// <root>/<run_id>/
///     heartbeat.sock                        the launcher's heartbeat socket (while it runs)
///     attempt-<k>/heartbeats.json           HeartbeatSummary, written by the launcher
///     attempt-<k>/failures/rank-<r>.json   FailureRecord, written by a failing rank
///     attempt-<k>/ranks/rank-<r>.start.json StartRecord, written by the rank supervisor
///     attempt-<k>/ranks/rank-<r>.exit.json  ExitRecord, written by the rank supervisor
/// ```
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
    attempt: u32,
}

impl RunDir {
    /// Creates `<root>/<run_id>` (and its parents) with owner-only permissions.
    pub fn create(root: &Path, run_id: &str) -> io::Result<RunDir> {
        let path = root.join(run_id);
        fs::create_dir_all(&path)?;
        set_owner_only(&path)?;
        Ok(RunDir { path, attempt: 0 })
    }

    /// Opens an existing run directory (as ranks do, from `GANG_RUN_DIR`).
    pub fn open(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into(), attempt: 0 }
    }

    /// The run directory for records of attempt `attempt`.
    pub fn with_attempt(mut self, attempt: u32) -> RunDir {
        self.attempt = attempt;
        self
    }

    /// The attempt this handle reads and writes records for.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Path of the run directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn attempt_dir(&self) -> PathBuf {
        self.path.join(format!("attempt-{}", self.attempt))
    }

    fn failures_dir(&self) -> PathBuf {
        self.attempt_dir().join("failures")
    }

    fn ranks_dir(&self) -> PathBuf {
        self.attempt_dir().join("ranks")
    }

    /// Records why `rec.rank` failed. Atomic: readers see the whole record or none.
    pub fn write_failure(&self, rec: &FailureRecord) -> io::Result<()> {
        write_json(&self.failures_dir(), &format!("rank-{}.json", rec.rank), rec)
    }

    /// Records that the rank program started.
    pub fn write_start(&self, rec: &StartRecord) -> io::Result<()> {
        write_json(&self.ranks_dir(), &format!("rank-{}.start.json", rec.rank), rec)
    }

    /// Records how the rank program ended.
    pub fn write_exit(&self, rec: &ExitRecord) -> io::Result<()> {
        write_json(&self.ranks_dir(), &format!("rank-{}.exit.json", rec.rank), rec)
    }

    /// Where the launcher's heartbeat socket lives.
    pub fn heartbeat_socket(&self) -> PathBuf {
        self.path.join(heartbeat::SOCKET_NAME)
    }

    /// Records what the launcher heard from the ranks during this attempt.
    pub fn write_heartbeats(&self, summary: &HeartbeatSummary) -> io::Result<()> {
        write_json(&self.attempt_dir(), "heartbeats.json", summary)
    }

    /// The heartbeat summary of this attempt, if the launcher wrote one.
    pub fn heartbeats(&self) -> io::Result<Option<HeartbeatSummary>> {
        match fs::read(self.attempt_dir().join("heartbeats.json")) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Failure records of this attempt, earliest first.
    pub fn failures(&self) -> io::Result<Vec<FailureRecord>> {
        let mut v: Vec<FailureRecord> = read_all(&self.failures_dir(), ".json")?;
        v.sort_by_key(|r| (r.time_unix_ns, r.rank));
        Ok(v)
    }

    /// Start records of this attempt, by rank.
    pub fn starts(&self) -> io::Result<Vec<StartRecord>> {
        let mut v: Vec<StartRecord> = read_all(&self.ranks_dir(), ".start.json")?;
        v.sort_by_key(|r| r.rank);
        Ok(v)
    }

    /// Exit records of this attempt, earliest first.
    pub fn exits(&self) -> io::Result<Vec<ExitRecord>> {
        let mut v: Vec<ExitRecord> = read_all(&self.ranks_dir(), ".exit.json")?;
        v.sort_by_key(|r| (r.time_unix_ns, r.rank));
        Ok(v)
    }
}

fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    Ok(durable::write_file(&dir.join(name), &bytes)?)
}

fn read_all<T: for<'de> Deserialize<'de>>(dir: &Path, suffix: &str) -> io::Result<Vec<T>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(suffix) {
            continue;
        }
        // `.exit.json` also ends with `.json`: keep the suffixes apart.
        if suffix == ".json" && (name.ends_with(".start.json") || name.ends_with(".exit.json")) {
            continue;
        }
        let bytes = fs::read(entry.path())?;
        let rec = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", entry.path().display())))?;
        out.push(rec);
    }
    Ok(out)
}

#[cfg(unix)]
fn set_owner_only(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn set_owner_only(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// Nanoseconds since the Unix epoch.
pub fn now_unix_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Short host name of this machine (`/proc/sys/kernel/hostname`, then `$HOSTNAME`).
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("gang-rundir-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn records_round_trip_per_attempt_and_sort_by_time() {
        let root = temp_root("roundtrip");
        let run = RunDir::create(&root, "r").unwrap().with_attempt(1);
        let mut late = FailureRecord::now(3, 1, FailureKind::Panic, "late".into());
        late.time_unix_ns = 20;
        let mut early = FailureRecord::now(1, 1, FailureKind::Error, "early".into());
        early.time_unix_ns = 10;
        run.write_failure(&late).unwrap();
        run.write_failure(&early).unwrap();
        run.write_exit(&ExitRecord {
            rank: 1,
            attempt: 1,
            pid: 7,
            status: ExitStatus::Code(3),
            host: "h".into(),
            time_unix_ns: 11,
        })
        .unwrap();
        let f = run.failures().unwrap();
        assert_eq!(f.iter().map(|r| r.rank).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(run.exits().unwrap()[0].status, ExitStatus::Code(3));
        assert!(run.starts().unwrap().is_empty());
        // Attempt 0 holds nothing.
        assert!(RunDir::open(run.path()).failures().unwrap().is_empty());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn run_dir_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_root("perm");
        let run = RunDir::create(&root, "r").unwrap();
        let mode = fs::metadata(run.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn exit_status_reads_well() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exited with code 3");
        assert_eq!(ExitStatus::Signal(9).to_string(), "was killed by signal 9 (SIGKILL)");
    }
}
