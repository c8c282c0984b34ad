//! `--max-restarts`: a failed gang is relaunched whole, with `GANG_ATTEMPT` counting up,
//! within one budget; the summary names the root cause; SIGTERM is never restarted.

mod common;

use common::{
    assert_all_attempts_gone, attempts, gang, require_mpirun, run_dir_under, run_gang, GangProcess, TempDir, HANG_GUARD,
};
use std::process::Command;
use std::time::{Duration, Instant};

fn run_args<'a>(root: &'a str, extra: &[&'a str], script: &'a str) -> Vec<&'a str> {
    let mut v = vec!["run", "-n", "2", "--run-dir", root];
    v.extend_from_slice(extra);
    v.extend_from_slice(&["--", "sh", "-c", script]);
    v
}

#[test]
fn a_gang_that_fails_in_attempt_0_only_is_restarted_and_succeeds() {
    require_mpirun();
    let dir = TempDir::new("restart-once");
    let root = dir.path().join("runs");
    let script = r#"
        if [ "$GANG_ATTEMPT" = 0 ]; then
            if [ "${OMPI_COMM_WORLD_RANK:-$PMI_RANK}" = 1 ]; then exit 3; fi
            sleep 30
        fi
        echo "attempt $GANG_ATTEMPT rank ${OMPI_COMM_WORLD_RANK:-$PMI_RANK} done""#;
    let root_s = root.to_str().unwrap();
    let out = run_gang(&run_args(root_s, &["--max-restarts", "2", "--restart-backoff", "0.2"], script), dir.path());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("gang: attempt 0 failed: rank 1 exited with code 3; restarting in 0.2 s (restart 1 of 2)"),
        "{}",
        out.stderr
    );
    let run = run_dir_under(&root).unwrap();
    assert!(
        out.stderr.contains(&format!(
            "gang: attempt 0: rank 1 exited with code 3; restarted (1 of 2); attempt 1 succeeded. \
             Records: {}",
            run.display()
        )),
        "{}",
        out.stderr
    );
    let mut lines: Vec<&str> = out.stdout.lines().filter(|l| l.contains("done")).collect();
    lines.sort();
    assert_eq!(lines, ["[rank 0] attempt 1 rank 0 done", "[rank 1] attempt 1 rank 1 done"]);
    assert_eq!(attempts(&run), [0, 1]);
    assert_all_attempts_gone(&run);
}

#[test]
fn an_exhausted_budget_exits_non_zero_with_the_root_causes() {
    require_mpirun();
    let dir = TempDir::new("restart-exhausted");
    let root = dir.path().join("runs");
    let script = r#"if [ "${OMPI_COMM_WORLD_RANK:-$PMI_RANK}" = 1 ]; then exit 3; fi; sleep 30"#;
    let root_s = root.to_str().unwrap();
    let out = run_gang(&run_args(root_s, &["--max-restarts", "2", "--restart-backoff", "0"], script), dir.path());
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    for want in [
        "gang: attempt 0 failed: rank 1 exited with code 3; restarting in 0 s (restart 1 of 2)",
        "gang: attempt 1 failed: rank 1 exited with code 3; restarting in 0 s (restart 2 of 2)",
        "gang: giving up: all 2 restarts used (--max-restarts 2); attempt 0: rank 1 exited with \
         code 3; restarted (1 of 2); ... (1 more failed attempt); attempt 2: rank 1 exited with \
         code 3\n",
    ] {
        assert!(out.stderr.contains(want), "missing {want:?} in:\n{}", out.stderr);
    }
    // The last line names the root cause with its class.
    let last = out.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("gang: rank 1 failed first: exited with code 3 (attempt 2, ")
            && last.contains("; transient failure)"),
        "{last}"
    );
    let run = run_dir_under(&root).unwrap();
    assert_eq!(attempts(&run), [0, 1, 2]);
    assert_all_attempts_gone(&run);
}

#[test]
fn no_restart_without_a_budget() {
    require_mpirun();
    let dir = TempDir::new("restart-none");
    let root = dir.path().join("runs");
    let script = r#"if [ "${OMPI_COMM_WORLD_RANK:-$PMI_RANK}" = 0 ]; then exit 4; fi; sleep 30"#;
    let out = run_gang(&run_args(root.to_str().unwrap(), &[], script), dir.path());
    assert_eq!(out.code, Some(4), "{}", out.stderr);
    assert!(out.stderr.contains("gang: rank 0 failed first: exited with code 4 (attempt 0"));
    assert!(!out.stderr.contains("restarting"), "{}", out.stderr);
    assert!(!out.stderr.contains("gang: attempt"), "{}", out.stderr);
    let run = run_dir_under(&root).unwrap();
    assert_eq!(attempts(&run), [0]);
    assert_all_attempts_gone(&run);
}

#[test]
fn sigterm_during_the_backoff_stops_everything_and_does_not_restart() {
    require_mpirun();
    let dir = TempDir::new("restart-sigterm");
    let root = dir.path().join("runs");
    let script = r#"if [ "${OMPI_COMM_WORLD_RANK:-$PMI_RANK}" = 1 ]; then exit 3; fi; sleep 30"#;
    let mut cmd = Command::new(gang());
    cmd.args(run_args(root.to_str().unwrap(), &["--max-restarts", "3", "--restart-backoff", "20"], script));
    let proc = GangProcess::spawn(cmd, dir.path());
    // The heartbeat summary of attempt 0 is written after its cleanup, just before the wait.
    let deadline = Instant::now() + HANG_GUARD;
    let run = loop {
        if let Some(run) = run_dir_under(&root) {
            if run.join("attempt-0").join("heartbeats.json").exists() {
                break run;
            }
        }
        assert!(Instant::now() < deadline, "attempt 0 never ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let status = Command::new("kill").arg("-TERM").arg(proc.id().to_string()).status().unwrap();
    assert!(status.success());
    let out = proc.wait();
    assert!(sent.elapsed() < Duration::from_secs(5), "took {:?} to stop", sent.elapsed());
    assert_eq!(out.code, Some(143), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "gang: received SIGTERM while waiting to restart; not restarting. attempt 0: rank 1 \
             exited with code 3. Records: "
        ),
        "{}",
        out.stderr
    );
    assert_eq!(attempts(&run), [0], "no attempt may start after SIGTERM");
    assert_all_attempts_gone(&run);
}
