//! Every way `gang` refuses to start, and that it says what to do about it.

mod common;

use common::{gang, GangProcess, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Runs gang with `args`, the given PATH, and no Slurm variables; returns (code, stderr).
fn gang_with_path(args: &[&str], path: &str, dir: &TempDir) -> (Option<i32>, String) {
    let mut cmd = Command::new(gang());
    // The launcher comes from PATH here, not from the MPICH pass's GANG_MPIRUN.
    cmd.args(args).env("PATH", path).env_remove("SLURM_JOB_ID").env_remove("GANG_MPIRUN").current_dir(dir.path());
    let out = GangProcess::spawn(cmd, dir.path()).wait();
    (out.code, out.stderr)
}

fn gang_err(args: &[&str], dir: &TempDir) -> (Option<i32>, String) {
    gang_with_path(args, &std::env::var("PATH").unwrap(), dir)
}

#[test]
fn no_mpirun_on_path_says_how_to_install_one() {
    let dir = TempDir::new("nompi");
    let empty = TempDir::new("empty-path");
    let runs = dir.path().join("runs");
    for launcher in ["auto", "mpirun"] {
        let args = ["run", "-n", "1", "--launcher", launcher, "--run-dir", runs.to_str().unwrap(), "--", "/bin/true"];
        let (code, err) = gang_with_path(&args, empty.path().to_str().unwrap(), &dir);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(
                "no mpirun on PATH: install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin \
                 libopenmpi-dev) or MPICH (apt-get install mpich libmpich-dev), or load your \
                 cluster's MPI module"
            ),
            "{err}"
        );
    }
    assert!(!runs.exists(), "no run directory for a gang that never started");
}

#[test]
fn srun_without_slurm_is_refused() {
    let dir = TempDir::new("nosrun");
    let empty = TempDir::new("empty-path2");
    let (code, err) = gang_with_path(
        &["run", "-n", "1", "--launcher", "srun", "--", "/bin/true"],
        empty.path().to_str().unwrap(),
        &dir,
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("there is no srun on PATH") && err.contains("--launcher mpirun"), "{err}");
}

#[test]
fn zero_ranks_is_refused() {
    let dir = TempDir::new("zero");
    let (code, err) = gang_err(&["run", "-n", "0", "--", "true"], &dir);
    assert_eq!(code, Some(1));
    assert!(err.contains("-n must be at least 1"), "{err}");
}

#[test]
fn missing_program_on_path_is_named() {
    let dir = TempDir::new("missing");
    let (code, err) = gang_err(&["run", "-n", "1", "--", "no-such-program-for-gang-tests"], &dir);
    assert_eq!(code, Some(1));
    assert!(err.contains("program `no-such-program-for-gang-tests` was not found on PATH: give its path"), "{err}");
}

#[test]
fn missing_program_path_is_named() {
    let dir = TempDir::new("missing-path");
    let (code, err) = gang_err(&["run", "-n", "1", "--", "./not-here"], &dir);
    assert_eq!(code, Some(1));
    assert!(err.contains("program ./not-here does not exist"), "{err}");
}

#[test]
fn non_executable_program_says_chmod() {
    let dir = TempDir::new("noexec");
    let file = dir.path().join("script.sh");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = gang_err(&["run", "-n", "1", "--", "./script.sh"], &dir);
    assert_eq!(code, Some(1));
    assert!(err.contains("program ./script.sh is not executable: make it so with `chmod +x ./script.sh`"), "{err}");
}

#[test]
fn unknown_launcher_lists_the_choices() {
    let dir = TempDir::new("badlauncher");
    let (code, err) = gang_err(&["run", "-n", "1", "--launcher", "pbsrun", "--", "true"], &dir);
    assert_eq!(code, Some(2), "a usage error");
    assert!(err.contains("invalid value 'pbsrun'"), "{err}");
    assert!(err.contains("auto") && err.contains("mpirun") && err.contains("srun"), "{err}");
}

#[test]
fn missing_hostfile_is_named() {
    let dir = TempDir::new("hostfile");
    let (code, err) = gang_err(&["run", "-n", "1", "--hostfile", "nodes.txt", "--", "true"], &dir);
    assert_eq!(code, Some(1));
    assert!(err.contains("hostfile nodes.txt does not exist"), "{err}");
}

#[test]
fn program_is_required_after_the_separator() {
    let dir = TempDir::new("noprog");
    let (code, _err) = gang_err(&["run", "-n", "1"], &dir);
    assert_eq!(code, Some(2), "a usage error");
}

#[test]
fn supervisor_outside_a_launcher_says_so() {
    let dir = TempDir::new("sup");
    let mut cmd = Command::new(gang());
    cmd.args(["__rank-supervisor", "--", "true"]);
    for v in ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"] {
        cmd.env_remove(v);
    }
    let out = GangProcess::spawn(cmd, dir.path()).wait();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no rank in the environment"), "{}", out.stderr);
}

#[test]
fn supervisor_by_hand_runs_the_program_and_passes_its_exit_code() {
    let dir = TempDir::new("sup-hand");
    let mut cmd = Command::new(gang());
    cmd.args(["__rank-supervisor", "--tag-output", "--", "sh", "-c", "echo out; echo err >&2; exit 4"])
        .env("PMI_RANK", "7")
        .env_remove("OMPI_COMM_WORLD_RANK")
        .env_remove("PMIX_RANK")
        .env_remove("GANG_RUN_DIR");
    let out = GangProcess::spawn(cmd, dir.path()).wait();
    assert_eq!(out.code, Some(4));
    assert_eq!(out.stdout, "[rank 7] out\n");
    assert_eq!(out.stderr, "[rank 7] err\n");
}
