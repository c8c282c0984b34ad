//! `gang run` under the real mpirun: output tagging, environment, and a failing rank.

mod common;

use common::{assert_gang_gone, require_mpirun, run_dir_under, run_gang, sorted_lines, TempDir};

#[test]
fn two_ranks_succeed_with_tagged_output() {
    require_mpirun();
    let dir = TempDir::new("hi");
    let root = dir.path().join("runs");
    let out = run_gang(
        &["run", "-n", "2", "--run-dir", root.to_str().unwrap(), "--", "sh", "-c", "echo hi; echo oops >&2"],
        dir.path(),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(sorted_lines(&out.stdout), ["[rank 0] hi", "[rank 1] hi"]);
    assert!(out.stderr.contains("[rank 0] oops\n") && out.stderr.contains("[rank 1] oops\n"), "{}", out.stderr);
    // Both supervisors recorded a clean exit.
    let run = run_dir_under(&root).expect("a run directory");
    for r in 0..2 {
        let exit = std::fs::read_to_string(run.join(format!("attempt-0/ranks/rank-{r}.exit.json"))).unwrap();
        assert!(exit.contains("\"code\": 0"), "{exit}");
    }
}

#[test]
fn no_tag_output_leaves_lines_alone() {
    require_mpirun();
    let dir = TempDir::new("notag");
    let root = dir.path().join("runs");
    let out = run_gang(
        &["run", "-n", "2", "--no-tag-output", "--run-dir", root.to_str().unwrap(), "--", "sh", "-c", "echo hi"],
        dir.path(),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(sorted_lines(&out.stdout), ["hi", "hi"]);
}

#[test]
fn ranks_get_the_protocol_variables_and_their_arguments() {
    require_mpirun();
    let dir = TempDir::new("env");
    let root = dir.path().join("runs");
    let script = r#"test -d "$GANG_RUN_DIR" || exit 9; printf '%s %s %s %s|' "$GANG_WORLD_SIZE" "$GANG_LAUNCHER" "$GANG_MPI" "$GANG_ATTEMPT"; printf '%s|' "$@""#;
    let out = run_gang(
        &["run", "-n", "2", "--run-dir", root.to_str().unwrap(), "--", "sh", "-c", script, "sh", "a b", "c"],
        dir.path(),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The partial last line (no newline) is completed by the supervisor.
    let mpi = common::gang_mpi();
    assert_eq!(
        sorted_lines(&out.stdout),
        [format!("[rank 0] 2 mpirun {mpi} 0|a b|c|"), format!("[rank 1] 2 mpirun {mpi} 0|a b|c|")]
    );
    let run = run_dir_under(&root).unwrap();
    assert!(run.is_absolute());
}

#[test]
fn more_ranks_than_cores_still_run() {
    require_mpirun();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dir = TempDir::new("oversub");
    let root = dir.path().join("runs");
    let n = (cores + 1).to_string();
    let out = run_gang(&["run", "-n", &n, "--run-dir", root.to_str().unwrap(), "--", "true"], dir.path());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn a_failing_rank_stops_the_gang_and_is_named() {
    require_mpirun();
    let dir = TempDir::new("fail");
    let root = dir.path().join("runs");
    let script = r#"if [ "${OMPI_COMM_WORLD_RANK:-$PMI_RANK}" = 1 ]; then exit 3; fi; sleep 30"#;
    let out = run_gang(&["run", "-n", "2", "--run-dir", root.to_str().unwrap(), "--", "sh", "-c", script], dir.path());
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert!(out.stderr.contains("gang: rank 1 failed first: exited with code 3 (attempt 0"), "{}", out.stderr);
    let run = run_dir_under(&root).unwrap();
    assert!(out.stderr.contains(&format!("Records: {}", run.display())), "{}", out.stderr);
    assert_gang_gone(&run);
}

#[test]
fn a_rank_killed_by_a_signal_reports_128_plus_signal() {
    require_mpirun();
    let dir = TempDir::new("sigrank");
    let root = dir.path().join("runs");
    let script = r#"if [ "${OMPI_COMM_WORLD_RANK:-$PMI_RANK}" = 0 ]; then kill -KILL $$; fi; sleep 30"#;
    let out = run_gang(&["run", "-n", "2", "--run-dir", root.to_str().unwrap(), "--", "sh", "-c", script], dir.path());
    assert_eq!(out.code, Some(137), "{}", out.stderr);
    assert!(out.stderr.contains("rank 0 failed first: was killed by signal 9 (SIGKILL)"), "{}", out.stderr);
    assert_gang_gone(&run_dir_under(&root).unwrap());
}

#[test]
fn a_failure_record_is_the_root_cause() {
    require_mpirun();
    let dir = TempDir::new("failrec");
    let root = dir.path().join("runs");
    // Rank 1 writes a FailureRecord the way the rank library does, then exits 5.
    let script = r#"if [ "${OMPI_COMM_WORLD_RANK:-$PMI_RANK}" = 1 ]; then
        mkdir -p "$GANG_RUN_DIR/attempt-0/failures"
        printf '{"rank":1,"attempt":0,"kind":"error","message":"input.parquet: bad magic","host":"h","pid":1,"time_unix_ns":1}' > "$GANG_RUN_DIR/attempt-0/failures/rank-1.json"
        exit 5
    fi; sleep 30"#;
    let out = run_gang(&["run", "-n", "2", "--run-dir", root.to_str().unwrap(), "--", "sh", "-c", script], dir.path());
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    assert!(
        out.stderr.contains("gang: rank 1 failed first: returned an error: input.parquet: bad magic (attempt 0"),
        "{}",
        out.stderr
    );
    assert_gang_gone(&run_dir_under(&root).unwrap());
}

#[test]
fn a_recorded_failure_stops_a_gang_the_launcher_leaves_running() {
    // Rank 1 records a failure but neither exits nor aborts, so mpirun sees nothing wrong;
    // gang itself must stop the gang (after its failure grace of 10 s).
    require_mpirun();
    let dir = TempDir::new("watchdog");
    let root = dir.path().join("runs");
    let script = r#"if [ "${OMPI_COMM_WORLD_RANK:-$PMI_RANK}" = 1 ]; then
        mkdir -p "$GANG_RUN_DIR/attempt-0/failures"
        printf '{"rank":1,"attempt":0,"kind":"panic","message":"stuck after failing","host":"h","pid":1,"time_unix_ns":1}' > "$GANG_RUN_DIR/attempt-0/failures/rank-1.json"
    fi; sleep 300"#;
    let out = run_gang(&["run", "-n", "2", "--run-dir", root.to_str().unwrap(), "--", "sh", "-c", script], dir.path());
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("gang: rank 1 failed first: panicked: stuck after failing"), "{}", out.stderr);
    assert!(out.stderr.contains("did not end the gang after the failure; gang stopped it"), "{}", out.stderr);
    assert_gang_gone(&run_dir_under(&root).unwrap());
}
