//! Built-in jobs run `gang-rank <job> EXTRA...` as a gang, and say how to get gang-rank.

mod common;

use common::{require_mpirun, sorted_lines, GangProcess, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

/// A copy of the gang binary in its own directory, so that what lies next to it is known.
fn gang_copy(dir: &TempDir) -> PathBuf {
    let exe = dir.path().join("gang");
    std::fs::copy(common::gang(), &exe).unwrap();
    exe
}

#[test]
fn hello_runs_the_rank_program_next_to_gang() {
    require_mpirun();
    let dir = TempDir::new("job-hello");
    let exe = gang_copy(&dir);
    let rank_prog = dir.path().join("gang-rank");
    std::fs::write(&rank_prog, "#!/bin/sh\necho \"job $*\"\n").unwrap();
    std::fs::set_permissions(&rank_prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("runs");
    let mut cmd = Command::new(&exe);
    cmd.args(["hello", "-n", "2", "--run-dir", root.to_str().unwrap(), "--", "x", "y z"]);
    let out = GangProcess::spawn(cmd, dir.path()).wait();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(sorted_lines(&out.stdout), ["[rank 0] job hello x y z", "[rank 1] job hello x y z"]);
}

#[test]
fn missing_rank_program_says_how_to_build_it() {
    let dir = TempDir::new("job-missing");
    let exe = gang_copy(&dir);
    let empty = TempDir::new("job-empty-path");
    let mut cmd = Command::new(&exe);
    cmd.args(["hello", "-n", "2"]).env("PATH", empty.path()).env_remove("GANG_RANK_BIN");
    let out = GangProcess::spawn(cmd, dir.path()).wait();
    assert_eq!(out.code, Some(1));
    let want = format!(
        "the rank-side program gang-rank was not found next to {} or on PATH; build it with `cargo build --release`",
        exe.display()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
}
