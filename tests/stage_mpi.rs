//! Map stages as real gangs: `gang run -n N -- examples/map_stage` under mpirun. The same
//! output at 1, 2 and 4 ranks; a rank killed in the middle of the stage, then the stage run
//! again: the output of an uninterrupted run; a failing function names file, partition and
//! rank and leaves nothing visible.
//!
//! These tests need the `gang` launcher (built by `cargo test --workspace` or
//! `cargo build --workspace`) and Open MPI's `mpirun` on PATH; without either they fail and
//! say so rather than pass.

mod common;
mod stage_common;

use common::{assert_success, example, gang_bin, require_mpirun, text, wait_guarded};
use stage_common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `gang run -n N -- map_stage INPUT OUTPUT extra...` with `env`, killed if it hangs.
fn run_map(s: &Scratch, n: usize, output: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    require_mpirun();
    let runs = s.path("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let mut cmd = Command::new(gang_bin());
    cmd.args(["run", "-n", &n.to_string(), "--"])
        .arg(example("map_stage"))
        .arg(s.path("in"))
        .arg(output)
        .args(extra)
        .env("GANG_RUN_ROOT", &runs)
        .env_remove("GANG_TEST_DIE")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wait_guarded(cmd.spawn().expect("start gang"), "gang run map_stage")
}

/// `committed P partitions, skipped S, rows N` from the example's rank 0.
fn summary(stdout: &str) -> (usize, usize, u64) {
    let line = stdout.lines().find(|l| l.contains("committed ")).unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    let line = &line[line.find("committed ").unwrap()..];
    let nums: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
    (nums[0] as usize, nums[1] as usize, nums[2])
}

const FILES: usize = 12;

#[test]
fn the_output_is_the_same_at_1_2_and_4_ranks_under_mpirun() {
    let s = Scratch::new("mpi-ranks");
    let total = write_input(&s.path("in"), FILES);
    for n in [1, 2, 4] {
        let out = s.path(&format!("out-{n}"));
        let stdout = assert_success(&run_map(&s, n, &out, &[], &[]));
        assert_eq!(summary(&stdout), (FILES, 0, total), "{n} ranks:\n{stdout}");
        assert_eq!(read_output(&out), expected_rows(FILES), "{n} ranks");
    }
}

#[test]
fn a_rank_killed_in_the_middle_of_the_stage_then_a_rerun_gives_the_uninterrupted_output() {
    let s = Scratch::new("mpi-kill");
    write_input(&s.path("in"), FILES);
    let out = s.path("out");
    // Rank 1 of 4 aborts right after committing its second partition.
    let killed = run_map(&s, 4, &out, &[], &[("GANG_TEST_DIE", "1:2")]);
    let stderr = text(&killed).1;
    assert!(!killed.status.success(), "the gang survived a killed rank:\n{stderr}");
    assert!(stderr.contains("rank 1 dies after committing 2 partition(s)"), "{stderr}");
    assert!(!out.join("_SUCCESS").exists(), "a failed stage wrote _SUCCESS");
    assert!(visible(&out).is_empty(), "a failed stage left visible files: {:?}", visible(&out));
    let committed = std::fs::read_dir(out.join("_temporary/committed"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert!(committed >= 2, "only {committed} partitions were committed before the kill");

    // The same command without the fault, with another world size: resumes.
    let stdout = assert_success(&run_map(&s, 2, &out, &[], &[]));
    let (partitions, skipped, rows) = summary(&stdout);
    assert_eq!(partitions, FILES);
    assert_eq!(skipped, committed, "{stdout}");
    let got = read_output(&out);
    let want = expected_rows(FILES);
    assert_eq!(rows, want.len() as u64);
    // No row missing, none twice.
    assert_eq!(got, want);
}

#[test]
fn a_rank_hung_in_a_map_stage_is_found_stalled_and_a_rerun_gives_the_uninterrupted_output() {
    let s = Scratch::new("mpi-hang");
    write_input(&s.path("in"), FILES);
    let out = s.path("out");
    let runs = s.path("runs");
    std::fs::create_dir_all(&runs).unwrap();
    // The rank that maps id 5010 (partition 5) never returns from it; the others finish
    // their partitions and wait for it. No restart: the launcher stops the gang.
    let mut cmd = Command::new(gang_bin());
    cmd.args(["run", "-n", "4", "--stall-timeout", "3", "--"])
        .arg(example("map_stage"))
        .arg(s.path("in"))
        .arg(&out)
        .env("GANG_RUN_ROOT", &runs)
        .env_remove("GANG_TEST_DIE")
        .env("GANG_TEST_HANG_ON_ID", "5010")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let hung = wait_guarded(cmd.spawn().unwrap(), "gang run map_stage with a hung rank");
    let stderr = text(&hung).1;
    assert_eq!(hung.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("hangs on id 5010"), "{stderr}");
    assert!(
        stderr.contains("stalled (no progress for 3 s, last progress: map stage add-y step"),
        "the stall should name the stage's progress: {stderr}"
    );
    assert!(!out.join("_SUCCESS").exists(), "a stalled stage wrote _SUCCESS");
    assert!(visible(&out).is_empty(), "a stalled stage left visible files: {:?}", visible(&out));
    // Run again without the hang: every row once.
    let stdout = assert_success(&run_map(&s, 2, &out, &[], &[]));
    assert_eq!(summary(&stdout).0, FILES);
    assert_eq!(read_output(&out), expected_rows(FILES));
}

#[test]
fn a_failing_function_fails_the_gang_naming_file_partition_and_rank_with_nothing_visible() {
    let s = Scratch::new("mpi-fail");
    write_input(&s.path("in"), FILES);
    let out = s.path("out");
    let failed = run_map(&s, 2, &out, &["--fail-on-id", "5010"], &[]);
    let stderr = text(&failed).1;
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains("in-05.parquet")
            && stderr.contains("partition 5")
            && stderr.contains("rank ")
            && stderr.contains("injected failure on id 5010"),
        "{stderr}"
    );
    assert!(!out.join("_SUCCESS").exists());
    assert!(visible(&out).is_empty(), "{:?}", visible(&out));
}
