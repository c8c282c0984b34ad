//! Checkpoints and barrier sections under real `mpirun` (through `gang run`): a clean run,
//! a rank that dies between writing its shard and the vote, a damaged newest checkpoint,
//! a restore onto another world size, an error or a panic inside a section, and a
//! simulation's own f64 buffers saved and restored in place.
//!
//! Needs the `gang` launcher (`cargo test --workspace` builds it) and Open MPI's `mpirun`;
//! without either these tests fail and say so.

mod common;

use common::{assert_success, example, text, wait_guarded, Scratch};
use gang::checkpoint;
use gang_protocol::{FailureKind, RunDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `gang run -n N -- ckpt_demo ARGS` with `GANG_FAULT` set to `fault` (or unset).
fn demo(n: usize, args: &[&str], fault: Option<&str>, runs: &Path) -> Output {
    launch("ckpt_demo", n, args, fault, runs)
}

/// `gang run -n N -- PROGRAM ARGS` (an example) with `GANG_FAULT` set to `fault` (or unset).
fn launch(program: &str, n: usize, args: &[&str], fault: Option<&str>, runs: &Path) -> Output {
    common::require_mpirun();
    let mut cmd = Command::new(common::gang_bin());
    cmd.args(["run", "-n", &n.to_string(), "--"])
        .arg(example(program))
        .args(args)
        .env("GANG_RUN_ROOT", runs)
        .env_remove("GANG_FAULT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(f) = fault {
        cmd.env("GANG_FAULT", f);
    }
    wait_guarded(cmd.spawn().expect("start gang"), &format!("gang run -n {n} {program} {args:?}"))
}

fn final_bits(stdout: &str) -> String {
    // The launcher prefixes each line with `[rank r] `.
    stdout
        .lines()
        .find_map(|l| l.split_once("final w bits:"))
        .unwrap_or_else(|| panic!("no final line in:\n{stdout}"))
        .1
        .trim()
        .to_string()
}

/// The final weights of an uninterrupted run of 10 steps on `n` ranks.
fn reference(n: usize, s: &Scratch) -> String {
    let dir = s.path(&format!("reference-{n}"));
    let out = demo(n, &[dir.to_str().unwrap(), "10", "2"], None, &s.path("runs-ref"));
    let stdout = assert_success(&out);
    assert!(stdout.contains("fresh start"), "{stdout}");
    final_bits(&stdout)
}

fn latest(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("LATEST")).unwrap().trim().to_string()
}

/// The one run directory under `runs`.
fn run_dir(runs: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(runs).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(v.len(), 1, "expected one run in {}", runs.display());
    v.remove(0)
}

#[test]
fn a_clean_run_commits_verifiable_checkpoints_at_2_and_4_ranks() {
    let s = Scratch::new("ckpt-mpi-clean");
    for n in [2, 4] {
        let dir = s.path(&format!("ckpt-{n}"));
        let out = demo(n, &[dir.to_str().unwrap(), "10", "2"], None, &s.path(&format!("runs-{n}")));
        assert_success(&out);
        assert_eq!(latest(&dir), "step-00000010");
        let report = checkpoint::verify(&dir).unwrap();
        assert!(report.is_ok(), "{report}");
        let steps: Vec<(u64, bool, Option<usize>)> =
            checkpoint::list(&dir).unwrap().into_iter().map(|i| (i.step, i.complete, i.world_size)).collect();
        assert_eq!(steps, [(8, true, Some(n)), (10, true, Some(n))], "retention 2");
    }
    // Sharded state does not restore onto another world size: a clear error, not garbage.
    let out = demo(4, &[s.path("ckpt-2").to_str().unwrap(), "12", "2"], None, &s.path("runs-wrong"));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(gang::EXIT_RANK_ERROR), "{stderr}");
    assert!(stderr.contains("same world size") && stderr.contains("-n 2"), "{stderr}");
}

#[test]
fn a_rank_killed_between_its_shard_and_the_vote_leaves_that_checkpoint_unused() {
    let s = Scratch::new("ckpt-mpi-crash");
    let want = reference(2, &s);
    let dir = s.path("ckpt");
    let d = dir.to_str().unwrap();
    let out = demo(2, &[d, "10", "2"], Some("rank=1,step=6,kind=crash-during-checkpoint"), &s.path("runs-1"));
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "the injected crash must fail the run:\n{stderr}");
    assert!(stderr.contains("dies after writing its shard of step 6"), "{stderr}");
    assert_eq!(latest(&dir), "step-00000004", "LATEST never moved to the uncommitted checkpoint");
    assert!(!dir.join("step-00000006").exists());
    assert!(!dir.join("step-00000006.tmp-a0").join("MANIFEST.json").exists());
    assert!(
        dir.join("step-00000006.tmp-a0").join("rank-1.safetensors").is_file(),
        "rank 1 wrote its shard before dying"
    );

    let out = demo(2, &[d, "10", "2"], None, &s.path("runs-2"));
    let stdout = assert_success(&out);
    assert!(stdout.contains("restored step 4"), "{stdout}");
    assert_eq!(final_bits(&stdout), want, "the resumed run ends with the same weights, bit for bit");
    assert!(checkpoint::verify(&dir).unwrap().is_ok());
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let s = Scratch::new("ckpt-mpi-corrupt");
    let want = reference(2, &s);
    let dir = s.path("ckpt");
    let d = dir.to_str().unwrap();
    let out = demo(2, &[d, "10", "2"], Some("rank=0,step=6,kind=corrupt-latest-checkpoint"), &s.path("runs-1"));
    assert!(!out.status.success(), "the injected fault kills rank 0");
    assert_eq!(latest(&dir), "step-00000006", "step 6 was committed, then damaged");
    assert_eq!(checkpoint::verify(&dir).unwrap().restorable, Some(4));

    let out = demo(2, &[d, "10", "2"], None, &s.path("runs-2"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("restored step 4"), "{stdout}");
    assert!(stderr.contains("step-00000006 is damaged") && stderr.contains("rank-0.safetensors"), "{stderr}");
    assert_eq!(final_bits(&stdout), want);
}

#[test]
fn an_error_or_a_panic_inside_a_section_is_recorded_with_its_section_and_step() {
    for (kind, code, failure_kind) in
        [("error", gang::EXIT_RANK_ERROR, FailureKind::Error), ("panic", gang::EXIT_RANK_PANIC, FailureKind::Panic)]
    {
        let s = Scratch::new(&format!("section-mpi-{kind}"));
        let runs = s.path("runs");
        let out = demo(4, &[s.path("ckpt").to_str().unwrap(), "10", "2", kind, "5", "2"], None, &runs);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        let failures = RunDir::open(run_dir(&runs)).failures().unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        let f = &failures[0];
        assert_eq!((f.rank, f.kind), (2, failure_kind));
        let want = match kind {
            "error" => "section train step 5: injected error on rank 2".to_string(),
            _ => "section train step 5: panicked: injected panic on rank 2".to_string(),
        };
        assert!(f.message.starts_with(&want), "{:?}", f.message);
    }
}

#[test]
fn a_sharded_f64_field_is_saved_from_and_restored_into_its_buffers_on_2_ranks() {
    let s = Scratch::new("ckpt-mpi-fields");
    let dir = s.path("ckpt");
    let d = dir.to_str().unwrap();
    for (i, step) in ["3", "6"].into_iter().enumerate() {
        assert_success(&launch("ckpt_fields", 2, &[d, "save", step], None, &s.path(&format!("runs-save-{i}"))));
    }
    assert_eq!(latest(&dir), "step-00000006");
    assert!(checkpoint::verify(&dir).unwrap().is_ok());
    let stdout = assert_success(&launch("ckpt_fields", 2, &[d, "restore", "6"], None, &s.path("runs-restore")));
    for r in 0..2 {
        assert!(stdout.contains(&format!("rank {r} restored step 6: {} values ok", 6 + r + 2)), "{stdout}");
    }
    // A damaged shard of rank 1 in step 6: both ranks fall back to step 3 in place.
    let shard = dir.join("step-00000006").join("rank-1.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x10;
    std::fs::write(&shard, bytes).unwrap();
    let out = launch("ckpt_fields", 2, &[d, "restore", "3"], None, &s.path("runs-fallback"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("rank 1 restored step 3: 9 values ok"), "{stdout}");
    assert!(stderr.contains("step-00000006 is damaged") && stderr.contains("rank-1.safetensors"), "{stderr}");
}
