//! Training as a real gang (`gang train -n N` through mpirun) and the failure model: a rank
//! killed, hung, or crashing inside a checkpoint, or a damaged newest checkpoint; the
//! launcher restarts the gang, training resumes from the newest complete checkpoint, and
//! the final model is bitwise the model of an uninterrupted run. Plus accuracy against
//! scikit-learn and `gang predict`.

mod common;
mod python;

use common::{assert_success, gang, gang_env, text, Scratch};
use std::path::{Path, PathBuf};
use std::process::Output;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A binary classification set, 20,000 rows x 8 features, in 4 files.
fn dataset(sc: &Scratch) -> PathBuf {
    let data = sc.path("data");
    assert_success(&gang(
        &[
            "gen",
            "-n",
            "2",
            "--rows",
            "20000",
            "--features",
            "8",
            "--classes",
            "2",
            "--partitions",
            "4",
            "--noise",
            "0",
            "--output",
            s(&data),
        ],
        &sc.path("runs"),
    ));
    data
}

/// `gang train` of logistic regression with Adam: 40 steps per epoch at any N that divides
/// 500, 4 epochs, a checkpoint every 30 steps.
fn train(sc: &Scratch, n: &str, data: &Path, tag: &str, fault: Option<&str>, extra: &[&str]) -> (Output, PathBuf) {
    let model = sc.path(&format!("{tag}.safetensors"));
    let ckpt = sc.path(&format!("{tag}-ckpt"));
    // Launch options come first, then the job's own.
    let mut args = vec!["train", "-n", n];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--input",
        s(data),
        "--label",
        "y",
        "--model",
        "logistic",
        "--epochs",
        "4",
        "--batch-size",
        "500",
        "--lr",
        "0.05",
        "--checkpoint-dir",
        s(&ckpt),
        "--checkpoint-every",
        "30",
        "--output",
        s(&model),
    ]);
    let env: Vec<(&str, &str)> = fault.map(|f| ("GANG_FAULT", f)).into_iter().collect();
    (gang_env(&args, &sc.path("runs"), &env), model)
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// Trains at `n` ranks once cleanly and once with `fault` (launch options `extra`); the
/// faulted run must succeed after its restarts and write the same model file, byte for
/// byte. Returns its stdout and stderr.
fn faulted_run_gives_the_clean_model(
    sc: &Scratch,
    data: &Path,
    n: &str,
    fault: &str,
    extra: &[&str],
) -> (String, String) {
    let (clean, reference) = train(sc, n, data, &format!("clean-{n}"), None, &[]);
    assert_success(&clean);
    let (out, model) = train(sc, n, data, &format!("faulted-{n}"), Some(fault), extra);
    assert_success(&out);
    assert!(same_file(&model, &reference), "n={n}, {fault}: the model differs from the uninterrupted one");
    text(&out)
}

#[test]
fn a_killed_rank_is_restarted_and_the_model_is_bitwise_the_uninterrupted_one() {
    let sc = Scratch::new("train-kill");
    let data = dataset(&sc);
    for n in ["2", "4"] {
        let (stdout, stderr) =
            faulted_run_gives_the_clean_model(&sc, &data, n, "rank=1,step=95,kind=kill", &["--max-restarts", "2"]);
        assert!(stderr.contains("attempt 0") && stderr.contains("rank 1") && stderr.contains("SIGKILL"), "{stderr}");
        assert!(stdout.contains("resumed from the checkpoint of step 90"), "{stdout}");
    }
}

#[test]
fn a_hung_rank_is_detected_and_the_restarted_gang_gives_the_same_model() {
    let sc = Scratch::new("train-hang");
    let data = dataset(&sc);
    let extra = ["--max-restarts", "1", "--stall-timeout", "5"];
    let (_, stderr) = faulted_run_gives_the_clean_model(&sc, &data, "2", "rank=0,step=70,kind=hang", &extra);
    assert!(stderr.contains("stalled"), "{stderr}");
}

#[test]
fn a_checkpoint_straggler_slower_than_the_stall_timeout_is_waited_for_not_taken_for_a_stall() {
    let sc = Scratch::new("train-straggler");
    let data = dataset(&sc);
    let (clean, reference) = train(&sc, "2", &data, "clean-2", None, &[]);
    assert_success(&clean);
    // Rank 1 takes 7 s longer to write its shard of the checkpoint of step 60, reporting
    // progress as a slow disk's writer does; rank 0 waits for it in the checkpoint's vote
    // without progress of its own for more than the 3 s stall timeout. No restart allowed.
    let fault = "rank=1,step=60,kind=slow-checkpoint,ms=7000";
    let extra = ["--max-restarts", "0", "--stall-timeout", "3"];
    let (out, model) = train(&sc, "2", &data, "straggler", Some(fault), &extra);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("rank 1 takes 7000 ms longer to write its shard of step 60"), "{stderr}");
    assert!(!stderr.contains("stalled"), "{stderr}");
    assert!(same_file(&model, &reference), "the model differs from the uninterrupted one");
}

#[test]
fn a_damaged_newest_checkpoint_is_passed_over_for_the_previous_one() {
    let sc = Scratch::new("train-corrupt");
    let data = dataset(&sc);
    // At step 90 the checkpoint is written, then damaged, then the rank dies.
    let fault = "rank=0,step=90,kind=corrupt-latest-checkpoint";
    let (stdout, stderr) = faulted_run_gives_the_clean_model(&sc, &data, "2", fault, &["--max-restarts", "1"]);
    assert!(stdout.contains("resumed from the checkpoint of step 60"), "{stdout}\n{stderr}");
}

#[test]
fn a_crash_between_shard_write_and_vote_leaves_a_checkpoint_that_is_never_used() {
    let sc = Scratch::new("train-crash-ckpt");
    let data = dataset(&sc);
    let fault = "rank=1,step=90,kind=crash-during-checkpoint";
    let (stdout, stderr) = faulted_run_gives_the_clean_model(&sc, &data, "2", fault, &["--max-restarts", "1"]);
    assert!(stdout.contains("resumed from the checkpoint of step 60"), "{stdout}\n{stderr}");
}

#[test]
fn an_exhausted_restart_budget_fails_with_the_root_cause() {
    let sc = Scratch::new("train-budget");
    let data = dataset(&sc);
    let (out, model) = train(
        &sc,
        "2",
        &data,
        "doomed",
        Some("rank=1,step=20,kind=exit,attempt=0; rank=1,step=50,kind=exit,attempt=1"),
        &["--max-restarts", "1", "--restart-backoff", "0.1"],
    );
    let stderr = text(&out).1;
    assert!(!out.status.success());
    assert!(stderr.contains("giving up") && stderr.contains("rank 1") && stderr.contains("code 3"), "{stderr}");
    assert!(!model.exists(), "a model was written by a failed job");
}

#[test]
fn logistic_regression_reaches_scikit_learns_log_loss_within_one_percent() {
    let sc = Scratch::new("train-sklearn");
    let data = dataset(&sc);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sklearn_reference.py");
    let reference = python::python().arg(&script).arg(&data).arg("y").output().unwrap();
    assert!(
        reference.status.success(),
        "{} failed (python3 -m pip install scikit-learn pyarrow numpy): {}",
        script.display(),
        String::from_utf8_lossy(&reference.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&reference.stdout).unwrap();
    let sklearn = r["log_loss"].as_f64().unwrap();

    let model = sc.path("model.safetensors");
    let out = assert_success(&gang(
        &[
            "train",
            "-n",
            "2",
            "--no-tag-output",
            "--input",
            s(&data),
            "--label",
            "y",
            "--model",
            "logistic",
            "--epochs",
            "30",
            "--batch-size",
            "2000",
            "--lr",
            "0.02",
            "--output",
            s(&model),
        ],
        &sc.path("runs"),
    ));
    let final_line = out.lines().find(|l| l.starts_with("final: loss ")).unwrap_or_else(|| panic!("{out}"));
    let loss: f64 = final_line["final: loss ".len()..].split([',', ' ']).next().unwrap().parse().unwrap();
    assert!(loss <= sklearn * 1.01, "gang's log-loss {loss} is more than 1% above scikit-learn's {sklearn}");
    assert!(model.exists() && sc.path("model.svg").exists());
}

#[test]
fn predict_applies_the_model_with_exactly_once_output_and_the_model_loads_in_numpy() {
    let sc = Scratch::new("train-predict");
    let data = dataset(&sc);
    let model = sc.path("model.safetensors");
    let out = assert_success(&gang(
        &[
            "train",
            "-n",
            "2",
            "--no-tag-output",
            "--input",
            s(&data),
            "--label",
            "y",
            "--epochs",
            "3",
            "--batch-size",
            "500",
            "--lr",
            "0.05",
            "--output",
            s(&model),
        ],
        &sc.path("runs"),
    ));
    let final_line = out.lines().find(|l| l.starts_with("final: ")).unwrap();
    let acc: f64 = final_line.split("accuracy ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let preds = sc.path("preds");
    assert_success(&gang(
        &["predict", "-n", "4", "--model", s(&model), "--input", s(&data), "--output", s(&preds)],
        &sc.path("runs"),
    ));
    let m = gang::stage::Manifest::read(&preds).unwrap();
    assert_eq!(m.total_rows, 20000);
    // The predictions agree with the labels as often as training said.
    let opts = gang::data::PlanOptions::default();
    let plan = gang::data::PartitionPlan::discover(&[gang::data::Input::parse(s(&preds)).unwrap()], &opts).unwrap();
    let (mut right, mut rows) = (0usize, 0usize);
    for p in &plan.partitions {
        for b in gang::data::read_partition(p, &plan.schema, &opts).unwrap() {
            let b = b.unwrap();
            let col = |n: &str| {
                b.column_by_name(n).unwrap().as_any().downcast_ref::<arrow_array::Int64Array>().unwrap().clone()
            };
            let (y, pred) = (col("y"), col("prediction"));
            right += (0..b.num_rows()).filter(|&i| y.value(i) == pred.value(i)).count();
            rows += b.num_rows();
        }
    }
    assert!((right as f64 / rows as f64 - acc).abs() < 1e-3, "predictions {right}/{rows} vs training accuracy {acc}");

    // The model file is plain safetensors: numpy reads it with nothing but json and the header.
    let code = r#"
import json, struct, sys
import numpy as np
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
meta = h.pop('__metadata__')
w = h['layer0.weight']
a = np.frombuffer(b[8 + n + w['data_offsets'][0]: 8 + n + w['data_offsets'][1]], dtype='<f4').reshape(w['shape'])
print(json.dumps({'model': meta['model'], 'shape': list(a.shape), 'finite': bool(np.isfinite(a).all())}))
"#;
    let out = python::python().arg("-c").arg(code).arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["model"], "logistic");
    assert_eq!(j["shape"], serde_json::json!([1, 8]));
    assert_eq!(j["finite"], true);
}

#[test]
fn ckpt_ls_and_verify_report_a_damaged_newest_checkpoint_and_where_a_restore_starts() {
    let sc = Scratch::new("train-ckpt-cli");
    let data = dataset(&sc);
    let (out, _) = train(&sc, "2", &data, "m", None, &[]);
    assert_success(&out);
    let ckpt = sc.path("m-ckpt");
    let runs = sc.path("runs");
    let ls = assert_success(&gang(&["ckpt", "ls", s(&ckpt)], &runs));
    assert!(ls.contains("step-00000160") && ls.contains("LATEST") && ls.contains("complete"), "{ls}");
    let ok = gang(&["ckpt", "verify", s(&ckpt)], &runs);
    assert!(ok.status.success(), "{}", text(&ok).0);
    // Damage the newest checkpoint's shard: verify fails and names the fallback.
    let shard = ckpt.join("step-00000160").join("rank-0.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 4..].iter_mut().for_each(|b| *b ^= 0xff);
    std::fs::write(&shard, bytes).unwrap();
    let bad = gang(&["ckpt", "verify", s(&ckpt)], &runs);
    let stdout = text(&bad).0;
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("DAMAGED") && stdout.contains("a restore would start from step 150"), "{stdout}");
}

/// `--device cuda` on a machine without a GPU (every development and CI machine): every
/// rank fails at once with what is missing, the class is usage (no restart), no model is
/// written. `--device auto` (the default) trains on the CPU and says nothing of a GPU.
#[cfg(feature = "cuda")]
#[test]
fn device_cuda_without_a_gpu_is_one_clear_usage_error_and_auto_trains_on_the_cpu() {
    if gang_gpu::exec::driver_available().is_ok() {
        eprintln!("SKIPPED: this machine has the CUDA driver; the test is for machines without one");
        return;
    }
    let sc = Scratch::new("train-device");
    let data = dataset(&sc);
    let (out, model) = train(&sc, "2", &data, "cuda", None, &["--max-restarts", "2", "--device", "cuda"]);
    let stderr = text(&out).1;
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--device cuda") && stderr.contains("libcuda.so.1"), "{stderr}");
    assert!(stderr.contains("usage"), "a missing GPU is not restarted: {stderr}");
    assert!(!stderr.contains("restarting"), "{stderr}");
    assert!(!model.exists(), "a model was written by a failed job");

    let (out, model) = train(&sc, "2", &data, "auto", None, &["--device", "auto"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && model.is_file(), "{stdout}\n{stderr}");
    assert!(!stderr.contains("GPU"), "{stderr}");
}

/// The GPU training path (`--device cuda-host`: gang's CUDA kernels compiled for the CPU,
/// through the same device buffers, host-staged allreduce and checkpoint read-back) under
/// real mpirun: a rank killed mid-training, the gang restarted, and the model is bitwise
/// the uninterrupted run's.
#[cfg(feature = "cuda")]
#[test]
fn the_gpu_path_restarts_after_a_killed_rank_with_the_uninterrupted_model() {
    let sc = Scratch::new("train-gpu-path");
    let data = dataset(&sc);
    let (clean, reference) = train(&sc, "2", &data, "clean-gpu-path", None, &["--device", "cuda-host"]);
    let stderr = text(&clean).1;
    assert_success(&clean);
    assert!(stderr.contains("host build"), "{stderr}");
    let (out, model) = train(
        &sc,
        "2",
        &data,
        "faulted-gpu-path",
        Some("rank=1,step=95,kind=kill"),
        &["--max-restarts", "2", "--device", "cuda-host"],
    );
    let stdout = assert_success(&out);
    assert!(stdout.contains("resumed from the checkpoint of step 90"), "{stdout}");
    assert!(same_file(&model, &reference), "the restarted GPU-path model differs from the uninterrupted one");
}
