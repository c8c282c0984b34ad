//! Heartbeats and stalls, with real processes: this test binary re-runs itself as the rank
//! program (`rank_program`, selected by `GANG_TEST_HB_MODE`) and speaks the heartbeat
//! protocol through `gang_protocol::heartbeat`, as the gang library does.

mod common;

use common::{assert_all_attempts_gone, attempts, gang, require_mpirun, run_dir_under, GangProcess, TempDir};
use gang_protocol::heartbeat::{Address, Heartbeat, HeartbeatSender, Progress};
use gang_protocol::{vars, RunDir};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MODE: &str = "GANG_TEST_HB_MODE";
const TICK: Duration = Duration::from_millis(200);

/// A rank's heartbeat client, set up from the launcher's variables.
struct Client {
    sender: HeartbeatSender,
    beat: Heartbeat,
    updates: u64,
}

impl Client {
    fn from_env() -> Client {
        let get = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
        let addr = Address::parse(&get(vars::HEARTBEAT)).unwrap();
        // Open MPI's mpirun sets the one, MPICH's hydra the other.
        let rank = std::env::var("OMPI_COMM_WORLD_RANK").unwrap_or_else(|_| get("PMI_RANK")).parse().unwrap();
        let attempt = get(vars::ATTEMPT).parse().unwrap();
        Client {
            sender: HeartbeatSender::connect(&addr).unwrap(),
            beat: Heartbeat::new(&get(vars::TOKEN), rank, attempt, std::process::id()),
            updates: 0,
        }
    }

    /// One heartbeat; `step` is a new progress report when given, else the old one is
    /// repeated (the main thread made none).
    fn send(&mut self, step: Option<u64>) {
        if let Some(step) = step {
            self.updates += 1;
            self.beat.progress =
                Some(Progress { step, total: 10, what: "test".into(), updates: self.updates, waiting: false });
        }
        self.sender.send(&self.beat).unwrap();
        self.beat.seq += 1;
    }
}

/// The rank program. Without `GANG_TEST_HB_MODE` (a plain `cargo test`), checks that the
/// client's datagrams decode on a local socket.
#[test]
fn rank_program() {
    let Ok(mode) = std::env::var(MODE) else {
        let dir = TempDir::new("hb-client");
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut c = Client {
            sender: HeartbeatSender::connect(&Address::Unix(path)).unwrap(),
            beat: Heartbeat::new("t", 1, 0, 7),
            updates: 0,
        };
        c.send(Some(4));
        let mut buf = [0u8; 4096];
        let n = listener.recv(&mut buf).unwrap();
        let got = Heartbeat::decode(&buf[..n]).unwrap();
        assert_eq!((got.rank, got.progress.unwrap().step), (1, 4));
        return;
    };
    let mut c = Client::from_env();
    let (rank, attempt) = (c.beat.rank, c.beat.attempt);
    if attempt > 0 {
        for step in 0..=10 {
            c.send(Some(step));
            std::thread::sleep(TICK / 4);
        }
        std::process::exit(0);
    }
    match (mode.as_str(), rank) {
        ("silence", 1) => {
            for step in 0..5 {
                c.send(Some(step));
                std::thread::sleep(TICK);
            }
            // Note when the silence began, for the test to time the detection.
            let run = std::env::var(vars::RUN_DIR).unwrap();
            let now = gang_protocol::now_unix_ns().to_string();
            std::fs::write(Path::new(&run).join("silent-since"), now).unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        ("hang", 1) => {
            // The heartbeat thread goes on; the main thread stopped reporting at step 3.
            c.send(Some(3));
            for _ in 0..300 {
                std::thread::sleep(TICK);
                c.send(None);
            }
        }
        ("progress", _) => {
            // Steps 0..=10 of 10 over about 2 s, then done.
            for step in 0..=10 {
                c.send(Some(step));
                std::thread::sleep(TICK);
            }
            std::process::exit(0);
        }
        ("wrong-token", _) => {
            let good = c.beat.token.clone();
            c.beat.token = "not-the-token".into();
            for _ in 0..3 {
                c.send(None);
            }
            c.beat.token = good;
            c.send(Some(10));
            std::process::exit(0);
        }
        _ => {
            // A healthy rank: progress every tick, for longer than any test waits.
            for step in 0..300 {
                c.send(Some(step % 9));
                std::thread::sleep(TICK);
            }
        }
    }
    std::process::exit(1);
}

/// Runs `gang run -n 2 EXTRA -- <this test binary as rank_program>` in mode `mode`.
fn run_mode(dir: &TempDir, mode: &str, extra: &[&str]) -> (common::Finished, std::path::PathBuf) {
    require_mpirun();
    let root = dir.path().join("runs");
    let me = std::env::current_exe().unwrap();
    let mut cmd = Command::new(gang());
    cmd.args(["run", "-n", "2", "--run-dir", root.to_str().unwrap()])
        .args(extra)
        .arg("--")
        .arg(me)
        .args(["rank_program", "--exact", "--nocapture", "--test-threads=1"])
        .env(MODE, mode);
    let out = GangProcess::spawn(cmd, dir.path()).wait();
    let run = run_dir_under(&root).expect("no run directory");
    (out, run)
}

#[test]
fn a_silent_rank_is_detected_killed_and_restarted() {
    let dir = TempDir::new("hb-silence");
    let (out, run) =
        run_mode(&dir, "silence", &["--stall-timeout", "2", "--max-restarts", "1", "--restart-backoff", "0"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "gang: attempt 0 failed: rank 1 stalled (no heartbeat for 2 s, last progress: test \
             step 4 of 10); restarting in 0 s (restart 1 of 1)"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("restarted (1 of 1); attempt 1 succeeded"), "{}", out.stderr);
    // Detected, killed and restarted within the timeout plus a few seconds: attempt 1's
    // ranks started by then.
    let silent: u128 = std::fs::read_to_string(run.join("silent-since")).unwrap().parse().unwrap();
    let starts = RunDir::open(&run).with_attempt(1).starts().unwrap();
    let restarted = starts.iter().map(|s| s.time_unix_ns).min().expect("attempt 1 started");
    let took = Duration::from_nanos((restarted - silent) as u64);
    assert!(took < Duration::from_secs(2 + 4), "the restart came {took:?} after the silence");
    let hb = RunDir::open(&run).with_attempt(0).heartbeats().unwrap().unwrap();
    assert_eq!(hb.ranks.iter().map(|r| r.rank).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(hb.wrong_token, 0);
    assert_eq!(attempts(&run), [0, 1]);
    assert_all_attempts_gone(&run);
}

#[test]
fn a_rank_without_progress_is_a_stall_and_exits_124_without_budget() {
    let dir = TempDir::new("hb-hang");
    let started = Instant::now();
    let (out, run) = run_mode(&dir, "hang", &["--stall-timeout", "2"]);
    assert_eq!(out.code, Some(124), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "gang: rank 1 stalled (no progress for 2 s, last progress: test step 3 of 10) \
             (attempt 0; transient failure). The gang was stopped."
        ),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(attempts(&run), [0]);
    assert_all_attempts_gone(&run);
}

#[test]
fn the_launcher_prints_how_far_the_ranks_have_got_every_progress_interval() {
    let dir = TempDir::new("hb-progress");
    let (out, _) = run_mode(&dir, "progress", &["--progress-every", "1"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> =
        out.stderr.lines().filter(|l| l.starts_with("gang: ") && l.contains(": test step ")).collect();
    assert!(!lines.is_empty(), "no progress line: {}", out.stderr);
    assert!(lines.iter().all(|l| l.ends_with(" of 10")), "{lines:?}");
    // Without the option (60 s by default), a 2-second gang prints none.
    let (out, _) = run_mode(&dir, "progress", &[]);
    assert!(!out.stderr.contains(": test step "), "{}", out.stderr);
}

#[test]
fn messages_without_the_runs_token_are_dropped_and_counted() {
    let dir = TempDir::new("hb-token");
    let (out, run) = run_mode(&dir, "wrong-token", &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("gang: warning: dropped 6 heartbeat messages without this run's token (attempt 0)"),
        "{}",
        out.stderr
    );
    let hb = RunDir::open(&run).heartbeats().unwrap().unwrap();
    assert_eq!(hb.wrong_token, 6);
    assert_eq!(hb.ranks.len(), 2, "{hb:?}");
    assert!(hb.ranks.iter().all(|r| r.beats == 1 && r.progress.as_ref().unwrap().step == 10));
    assert_all_attempts_gone(&run);
}

#[test]
fn the_gang_library_sends_heartbeats_from_every_rank() {
    // The real rank program of the built-in jobs, built by `cargo build` / `cargo test`.
    require_mpirun();
    let rank_bin = gang().with_file_name("gang-rank");
    assert!(
        rank_bin.is_file(),
        "{} is missing: build the workspace (cargo build) before this test",
        rank_bin.display()
    );
    let dir = TempDir::new("hb-library");
    let root = dir.path().join("runs");
    let mut cmd = Command::new(gang());
    cmd.args(["hello", "-n", "2", "--run-dir", root.to_str().unwrap()]);
    let out = GangProcess::spawn(cmd, dir.path()).wait();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let run = run_dir_under(&root).unwrap();
    let hb = RunDir::open(&run).heartbeats().unwrap().unwrap();
    assert_eq!(
        hb.ranks.iter().map(|r| r.rank).collect::<Vec<_>>(),
        [0, 1],
        "no heartbeats from {} (rebuild it if it predates heartbeats): {hb:?}",
        rank_bin.display()
    );
    assert_eq!((hb.wrong_token, hb.malformed, hb.stale), (0, 0, 0));
    assert_all_attempts_gone(&run);
}

#[test]
fn with_a_hostfile_heartbeats_go_over_tcp_and_a_silent_rank_is_still_detected() {
    let dir = TempDir::new("hb-tcp");
    // A hostfile means ranks may run on other nodes: the launcher listens on TCP.
    let hostfile = dir.path().join("hosts");
    // Each MPI reads its own hostfile format: Open MPI `host slots=N`, hydra `host:N`.
    let line = if common::mpi_is_mpich() { "localhost:2\n" } else { "localhost slots=2\n" };
    std::fs::write(&hostfile, line).unwrap();
    let (out, run) = run_mode(
        &dir,
        "silence",
        &[
            "--hostfile",
            hostfile.to_str().unwrap(),
            "--stall-timeout",
            "2",
            "--max-restarts",
            "1",
            "--restart-backoff",
            "0",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("rank 1 stalled (no heartbeat for 2 s"), "{}", out.stderr);
    let log = std::fs::read_to_string(run.join("launcher.log")).unwrap();
    assert!(log.contains("gang: heartbeats on tcp:"), "{log}");
    let hb = RunDir::open(&run).with_attempt(0).heartbeats().unwrap().unwrap();
    assert_eq!(hb.ranks.iter().map(|r| r.rank).collect::<Vec<_>>(), [0, 1]);
    assert_all_attempts_gone(&run);
}
