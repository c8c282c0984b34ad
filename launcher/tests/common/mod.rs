//! Helpers shared by the launcher's integration tests: a temp dir, a `gang` process with a
//! hang guard that kills it (and everything it started) on drop, and `/proc` readers.
#![allow(dead_code)] // each test file uses a different subset

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any single `gang` invocation may take before the test calls it hung.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// The `gang` binary under test.
pub fn gang() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gang"))
}

/// The MPI launcher `gang` uses in these tests: `$GANG_MPIRUN` (a path or a name on PATH,
/// e.g. `mpiexec.mpich` for the MPICH pass of `./dev test`), else `mpirun`.
pub fn mpirun() -> PathBuf {
    let name = PathBuf::from(std::env::var_os("GANG_MPIRUN").filter(|v| !v.is_empty()).unwrap_or("mpirun".into()));
    if name.components().count() > 1 {
        return name;
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(&name)).find(|p| p.is_file()))
        .unwrap_or(name)
}

/// Fails loudly when the MPI launcher is missing: these tests exist to run the real thing.
pub fn require_mpirun() {
    let m = mpirun();
    assert!(
        m.is_file(),
        "these tests need mpirun on PATH (apt-get install openmpi-bin libopenmpi-dev) or GANG_MPIRUN \
         naming an MPI launcher; {} is not there",
        m.display()
    );
}

/// Whether the MPI launcher is MPICH's hydra (its `--version` says so), not Open MPI's.
pub fn mpi_is_mpich() -> bool {
    static MPICH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MPICH.get_or_init(|| {
        require_mpirun();
        let out = Command::new(mpirun()).arg("--version").output().expect("mpirun --version");
        String::from_utf8_lossy(&out.stdout).contains("HYDRA")
    })
}

/// The `GANG_MPI` value the launcher sets for [`mpirun`]'s MPI.
pub fn gang_mpi() -> &'static str {
    if mpi_is_mpich() {
        "mpich"
    } else {
        "openmpi"
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("gang-launcher-test-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        kill_processes_mentioning(&self.0.to_string_lossy());
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `gang` whose output is collected; on drop it is SIGKILLed together with every
/// process whose environment mentions `marker` (the run-dir root), so a failing test never
/// leaves a gang behind.
pub struct GangProcess {
    child: Child,
    marker: String,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
}

/// What a finished `gang` did.
#[derive(Debug)]
pub struct Finished {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

impl GangProcess {
    /// Starts `cmd` (a `gang` command) with captured output; `marker` identifies its
    /// processes for cleanup.
    pub fn spawn(mut cmd: Command, marker: &Path) -> GangProcess {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // A program this test process has just written (a copy of gang, a stand-in
        // gang-rank) can be briefly "busy" while another test thread's fork still holds
        // the write descriptor open; that clears as soon as that child execs.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r.expect("could not start gang"),
            }
        };
        let out = Some(collect(child.stdout.take().unwrap()));
        let err = Some(collect(child.stderr.take().unwrap()));
        GangProcess { child, marker: marker.to_string_lossy().into_owned(), out, err }
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for it to end, panicking (and, through drop, killing it) after [`HANG_GUARD`].
    pub fn wait(mut self) -> Finished {
        let deadline = Instant::now() + HANG_GUARD;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "gang did not finish within {HANG_GUARD:?}: hung");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = String::from_utf8_lossy(&self.out.take().unwrap().join().unwrap()).into_owned();
        let stderr = String::from_utf8_lossy(&self.err.take().unwrap().join().unwrap()).into_owned();
        Finished { code: status.code(), stdout, stderr }
    }
}

impl Drop for GangProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        kill_processes_mentioning(&self.marker);
    }
}

/// Runs a `gang` command to completion under the hang guard.
pub fn run_gang(args: &[&str], marker: &Path) -> Finished {
    let mut cmd = Command::new(gang());
    cmd.args(args);
    GangProcess::spawn(cmd, marker).wait()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string));
    !matches!(state.as_deref(), Some("Z") | Some("X") | None)
}

/// Running processes whose initial environment contains `needle` (as a byte substring).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && is_running(pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILLs every process from [`processes_mentioning`].
pub fn kill_processes_mentioning(needle: &str) {
    for pid in processes_mentioning(needle) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
}

/// The single run directory created under `root`, once it exists.
pub fn run_dir_under(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.is_dir())
}

/// `(supervisor_pid, pid)` of every start record of attempt 0 in `run_dir`.
pub fn started_pids(run_dir: &Path) -> Vec<(u32, u32)> {
    started_pids_of(run_dir, 0)
}

/// The attempt directories (`attempt-<k>`) of `run_dir`, as sorted attempt numbers.
pub fn attempts(run_dir: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir(run_dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("attempt-")?.parse().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Asserts that no process of any attempt of the run is still running.
pub fn assert_all_attempts_gone(run_dir: &Path) {
    for a in attempts(run_dir) {
        for (sup, pid) in started_pids_of(run_dir, a) {
            assert!(!is_running(sup), "supervisor {sup} of attempt {a} is still running");
            assert!(!is_running(pid), "rank program {pid} of attempt {a} is still running");
        }
    }
    assert_gang_gone(run_dir);
}

/// `(supervisor_pid, pid)` of every start record of attempt `attempt` in `run_dir`.
pub fn started_pids_of(run_dir: &Path, attempt: u32) -> Vec<(u32, u32)> {
    let ranks = run_dir.join(format!("attempt-{attempt}")).join("ranks");
    let Ok(entries) = fs::read_dir(ranks) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".start.json"))
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&fs::read(e.path()).unwrap()).unwrap();
            (v["supervisor_pid"].as_u64().unwrap() as u32, v["pid"].as_u64().unwrap() as u32)
        })
        .collect()
}

/// Asserts that no process of the run (supervisors, rank programs, mpirun) is still running.
pub fn assert_gang_gone(run_dir: &Path) {
    let starts = started_pids(run_dir);
    assert!(!starts.is_empty(), "no start records in {}", run_dir.display());
    for (sup, pid) in starts {
        assert!(!is_running(sup), "supervisor {sup} is still running");
        assert!(!is_running(pid), "rank program {pid} is still running");
    }
    let run_id = run_dir.file_name().unwrap().to_string_lossy();
    let left = processes_mentioning(&format!("GANG_RUN_ID={run_id}"));
    assert!(left.is_empty(), "processes of run {run_id} still running: {left:?}");
}

/// Output lines, sorted (ranks print in any order).
pub fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}
