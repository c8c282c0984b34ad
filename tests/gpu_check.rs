//! `gang-gpu-check`, the program `bench/gpu/check.sh` runs on a GPU machine, rehearsed here
//! so that the one run on a GPU does not fail on the check's own mistakes: with `--host`
//! the host build of the kernels stands in for the device and every check but NCCL's runs;
//! without a GPU and without `--host` it says "no GPU" and exits 0.
#![cfg(feature = "cuda")]

mod common;

use std::process::Command;

fn check_bin() -> std::path::PathBuf {
    common::target_dir().join("gang-gpu-check")
}

#[test]
fn the_rehearsal_runs_every_check_and_all_pass() {
    let out_dir = common::Scratch::new("gpu-check").path("out");
    let out = Command::new(check_bin())
        .args(["--host", "--rows", "6000", "--batch-size", "512", "--epochs", "1", "--out"])
        .arg(&out_dir)
        .output()
        .expect("gang-gpu-check runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("0 checks failed"), "{stdout}");
    for what in [
        "gang_dense_forward",
        "gang_head_softmax",
        "logistic: two GPU runs give identical bits",
        "mlp64: GPU model vs CPU model",
        "two Local ranks on one GPU",
    ] {
        assert!(stdout.contains(what), "no line for {what}: {stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("gpu-check.json")).unwrap()).unwrap();
    assert_eq!(json["failed"], serde_json::json!([]));
    assert_eq!(json["mlp64: GPU model = CPU model"]["ok"], true);
    // The PyTorch peer's data: numpy's format, as many rows as asked.
    let x = std::fs::read(out_dir.join("data/x.npy")).unwrap();
    assert!(x.starts_with(b"\x93NUMPY") && x.len() > 6000 * 32 * 4, "x.npy");
}

#[test]
fn without_a_gpu_it_says_so_and_exits_0() {
    if gang_gpu::exec::device_count().is_ok_and(|n| n > 0) {
        eprintln!("SKIPPED: this machine has a GPU");
        return;
    }
    let out = Command::new(check_bin()).args(["--out", "/nonexistent/never-written"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.starts_with("no GPU: "), "{stdout}");
}
