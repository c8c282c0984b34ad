//! The class of a failure decides whether the gang is restarted (usage and input failures
//! are final, transient ones restarted within `--max-restarts`), and what the terminal shows
//! of a failure: the ranks' output and one root-cause line with its class, Open MPI's and
//! MPICH's banners only in the run directory's launcher.log (or with `--verbose`).

mod common;

use common::{assert_all_attempts_gone, attempts, require_mpirun, run_dir_under, run_gang, TempDir};
use gang_protocol::{FailureClass, FailureKind, FailureRecord};
use std::path::{Path, PathBuf};

/// `gang run -n 2 --max-restarts 2` of a rank program whose rank 0 records `record` (in
/// attempt 0 only, or in every attempt) and exits 2, while rank 1 waits to be stopped; the
/// record is written the way the gang library writes it (a whole file, renamed into place).
fn run_recording(dir: &TempDir, record: &FailureRecord, every_attempt: bool) -> (common::Finished, PathBuf) {
    let root = dir.path().join("runs");
    let json = serde_json::to_string(record).unwrap();
    let script = format!(
        r#"if [ "${{OMPI_COMM_WORLD_RANK:-$PMI_RANK}}" = 0 ] && {{ [ "$GANG_ATTEMPT" = 0 ] || [ {every} = 1 ]; }}; then
            d="$GANG_RUN_DIR/attempt-$GANG_ATTEMPT/failures"; mkdir -p "$d"
            printf '%s' '{json}' > "$d/.rank-0.tmp" && mv "$d/.rank-0.tmp" "$d/rank-0.json"
            echo "gang: rank 0 failed: {msg}; stopping the gang" >&2
            exit 2
        fi
        if [ "$GANG_ATTEMPT" = 0 ] || [ {every} = 1 ]; then sleep 30; fi
        echo "attempt $GANG_ATTEMPT done""#,
        every = u8::from(every_attempt),
        msg = record.message,
    );
    let out = run_gang(
        &[
            "run",
            "-n",
            "2",
            "--max-restarts",
            "2",
            "--restart-backoff",
            "0",
            "--run-dir",
            root.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
        dir.path(),
    );
    let run = run_dir_under(&root).expect("a run directory");
    (out, run)
}

fn record(class: FailureClass, message: &str) -> FailureRecord {
    FailureRecord::now(0, 0, FailureKind::Error, message.into()).with_class(class)
}

#[test]
fn a_usage_failure_is_not_restarted_and_says_why() {
    require_mpirun();
    let dir = TempDir::new("class-usage");
    let (out, run) = run_recording(&dir, &record(FailureClass::Usage, "--batch-size 0: must be at least 1"), true);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(attempts(&run), [0], "a usage failure must run once:\n{}", out.stderr);
    assert!(!out.stderr.contains("restarting"), "{}", out.stderr);
    let last = out.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("gang: rank 0 failed first: returned an error: --batch-size 0: must be at least 1"),
        "{last}"
    );
    assert!(
        last.contains(
            "; usage failure). The gang was stopped; not restarted: a usage failure cannot be mended by a restart"
        ),
        "{last}"
    );
    // The rank's own announcement is not printed again: the last line says it.
    assert_eq!(out.stderr.matches("--batch-size 0: must be at least 1").count(), 1, "{}", out.stderr);
    assert_all_attempts_gone(&run);
}

#[test]
fn a_transient_failure_is_restarted() {
    require_mpirun();
    let dir = TempDir::new("class-transient");
    let (out, run) = run_recording(&dir, &record(FailureClass::Transient, "Input/output error"), false);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(attempts(&run), [0, 1]);
    assert!(
        out.stderr.contains(
            "gang: attempt 0 failed: rank 0 returned an error: Input/output error; restarting in 0 s (restart 1 of 2)"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("[rank 0] attempt 1 done"), "{}", out.stdout);
    assert_all_attempts_gone(&run);
}

/// Runs `gang ARGS` in `dir` with the run directory under `dir/runs`; returns the output
/// and the run directory.
fn gang_in(dir: &TempDir, args: &[&str]) -> (common::Finished, PathBuf) {
    let root = dir.path().join("runs");
    let root_s = root.to_str().unwrap().to_string();
    // Right after the subcommand: `gang run`'s program and its arguments come last.
    let mut all: Vec<&str> = vec![args[0], "--run-dir", &root_s];
    all.extend_from_slice(&args[1..]);
    let mut cmd = std::process::Command::new(common::gang());
    cmd.args(&all).current_dir(dir.path());
    let out = common::GangProcess::spawn(cmd, dir.path()).wait();
    let run = run_dir_under(&root).expect("a run directory");
    (out, run)
}

fn rank_program() -> PathBuf {
    let p = common::gang().with_file_name("gang-rank");
    assert!(p.is_file(), "{} is missing: build it first with `cargo build --workspace --bins`", p.display());
    p
}

#[test]
fn gang_rank_records_an_input_it_cannot_read_as_an_input_failure() {
    require_mpirun();
    rank_program();
    let dir = TempDir::new("class-input");
    std::fs::write(dir.path().join("data.txt"), "a,b\n1,2\n").unwrap();
    let (out, run) = gang_in(&dir, &["stats", "-n", "2", "--max-restarts", "2", "--input", "data.txt"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(attempts(&run), [0], "an input failure must run once:\n{}", out.stderr);
    let last = out.stderr.lines().last().unwrap();
    assert!(last.contains("returned an error: data.txt: unknown input format"), "{last}");
    assert!(last.contains("; input failure). The gang was stopped; not restarted: an input failure cannot be mended by a restart (fix the input"), "{last}");
    assert_eq!(out.stderr.matches("unknown input format").count(), 1, "the error once:\n{}", out.stderr);
    assert_all_attempts_gone(&run);
}

#[test]
fn gang_rank_records_a_bad_option_as_a_usage_failure() {
    require_mpirun();
    let rank = rank_program();
    let dir = TempDir::new("class-rank-usage");
    // Started as a plain program, gang-rank checks its options itself.
    let (out, run) =
        gang_in(&dir, &["run", "-n", "2", "--max-restarts", "2", "--", rank.to_str().unwrap(), "stats", "--bogus"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(attempts(&run), [0], "{}", out.stderr);
    let last = out.stderr.lines().last().unwrap();
    assert!(last.contains("unexpected argument '--bogus'") && last.contains("; usage failure)"), "{last}");
}

/// Open MPI's words that must not reach the terminal of a failed job.
const OPEN_MPI_BANNERS: [&str; 6] =
    ["-----", "Primary job", "MPI_ABORT was invoked", "ORTE_ERROR_LOG", "mpirun detected", "orte_base_help_aggregate"];

/// MPICH's: its library's line on an aborting rank's stderr, hydra's report (on stdout) and
/// its `[mpiexec@host]` lines.
const MPICH_BANNERS: [&str; 5] =
    ["application called MPI_Abort", "BAD TERMINATION", "YOUR APPLICATION TERMINATED", "[mpiexec@", "[proxy:"];

/// The banners of the MPI the tests run with.
fn banners() -> &'static [&'static str] {
    if common::mpi_is_mpich() {
        &MPICH_BANNERS
    } else {
        &OPEN_MPI_BANNERS
    }
}

fn make_data(dir: &TempDir) -> PathBuf {
    let data = dir.path().join("data");
    let (out, _) = gang_in(
        dir,
        &[
            "gen",
            "-n",
            "1",
            "--rows",
            "2000",
            "--features",
            "2",
            "--partitions",
            "2",
            "--output",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
    data
}

fn launcher_log(run: &Path) -> String {
    std::fs::read_to_string(run.join("launcher.log")).unwrap()
}

#[test]
fn a_failing_job_shows_its_root_cause_once_and_no_mpi_banner() {
    require_mpirun();
    rank_program();
    let dir = TempDir::new("banners");
    let data = make_data(&dir);
    let args = ["train", "-n", "2", "--input", data.to_str().unwrap(), "--label", "nope", "--output", "m.safetensors"];
    let (out, run) = gang_in(&dir, &args);
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    for b in banners() {
        assert!(!out.stderr.contains(b), "{b:?} reached the terminal:\n{}", out.stderr);
        assert!(!out.stdout.contains(b), "{b:?} reached stdout:\n{}", out.stdout);
    }
    assert_eq!(out.stderr.matches("label column \"nope\"").count(), 1, "the root cause once:\n{}", out.stderr);
    let last = out.stderr.lines().last().unwrap();
    assert!(last.starts_with("gang: rank ") && last.contains("failed first: returned an error"), "{last}");
    assert!(last.contains("label column \"nope\"") && last.contains(" failure). The gang was stopped"), "{last}");
    // Everything is in the launcher log.
    let log = launcher_log(&run);
    // (Which of its messages Open MPI prints varies from run to run.)
    assert!(banners().iter().any(|b| log.contains(b)), "{log}");
    assert!(log.contains("label column \"nope\""), "{log}");

    // --verbose shows what mpirun said.
    std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
    let mut verbose = args.to_vec();
    verbose.push("--verbose");
    let (out, _) = gang_in(&dir, &verbose);
    assert!(banners().iter().any(|b| out.stderr.contains(b)), "{}", out.stderr);
}

#[test]
fn mpirun_s_own_failure_is_shown() {
    require_mpirun();
    let dir = TempDir::new("mpirun-fails");
    // Open MPI cannot reach the host; hydra refuses the `slots=` syntax (a host it cannot
    // reach would hang it: it does not notice that ssh failed).
    std::fs::write(dir.path().join("hosts"), "no-such-host-for-gang-tests.invalid slots=2\n").unwrap();
    let (out, run) = gang_in(&dir, &["run", "-n", "1", "--hostfile", "hosts", "--", "true"]);
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    let last = out.stderr.lines().last().unwrap();
    assert!(last.contains("mpirun exited with code") && last.contains("before any rank reported a failure"), "{last}");
    // What mpirun said is the explanation: it is shown (and logged).
    let said = if common::mpi_is_mpich() { "[mpiexec@" } else { "-----" };
    assert!(out.stderr.contains(said), "mpirun's message was swallowed:\n{}", out.stderr);
    assert!(launcher_log(&run).contains(said));
}
