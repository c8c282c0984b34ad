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
    // Launch and job options in any order; the ranks get the job's options as given.
    cmd.args(["selftest", "--max-count", "5", "-n", "2", "--run-dir", root.to_str().unwrap()]);
    let out = GangProcess::spawn(cmd, dir.path()).wait();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        sorted_lines(&out.stdout),
        ["[rank 0] job selftest --max-count=5", "[rank 1] job selftest --max-count=5"]
    );
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

/// The `gang-rank` built beside the `gang` under test (by `cargo build --workspace --bins`).
fn built_rank_program() -> PathBuf {
    let p = common::gang().with_file_name("gang-rank");
    assert!(p.is_file(), "{} is missing: build it first with `cargo build --workspace --bins`", p.display());
    p
}

/// The subcommands a `--help` lists (the lines of its `Commands:` section).
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != "help")
        .collect()
}

#[test]
fn the_launchers_jobs_are_gang_ranks_jobs() {
    let launcher = Command::new(common::gang()).arg("--help").output().unwrap();
    let rank = Command::new(built_rank_program()).arg("--help").output().unwrap();
    let launcher: Vec<String> = listed_commands(&String::from_utf8_lossy(&launcher.stdout))
        .into_iter()
        .filter(|n| !["run", "info", "sbatch", "ckpt"].contains(&n.as_str()))
        .collect();
    let rank: Vec<String> =
        listed_commands(&String::from_utf8_lossy(&rank.stdout)).into_iter().filter(|n| n != "ckpt").collect();
    assert_eq!(launcher, gang_jobs::names());
    assert_eq!(rank, launcher, "gang-rank's jobs differ from the launcher's");
}

#[test]
fn every_jobs_help_lists_its_options_and_the_launch_options() {
    use clap::Subcommand;
    let defs = gang_jobs::Job::augment_subcommands(clap::Command::new("gang"));
    for job in defs.get_subcommands() {
        let name = job.get_name();
        let out = Command::new(common::gang()).args([name, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "gang {name} --help: {}", String::from_utf8_lossy(&out.stderr));
        for arg in job.get_arguments() {
            let long = format!("--{}", arg.get_long().unwrap());
            assert!(help.contains(&long), "gang {name} --help does not list {long}:\n{help}");
        }
        for launch in ["Launch options:", "-n, --ranks <N>", "--max-restarts <K>", "--verbose"] {
            assert!(help.contains(launch), "gang {name} --help does not list {launch}:\n{help}");
        }
        let about = job.get_about().unwrap().to_string();
        assert!(help.starts_with(&about), "gang {name} --help does not open with {about:?}:\n{help}");
    }
}

/// `gang ARGS` with no mpirun on PATH (so it fails loudly if it gets that far) in `dir`.
fn refused(args: &[&str], dir: &TempDir) -> common::Finished {
    let empty = TempDir::new("refused-path");
    let mut cmd = Command::new(common::gang());
    cmd.args(args).env("PATH", empty.path()).env_remove("SLURM_JOB_ID").current_dir(dir.path());
    GangProcess::spawn(cmd, dir.path()).wait()
}

#[test]
fn a_bad_option_or_a_missing_input_is_refused_before_anything_starts() {
    let dir = TempDir::new("job-refused");
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let runs = dir.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["stats", "-n", "2", "--run-dir", runs_s, "--input", "missing/"],
            "error: --input missing/: no such file or directory",
        ),
        (
            &["train", "--run-dir", runs_s, "--input", "data", "--output", "m"],
            "the following required arguments were not provided:\n  --label <LABEL>",
        ),
        (
            &[
                "train",
                "--input",
                "data",
                "--label",
                "y",
                "--output",
                "m",
                "--checkpoint-every",
                "0",
                "--run-dir",
                runs_s,
                "--max-restarts",
                "2",
            ],
            "invalid value '0' for '--checkpoint-every",
        ),
        (&["stats", "--input", "data", "--bogus", "--run-dir", runs_s], "unexpected argument '--bogus'"),
        (
            &["predict", "--input", "data", "--output", "o", "--model", "m.safetensors", "--run-dir", runs_s],
            "--model m.safetensors: no such file or directory",
        ),
        (
            &[
                "convert",
                "--input",
                "data",
                "--output",
                "o",
                "--partitions",
                "2",
                "--format",
                "csv",
                "--run-dir",
                runs_s,
            ],
            "invalid value 'csv' for '--format",
        ),
    ];
    for (args, want) in cases {
        let out = refused(args, &dir);
        assert_eq!(out.code, Some(2), "gang {args:?}: {}", out.stderr);
        assert!(out.stderr.contains(want), "gang {args:?}: missing {want:?} in:\n{}", out.stderr);
        assert!(!out.stderr.contains("mpirun"), "gang {args:?} got as far as looking for mpirun:\n{}", out.stderr);
        assert!(!runs.exists(), "gang {args:?} created a run directory");
    }
}

/// `gang hello` (no -n) with a stand-in gang-rank beside a copy of gang, and `env` set.
fn hello_without_n(tag: &str, env: &[(&str, &str)]) -> common::Finished {
    let dir = TempDir::new(tag);
    let exe = gang_copy(&dir);
    let rank_prog = dir.path().join("gang-rank");
    std::fs::write(&rank_prog, "#!/bin/sh\necho \"job $*\"\n").unwrap();
    std::fs::set_permissions(&rank_prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("runs");
    let mut cmd = Command::new(&exe);
    cmd.args(["hello", "--launcher", "mpirun", "--run-dir", root.to_str().unwrap()]);
    for v in ["SLURM_JOB_ID", "SLURM_NTASKS", "CUDA_VISIBLE_DEVICES"] {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    GangProcess::spawn(cmd, dir.path()).wait()
}

#[test]
fn without_n_a_cpu_job_gets_one_rank_per_core_and_says_so() {
    require_mpirun();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let out = hello_without_n("job-default-n", &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), cores, "{}", out.stdout);
    let want =
        format!("gang: {cores} rank{} (-n not given: one per core ({cores} cores)", if cores == 1 { "" } else { "s" });
    assert!(out.stderr.contains(&want), "{}", out.stderr);
}

#[test]
fn without_n_a_slurm_allocation_gives_its_task_count() {
    require_mpirun();
    let out = hello_without_n("job-slurm-n", &[("SLURM_JOB_ID", "77"), ("SLURM_NTASKS", "3")]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    assert!(
        out.stderr.contains("gang: 3 ranks (-n not given: the Slurm allocation's task count (SLURM_NTASKS=3))"),
        "{}",
        out.stderr
    );
}
