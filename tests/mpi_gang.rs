//! Real gangs: `gang run` starts real `mpirun` with 2 and 4 ranks of the rank-side
//! programs, which check every collective on every rank, or fail on purpose while their
//! peers wait in a barrier.
//!
//! These tests need the `gang` launcher binary, built by `cargo test --workspace` (or
//! `cargo build --workspace`), and an `mpirun` of the MPI they are built against (on PATH,
//! or `GANG_MPIRUN`); without either they fail and say so rather than pass.

mod common;

use common::{assert_success, example, text, wait_guarded, Scratch};
use gang_protocol::RunDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn rank_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gang-rank"))
}

/// The one run directory the launcher created under the scratch root.
fn run_dir(s: &Scratch) -> RunDir {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&s.0).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "expected one run directory in {}", s.0.display());
    RunDir::open(runs.remove(0))
}

/// Runs `gang ARGS` with the run directory under the scratch root.
fn gang(args: &[&str], s: &Scratch) -> Output {
    common::gang(args, &s.0)
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; a zombie has finished running.
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// No process of the gang (supervisor or rank program) is still running.
fn assert_no_rank_alive(scratch: &Scratch) {
    let run = run_dir(scratch);
    let starts = run.starts().unwrap();
    assert!(!starts.is_empty(), "no rank started");
    // Leave the kernel a moment to finish reaping.
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in &starts {
        while (alive(s.pid) || alive(s.supervisor_pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(s.pid), "rank {} (pid {}) is still alive", s.rank, s.pid);
        assert!(!alive(s.supervisor_pid), "supervisor of rank {} is still alive", s.rank);
    }
}

#[test]
fn every_collective_is_right_on_every_rank_under_mpirun_at_2_and_4_ranks() {
    for n in ["2", "4"] {
        let s = Scratch::new(&format!("selftest-{n}"));
        let out = gang(&["run", "-n", n, "--", rank_bin().to_str().unwrap(), "selftest"], &s);
        let stdout = assert_success(&out);
        assert!(
            stdout.contains("[rank 0] selftest passed") && stdout.contains(&format!("each of {n} ranks (mpi backend")),
            "{stdout}"
        );
    }
}

#[test]
fn large_buffers_split_into_chunks_are_right_under_mpirun() {
    for (n, max) in [("2", "3"), ("4", "5")] {
        let s = Scratch::new(&format!("chunks-{n}"));
        let out = gang(&["run", "-n", n, "--", rank_bin().to_str().unwrap(), "selftest", "--max-count", max], &s);
        let stdout = assert_success(&out);
        assert!(stdout.contains(&format!("at most {max} elements per call")), "{stdout}");
    }
}

#[test]
fn hello_reports_what_each_of_4_ranks_saw() {
    let s = Scratch::new("hello");
    let out = gang(&["hello", "-n", "4"], &s);
    let stdout = assert_success(&out);
    assert!(stdout.contains("4 ranks met at a barrier"), "{stdout}");
    for r in 0..4 {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(&r.to_string()))
            .unwrap_or_else(|| panic!("no row for rank {r}:\n{stdout}"));
        assert!(row.ends_with("yes"), "rank {r} saw wrong values: {row}");
    }
    assert!(stdout.contains("every rank saw the right values"), "{stdout}");
}

#[test]
fn a_spark_discovery_script_gives_each_rank_its_gpu_and_a_broken_one_stops_the_launch() {
    let s = Scratch::new("discovery");
    std::fs::create_dir_all(&s.0).unwrap();
    let script = s.0.join("getGpusResources.sh");
    std::fs::write(&script, "#!/bin/sh\necho '{\"name\": \"gpu\", \"addresses\": [\"0\", \"1\"]}'\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let broken = s.0.join("broken.sh");
    std::fs::write(&broken, "#!/bin/sh\necho 'no GPUs here' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hello = |script: &Path| {
        common::require_mpirun();
        let child = Command::new(common::gang_bin())
            .args(["hello", "-n", "4", "--no-tag-output", "--gpu-discovery-script"])
            .arg(script)
            .env_remove("CUDA_VISIBLE_DEVICES")
            .env_remove("GANG_GPU_DISCOVERY_SCRIPT")
            .env("GANG_RUN_ROOT", s.0.join("runs"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_guarded(child, "gang hello --gpu-discovery-script")
    };
    // Every rank runs the script: ranks 0-3 (one node) take GPUs 0, 1, 0, 1.
    let out = hello(&script);
    let stdout = assert_success(&out);
    for (r, gpu) in [(0, "cuda:0"), (1, "cuda:1"), (2, "cuda:0"), (3, "cuda:1")] {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&r.to_string()))
            .unwrap_or_else(|| panic!("no row for rank {r}:\n{stdout}"));
        assert!(row.split_whitespace().any(|w| w == gpu), "rank {r} should use {gpu}: {row}");
    }
    // A script that fails is said once, by the launcher, and no rank starts.
    let out = hello(&broken);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("broken.sh") && stderr.contains("no GPUs here"), "{stderr}");
    assert_eq!(stderr.matches("broken.sh").count(), 1, "{stderr}");
}

#[test]
fn the_same_program_runs_as_local_threads_without_mpirun() {
    let out = Command::new(rank_bin()).args(["--local", "4", "selftest"]).output().unwrap();
    let stdout = assert_success(&out);
    assert!(stdout.contains("each of 4 ranks (local backend"), "{stdout}");
}

#[test]
fn a_rank_that_panics_while_its_peers_wait_in_a_barrier_ends_the_gang() {
    let s = Scratch::new("panic");
    let out = gang(&["run", "-n", "4", "--", example("fault").to_str().unwrap(), "panic", "1"], &s);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(gang::EXIT_RANK_PANIC), "stderr:\n{stderr}");
    assert!(stderr.contains("rank 1") && stderr.contains("injected panic on rank 1"), "{stderr}");
    let failures = run_dir(&s).failures().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].rank, 1);
    assert_no_rank_alive(&s);
}

#[test]
fn a_rank_that_returns_an_error_ends_the_gang_and_is_named() {
    let s = Scratch::new("error");
    let out = gang(&["run", "-n", "2", "--", example("fault").to_str().unwrap(), "error", "0"], &s);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(gang::EXIT_RANK_ERROR), "stderr:\n{stderr}");
    assert!(stderr.contains("rank 0") && stderr.contains("injected error on rank 0"), "{stderr}");
    assert_no_rank_alive(&s);
}

/// The class a rank records decides the launcher's restart: usage and input failures are
/// final (one attempt under `--max-restarts 2`), a transient one is restarted until the
/// budget is spent (three attempts).
#[test]
fn failure_records_carry_the_class_and_only_transient_failures_are_restarted() {
    use gang_protocol::FailureClass;
    for (kind, class, attempts) in
        [("usage", FailureClass::Usage, 1), ("input", FailureClass::Input, 1), ("error", FailureClass::Transient, 3)]
    {
        let s = Scratch::new(&format!("class-{kind}"));
        let out = gang(
            &[
                "run",
                "-n",
                "2",
                "--max-restarts",
                "2",
                "--restart-backoff",
                "0",
                "--",
                example("fault").to_str().unwrap(),
                kind,
                "1",
            ],
            &s,
        );
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(gang::EXIT_RANK_ERROR), "{kind}: stderr:\n{stderr}");
        let run = run_dir(&s);
        for a in 0..attempts {
            let failures = run.clone().with_attempt(a).failures().unwrap();
            assert_eq!(failures.len(), 1, "{kind}, attempt {a}: {failures:?}");
            assert_eq!((failures[0].rank, failures[0].class), (1, class), "{kind}, attempt {a}");
        }
        let beyond = run.clone().with_attempt(attempts).starts().unwrap();
        assert!(beyond.is_empty(), "{kind}: attempt {attempts} should not have started: {beyond:?}");
        assert!(stderr.contains(class.as_str()), "{kind}: the root cause names its class:\n{stderr}");
    }
}

#[test]
fn a_rank_that_exits_3_makes_gang_exit_non_zero_naming_that_rank() {
    let s = Scratch::new("exit3");
    let out = gang(&["run", "-n", "4", "--", example("fault").to_str().unwrap(), "exit", "3", "2"], &s);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{stderr}");
    assert!(stderr.contains("rank 2") && stderr.contains("code 3"), "{stderr}");
    assert_no_rank_alive(&s);
}

/// A rank that exits 1 after `MPI_Init` while its peer waits in a barrier. On one node the
/// launcher ends the job itself. MPICH's hydra with more than one proxy does not (it waits
/// forever: ../shared/ENVIRONMENT.md); `HYDRA_LAUNCHER=fork` and a hostfile of two made-up
/// hosts give two proxies on this machine, and gang stops the gang itself, its failure
/// grace (10 s) after the rank's exit record, naming that rank.
#[test]
fn a_rank_that_exits_1_after_init_ends_the_gang_even_where_hydra_would_hang() {
    let fault = example("fault");
    let s = Scratch::new("exit1");
    let out = gang(&["run", "-n", "2", "--", fault.to_str().unwrap(), "exit", "1", "1"], &s);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("gang: rank 1 failed first: exited with code 1 (attempt 0"), "{stderr}");
    assert!(!stderr.contains("did not end the gang"), "the launcher ends it on one node:\n{stderr}");
    assert_no_rank_alive(&s);

    if !common::mpi_is_mpich() {
        eprintln!(
            "SKIPPED (the part with two proxies): HYDRA_LAUNCHER=fork is MPICH's; Open MPI's \
             mpirun ends such a job itself, on one node or several"
        );
        return;
    }
    let hosts = Scratch::new("exit1-hosts");
    let hostfile = hosts.path("hosts");
    std::fs::write(&hostfile, "gang-test-h1:1\ngang-test-h2:1\n").unwrap();
    let s = Scratch::new("exit1-proxies");
    let args =
        ["run", "-n", "2", "--hostfile", hostfile.to_str().unwrap(), "--", fault.to_str().unwrap(), "exit", "1", "1"];
    let out = common::gang_env(&args, &s.0, &[("HYDRA_LAUNCHER", "fork")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(stdout.matches(" of 2 ready").count(), 2, "both ranks were up:\n{stdout}");
    assert!(stderr.contains("gang: mpirun did not end the gang after the failure; gang stopped it"), "{stderr}");
    assert!(stderr.contains("gang: rank 1 failed first: exited with code 1 (attempt 0"), "{stderr}");
    assert_no_rank_alive(&s);
}

#[test]
fn a_world_smaller_than_the_launcher_intended_is_refused_naming_the_variables() {
    // What a program built against another MPI sees under this MPI's launcher: MPI makes
    // it a world of one while the launcher's variables say four.
    let out = Command::new(rank_bin())
        .arg("hello")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("GANG_WORLD_SIZE", "4")
        .env("OMPI_COMM_WORLD_SIZE", "4")
        .env("OMPI_COMM_WORLD_RANK", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_guarded(out, "gang-rank hello (mismatched world)");
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("world of 1") && stderr.contains("GANG_WORLD_SIZE=4"), "{stderr}");
    assert!(
        stderr.contains("this program runs with ") && stderr.contains("but was started by Open MPI's mpirun"),
        "{stderr}"
    );
}

/// The real thing: this build's `gang-rank` under the other MPI's launcher (both are
/// installed by `./dev test`). `gang run` refuses it before anything starts (the program's
/// libraries name its MPI), and started by that launcher directly, every process stops
/// with an error that names both MPIs instead of running as a world of one.
#[test]
fn a_program_under_the_other_mpi_s_launcher_is_refused_naming_both_mpis() {
    let library = gang::mpi::environment::library_version().expect("MPI_Get_library_version");
    let (this, other, other_launcher, other_flags): (&str, &str, &str, &[&str]) = if library.contains("MPICH") {
        ("MPICH", "Open MPI", "mpirun.openmpi", &["--allow-run-as-root"])
    } else {
        ("Open MPI", "MPICH", "mpiexec.mpich", &[])
    };
    let Some(launcher) = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(other_launcher)).find(|p| p.is_file()))
    else {
        eprintln!(
            "SKIPPED: {other_launcher} is not on PATH, so this {this} build cannot be tried under \
             {other}'s launcher (install {other} beside {this}, as ./dev test does)"
        );
        return;
    };
    let s = Scratch::new("other-mpi");
    let out = gang(
        &["run", "-n", "2", "--mpirun", launcher.to_str().unwrap(), "--", rank_bin().to_str().unwrap(), "hello"],
        &s,
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is linked against {this} (")) && stderr.contains(&format!(" is {other} ")),
        "{stderr}"
    );
    assert!(stderr.contains("world of one") && stderr.contains("--mpirun"), "{stderr}");
    assert!(std::fs::read_dir(&s.0).unwrap().next().is_none(), "no run directory for a gang that never started");

    let gang_mpi = if other == "MPICH" { "mpich" } else { "openmpi" };
    let child = Command::new(&launcher)
        .args(other_flags)
        .args(["-n", "2"])
        .arg(rank_bin())
        .arg("hello")
        .env("GANG_WORLD_SIZE", "2")
        .env("GANG_MPI", gang_mpi)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_guarded(child, &format!("{other_launcher} -n 2 gang-rank hello"));
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("this program runs with {this}"))
            && stderr.contains(&format!("but was started by gang's launcher for {other} (GANG_MPI={gang_mpi})")),
        "{stderr}"
    );
}
