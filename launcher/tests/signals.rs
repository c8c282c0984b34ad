//! Stopping a running gang with SIGTERM or SIGINT leaves nothing of it alive.

mod common;

use common::{assert_gang_gone, gang, require_mpirun, run_dir_under, started_pids, GangProcess, TempDir, HANG_GUARD};
use std::process::Command;
use std::time::{Duration, Instant};

/// Starts `gang run -n 2 -- sleep 300` and waits (bounded) until both ranks have recorded
/// their start; returns the process and its run directory.
fn start_sleeping_gang(dir: &TempDir) -> (GangProcess, std::path::PathBuf) {
    start_gang(dir, &[], &["sleep", "300"])
}

/// Starts `gang run -n 2 OPTIONS -- PROGRAM` and waits (bounded) until both ranks have
/// recorded their start.
fn start_gang(dir: &TempDir, options: &[&str], program: &[&str]) -> (GangProcess, std::path::PathBuf) {
    let root = dir.path().join("runs");
    let mut cmd = Command::new(gang());
    cmd.args(["run", "-n", "2", "--run-dir", root.to_str().unwrap()]).args(options).arg("--").args(program);
    let gang = GangProcess::spawn(cmd, dir.path());
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(run) = run_dir_under(&root) {
            if started_pids(&run).len() == 2 {
                return (gang, run);
            }
        }
        assert!(Instant::now() < deadline, "the ranks never recorded their start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_with(signal: &str, signo: i32) {
    require_mpirun();
    let dir = TempDir::new(&format!("sig-{signal}"));
    let (gang, run) = start_sleeping_gang(&dir);

    let sent = Command::new("kill").arg(format!("-{signal}")).arg(gang.id().to_string()).status().unwrap();
    assert!(sent.success());
    let out = gang.wait();
    assert_eq!(out.code, Some(128 + signo), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("received SIG{signal}; the gang was stopped")), "{}", out.stderr);
    assert_gang_gone(&run);
    // No mpirun child of this test is left either.
    let me = std::process::id().to_string();
    let stray = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| common::is_running(*pid))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
            let launcher = ["(mpirun)", "(mpiexec.hydra)", "(hydra_pmi_prox)"].iter().any(|n| stat.contains(n));
            launcher && after.split_whitespace().nth(1) == Some(me.as_str())
        })
        .count();
    assert_eq!(stray, 0, "an mpirun child of the test is still running");
}

#[test]
fn sigterm_stops_the_whole_gang() {
    stop_with("TERM", 15);
}

#[test]
fn sigint_stops_the_whole_gang() {
    stop_with("INT", 2);
}

#[test]
fn a_kill_grace_lets_the_ranks_clean_up_on_sigterm() {
    require_mpirun();
    let dir = TempDir::new("sig-grace");
    // Each rank says when its handler is in place: a SIGTERM before that would end it at once.
    let ready = dir.path().join("ready");
    std::fs::create_dir_all(&ready).unwrap();
    let script = format!(
        "trap 'kill $!; sleep 0.3; echo cleaned up; exit 0' TERM; touch {}/${{OMPI_COMM_WORLD_RANK:-$PMI_RANK}}; sleep 300 & wait",
        ready.display()
    );
    // Open MPI waits the grace before the SIGTERM and as long again before the SIGKILL.
    let (gang, run) = start_gang(&dir, &["--kill-grace", "2"], &["sh", "-c", &script]);
    let deadline = Instant::now() + HANG_GUARD;
    while std::fs::read_dir(&ready).unwrap().count() < 2 {
        assert!(Instant::now() < deadline, "the ranks never installed their handler");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill").arg("-TERM").arg(gang.id().to_string()).status().unwrap();
    assert!(sent.success());
    let out = gang.wait();
    assert_eq!(out.code, Some(128 + 15), "{}", out.stderr);
    let cleaned: Vec<&str> = out.stdout.lines().filter(|l| l.ends_with("cleaned up")).collect();
    assert_eq!(cleaned.len(), 2, "both ranks run their SIGTERM handler to the end: {}", out.stdout);
    assert_gang_gone(&run);
}

#[test]
fn a_killed_gang_takes_its_ranks_with_it() {
    // SIGKILL leaves gang no chance to clean up: mpirun's parent-death signal (SIGTERM) and
    // the supervisors' (SIGKILL) must do it. That happens asynchronously, so poll, bounded.
    require_mpirun();
    let dir = TempDir::new("sig-kill");
    let (gang, run) = start_sleeping_gang(&dir);
    let sent = Command::new("kill").arg("-KILL").arg(gang.id().to_string()).status().unwrap();
    assert!(sent.success());
    let out = gang.wait();
    assert_eq!(out.code, None, "killed by a signal");
    let run_id = run.file_name().unwrap().to_string_lossy().into_owned();
    let deadline = Instant::now() + HANG_GUARD;
    while !common::processes_mentioning(&format!("GANG_RUN_ID={run_id}")).is_empty() {
        assert!(Instant::now() < deadline, "the gang outlived its launcher");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_gang_gone(&run);
}
