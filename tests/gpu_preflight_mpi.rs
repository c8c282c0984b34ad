//! The GPU placement check (`gang::gpu_bind::preflight`) in a real gang under `gang run`
//! (mpirun), with device lists injected by `examples/gpu_preflight.rs`: two ranks on one
//! GPU, or a rank without one, fail every rank at once with the same table; distinct GPUs,
//! or sharing allowed, pass.
#![cfg(feature = "cuda")]

mod common;

use common::{assert_success, example, gang_env, text, Scratch};

fn run(s: &Scratch, uuids: &str, n: &str, extra: &[&str]) -> std::process::Output {
    let bin = example("gpu_preflight");
    let mut args = vec!["run", "-n", n, "--", bin.to_str().unwrap()];
    args.extend_from_slice(extra);
    gang_env(&args, &s.path("runs"), &[("GANG_TEST_GPU_UUIDS", uuids)])
}

#[test]
fn distinct_gpus_pass_and_two_ranks_on_one_gpu_fail_every_rank_with_the_plan() {
    let s = Scratch::new("preflight");
    let out = assert_success(&run(&s, "GPU-aaaa,GPU-bbbb", "2", &[]));
    assert!(out.contains("rank 0: placement ok") && out.contains("rank 1: placement ok"), "{out}");

    let out = run(&s, "GPU-aaaa,GPU-aaaa,GPU-cccc", "3", &[]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(!stdout.contains("placement ok"), "{stdout}");
    assert!(stderr.contains("GPU placement check failed") && stderr.contains("GPU-aaaa"), "{stderr}");
    assert!(stderr.contains("ranks 0, 1") || stderr.contains("ranks [0, 1]") || stderr.contains("0 and 1"), "{stderr}");
    assert!(stderr.contains("usage failure"), "a placement error is not restarted: {stderr}");

    let out = assert_success(&run(&s, "GPU-aaaa", "2", &["--allow-sharing"]));
    assert!(out.contains("rank 1: placement ok"), "{out}");
}

#[test]
fn a_rank_without_a_gpu_fails_the_gang_when_gpus_are_demanded() {
    let s = Scratch::new("preflight-missing");
    let out = run(&s, "GPU-aaaa,", "2", &[]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("sees no GPU") || stderr.contains("no GPU"), "{stderr}");
    assert!(stderr.contains("rank 1"), "{stderr}");
}
