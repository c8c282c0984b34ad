//! `gang-gpu-check`: validates gang's GPU path on a machine with a GPU in one run
//! (`bench/gpu/check.sh` builds nothing; it runs this binary, built without MPI or HDF5,
//! then the PyTorch peer).
//!
//! 1. every CUDA kernel against its CPU twin (the host build of the same source) on random
//!    inputs, within a bound per kind of arithmetic;
//! 2. `gang::train::train` of logistic regression and an MLP(64) on 2,000,000 x 32 rows on
//!    the GPU and on the CPU: the models within a stated tolerance, epoch times;
//! 3. determinism: two GPU runs give the same bits;
//! 4. two ranks sharing the GPU (in-process Local ranks), gradients staged through host
//!    memory: both end with the same model;
//! 5. NCCL allreduce of 64 MiB at world size 1 (when NCCL loads), timed;
//! 6. the data written as `.npy` for the PyTorch peer (`bench/gpu/torch_peer.py`).
//!
//! Prints a table and writes `gpu-check.json` into `--out`. Exits 0 with "no GPU" where
//! there is none, 1 when a check fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use gang::train::{self, DeviceChoice, Labels, Shard, TrainConfig};
use gang::{execute, Config};
use gang_gpu::exec::{self, Buf, CudaDevice, Device, Launch};
use gang_kernels::{ModelKind, Optimizer, Output, SplitMix64};
use serde_json::{json, Value};

struct Check {
    results: BTreeMap<String, Value>,
    failed: Vec<String>,
}

impl Check {
    fn record(&mut self, name: &str, ok: bool, detail: Value, line: String) {
        println!("{} {line}", if ok { "  ok  " } else { " FAIL " });
        if !ok {
            self.failed.push(name.to_string());
        }
        self.results.insert(name.to_string(), json!({ "ok": ok, "detail": detail }));
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: gang-gpu-check [--out DIR] [--rows N] [--epochs E] [--batch-size B] [--skip-cpu]\n\
         Validates gang's GPU kernels, training and NCCL on this machine's first GPU; writes\n\
         DIR/gpu-check.json and DIR/data/{{x,y}}.npy for bench/gpu/torch_peer.py.\n\
         --rows N        rows of the training data (default 2000000; 32 features)\n\
         --epochs E      epochs of each training run (default 2)\n\
         --batch-size B  rows per step (default 8192)\n\
         --skip-cpu      do not train on the CPU (no model comparison)\n\
         --host          a rehearsal without a GPU: the host build of the kernels stands in for\n\
                         the device (every check but NCCL's runs, slowly; use --rows 20000)"
    );
    std::process::exit(2)
}

fn main() {
    let mut out = PathBuf::from("gpu-check-out");
    let (mut rows, mut epochs, mut batch, mut skip_cpu, mut host) = (2_000_000usize, 2u64, 8192usize, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--out" => out = PathBuf::from(val()),
            "--rows" => rows = val().parse().unwrap_or_else(|_| usage()),
            "--epochs" => epochs = val().parse().unwrap_or_else(|_| usage()),
            "--batch-size" => batch = val().parse().unwrap_or_else(|_| usage()),
            "--skip-cpu" => skip_cpu = true,
            "--host" => host = true,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let count = match exec::device_count() {
        _ if host => 0,
        Ok(n) if n > 0 => n,
        Ok(_) => {
            println!("no GPU: the CUDA driver shows no device");
            return;
        }
        Err(e) => {
            println!("no GPU: {e}");
            return;
        }
    };
    std::fs::create_dir_all(out.join("data")).expect("the output directory");
    let mut c = Check { results: BTreeMap::new(), failed: Vec::new() };
    let started = Instant::now();
    let (dev, gpu) = if host {
        println!("device: the host build of the kernels (a rehearsal of the check without a GPU)");
        (Device::Host, DeviceChoice::CudaHost)
    } else {
        match CudaDevice::open(0) {
            Ok(d) => (Device::Cuda(d), DeviceChoice::Cuda),
            Err(e) => {
                println!(" FAIL opening cuda:0: {e}");
                std::process::exit(1);
            }
        }
    };
    println!("device: {} ({count} visible)", dev.describe());
    if let Ok(image) = gang_gpu::nvrtc::module_image(9, 0) {
        let spills: Vec<_> = image.spilling().map(|k| k.name.clone()).collect();
        println!("NVRTC {:?}: {} kernels for sm_90, spilling: {spills:?}", image.nvrtc_version, image.kernels.len());
    }

    let json_path = out.join("gpu-check.json");
    section(&mut c, &json_path, "kernels", || {
        let mut k = Check { results: BTreeMap::new(), failed: Vec::new() };
        kernels_against_their_twins(&dev, &mut k);
        k
    });
    drop(dev);

    // The training data: learnable, deterministic.
    let features = 32;
    let t0 = Instant::now();
    let (x, y) = data(rows, features, 7);
    println!("data: {rows} x {features} in {:.2} s", t0.elapsed().as_secs_f64());
    write_npy(&out.join("data/x.npy"), &x, &[rows, features]);
    write_npy(&out.join("data/y.npy"), &y.iter().map(|&v| v as f32).collect::<Vec<_>>(), &[rows]);
    let shard = Shard { x, labels: Labels::Class(y), rows, features };

    let models =
        [("logistic", ModelKind::Logistic), ("mlp64", ModelKind::Mlp { hidden: vec![64], outputs: Output::Binary })];
    // The CPU baselines first: a GPU run narrows the process's threads to its GPU's cores.
    let mut cpu_runs = Vec::new();
    for (name, kind) in &models {
        let run = if skip_cpu {
            None
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                train_once(&shard, kind, epochs, batch, DeviceChoice::Cpu, 1).remove(0)
            }))
            .map_err(|_| println!(" FAIL {name}: training on the CPU panicked"))
            .ok()
        };
        cpu_runs.push(run);
    }
    for ((name, kind), cpu) in models.iter().zip(cpu_runs) {
        section(&mut c, &json_path, name, || {
            let mut k = Check { results: BTreeMap::new(), failed: Vec::new() };
            training(&mut k, name, kind, &shard, epochs, batch, cpu, gpu);
            k
        });
    }
    section(&mut c, &json_path, "streamed", || {
        let mut k = Check { results: BTreeMap::new(), failed: Vec::new() };
        streamed_shard(&mut k, &shard, epochs, batch, gpu);
        k
    });
    section(&mut c, &json_path, "sharing", || {
        let mut k = Check { results: BTreeMap::new(), failed: Vec::new() };
        sharing_ranks(&mut k, &shard, batch, gpu);
        k
    });
    if host {
        println!(" skip  NCCL allreduce (no GPU in a rehearsal)");
    } else {
        section(&mut c, &json_path, "nccl", || {
            let mut k = Check { results: BTreeMap::new(), failed: Vec::new() };
            nccl_allreduce(&mut k);
            k
        });
    }

    c.results.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
    write_results(&c, &json_path);
    println!("{} checks failed; {} ({:.1} s)", c.failed.len(), json_path.display(), started.elapsed().as_secs_f64());
    if !c.failed.is_empty() {
        std::process::exit(1);
    }
}

fn write_results(c: &Check, path: &std::path::Path) {
    let mut all = c.results.clone();
    all.insert("failed".into(), json!(c.failed));
    gang_protocol::durable::write_file(path, serde_json::to_string_pretty(&all).expect("json").as_bytes())
        .expect("writing the results");
}

/// Runs one part of the check; a panic in it is a failed check of that part, not the end of
/// the run; the results so far are written after each part (a timeout still leaves them).
fn section(c: &mut Check, path: &std::path::Path, name: &str, f: impl FnOnce() -> Check) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(k) => {
            c.results.extend(k.results);
            c.failed.extend(k.failed);
        }
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            println!(" FAIL {name}: panicked: {why}");
            c.failed.push(name.to_string());
            c.results.insert(name.to_string(), json!({ "ok": false, "detail": { "panic": why } }));
        }
    }
    write_results(c, path);
}

/// Learnable binary data: the label is the sign of a fixed linear form, 10% flipped.
fn data(rows: usize, features: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut rng = SplitMix64::new(seed);
    let w: Vec<f32> = (0..features).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    let mut x = Vec::with_capacity(rows * features);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let start = x.len();
        x.extend((0..features).map(|_| rng.next_f32() * 2.0 - 1.0));
        let s: f32 = x[start..].iter().zip(&w).map(|(a, b)| a * b).sum();
        let flip = rng.next_f32() < 0.1;
        y.push(i64::from((s > 0.0) != flip));
    }
    (x, y)
}

fn write_npy(path: &std::path::Path, v: &[f32], shape: &[usize]) {
    let dims = shape.iter().map(|d| format!("{d},")).collect::<String>();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + v.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for f in v {
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    gang_protocol::durable::write_file(path, &bytes).expect("writing the data for the peer");
}

fn random(rng: &mut SplitMix64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| lo + (hi - lo) * rng.next_f32()).collect()
}

/// Largest |a - b| / (|b| + floor).
fn rel(a: &[f32], b: &[f32], floor: f32) -> f64 {
    a.iter().zip(b).map(|(a, b)| f64::from((a - b).abs() / (b.abs() + floor))).fold(0.0, f64::max)
}

/// The error measure of a comparison: exact arithmetic (products and sums in the same
/// order on both sides) relatively; results of expf/logf (within 2 ulp on the GPU,
/// correctly rounded on the host) as |a - b| / (1 + |b|), since a loss or a derivative near
/// 0 is there the difference of two numbers near 1.
#[derive(Clone, Copy)]
enum Measure {
    Relative,
    Mixed,
}

fn error(m: Measure, a: &[f32], b: &[f32]) -> f64 {
    match m {
        Measure::Relative => rel(a, b, 1e-3),
        Measure::Mixed => rel(a, b, 1.0),
    }
}

fn up(d: &Device, v: &[f32]) -> Buf<f32> {
    d.upload(v).expect("copy to the device")
}
fn zeros(d: &Device, n: usize) -> Buf<f32> {
    d.zeros(n).expect("allocation")
}
fn run(d: &Device, l: Launch<'_>) {
    d.launch(l).expect("launch");
}
fn back(d: &Device, bufs: &[&Buf<f32>]) -> Vec<f32> {
    bufs.iter().flat_map(|b| d.to_vec(b).expect("copy from the device")).collect()
}

type Case<'a> = (&'static str, Measure, f64, Box<dyn Fn(&Device) -> Vec<f32> + 'a>);

fn kernels_against_their_twins(dev: &Device, c: &mut Check) {
    let mut rng = SplitMix64::new(1);
    let (n, inp, out, k, seg) = (3000usize, 48usize, 40usize, 5usize, 64usize);
    // Bounds: products and sums in a fixed order are the same operations on both sides
    // (NVRTC without contraction; fmaf where the source asks): relative error 1e-6. The
    // heads' expf/log1pf/logf are within 2 ulp on the GPU: |a - b| / (1 + |b|) <= 1e-6.
    let x = random(&mut rng, n * inp, -1.0, 1.0);
    let w = random(&mut rng, out * inp, -0.5, 0.5);
    let b = random(&mut rng, out, -0.1, 0.1);
    let d = random(&mut rng, n * out, -1.0, 1.0);
    let z = random(&mut rng, n * k, -8.0, 8.0);
    let t01: Vec<f32> = (0..n).map(|_| f32::from(rng.next_f32() < 0.5)).collect();
    let tk: Vec<f32> = (0..n).map(|_| (rng.next_f32() * k as f32).floor().min(k as f32 - 1.0)).collect();
    let segs = n.div_ceil(seg);
    let len = out * inp + out;
    let (x, w, b, d, z, t01, tk) = (&x, &w, &b, &d, &z, &t01, &tk);

    let cases: Vec<Case<'_>> = vec![
        (
            "gang_dense_forward",
            Measure::Relative,
            1e-6,
            Box::new(move |dv: &Device| {
                let (xb, wb, bb, mut zb) = (up(dv, x), up(dv, w), up(dv, b), zeros(dv, n * out));
                run(dv, Launch::dense_forward(xb.all(), wb.all(), bb.all(), n, inp, out, true, zb.all_mut()).unwrap());
                back(dv, &[&zb])
            }),
        ),
        (
            "gang_dense_grad_partial, gang_sum_segments",
            Measure::Relative,
            1e-6,
            Box::new(move |dv: &Device| {
                let (db, xb, mut pb, mut gb) = (up(dv, d), up(dv, x), zeros(dv, segs * len), zeros(dv, len));
                run(dv, Launch::dense_grad_partial(db.all(), xb.all(), n, inp, out, seg, pb.all_mut()).unwrap());
                run(dv, Launch::sum_segments(pb.all(), segs, len, gb.all_mut()).unwrap());
                back(dv, &[&pb, &gb])
            }),
        ),
        (
            "gang_dense_backward_input",
            Measure::Relative,
            1e-6,
            Box::new(move |dv: &Device| {
                let (db, wb, ab, mut pb) = (up(dv, d), up(dv, w), up(dv, x), zeros(dv, n * inp));
                run(dv, Launch::dense_backward_input(db.all(), wb.all(), ab.all(), n, inp, out, pb.all_mut()).unwrap());
                back(dv, &[&pb])
            }),
        ),
        (
            "gang_head_binary",
            Measure::Mixed,
            1e-6,
            Box::new(move |dv: &Device| {
                let (zb, tb) = (up(dv, &z[..n]), up(dv, t01));
                let (mut db, mut lb, mut cb) = (zeros(dv, n), zeros(dv, n), zeros(dv, n));
                run(
                    dv,
                    Launch::head("gang_head_binary", zb.all(), tb.all(), n, db.all_mut(), lb.all_mut(), cb.all_mut())
                        .unwrap(),
                );
                back(dv, &[&db, &lb, &cb])
            }),
        ),
        (
            "gang_head_regression",
            Measure::Relative,
            1e-6,
            Box::new(move |dv: &Device| {
                let (zb, tb) = (up(dv, &z[..n]), up(dv, &x[..n]));
                let (mut db, mut lb, mut cb) = (zeros(dv, n), zeros(dv, n), zeros(dv, n));
                run(
                    dv,
                    Launch::head(
                        "gang_head_regression",
                        zb.all(),
                        tb.all(),
                        n,
                        db.all_mut(),
                        lb.all_mut(),
                        cb.all_mut(),
                    )
                    .unwrap(),
                );
                back(dv, &[&db, &lb, &cb])
            }),
        ),
        (
            "gang_head_softmax",
            Measure::Mixed,
            1e-6,
            Box::new(move |dv: &Device| {
                let (zb, tb) = (up(dv, z), up(dv, tk));
                let (mut db, mut lb, mut cb) = (zeros(dv, n * k), zeros(dv, n), zeros(dv, n));
                run(
                    dv,
                    Launch::head_softmax(zb.all(), tb.all(), n, k, db.all_mut(), lb.all_mut(), cb.all_mut()).unwrap(),
                );
                back(dv, &[&db, &lb, &cb])
            }),
        ),
    ];
    for (name, measure, bound, case) in cases {
        let (gpu, cpu) = (case(dev), case(&Device::Host));
        let err = error(measure, &gpu, &cpu);
        c.record(
            name,
            err <= bound,
            json!({ "max_rel_err": err, "bound": bound }),
            format!("{name:<45} max rel err {err:.2e} (bound {bound:.0e})"),
        );
    }
    // The elementwise and reduction kernels in one pipeline (the optimizers, the gathers,
    // softmax and sigmoid in place, the f64 sums).
    pipelines(dev, c, &mut rng);
}

/// Sequences of launches on both devices, compared at the end.
fn pipelines(dev: &Device, c: &mut Check, rng: &mut SplitMix64) {
    let n = 5000usize;
    let p0 = random(rng, n, -1.0, 1.0);
    let g = random(rng, n, -1.0, 1.0);
    let run = |d: &Device| -> Vec<f32> {
        let mut p = d.upload(&p0).unwrap();
        let gb = d.upload(&g).unwrap();
        let mut m = d.zeros::<f32>(n).unwrap();
        let mut v = d.zeros::<f32>(n).unwrap();
        for step in 1..=5i32 {
            let bc1 = 1.0 - 0.9f64.powi(step);
            let bc2 = 1.0 - 0.999f64.powi(step);
            let coef = [(0.01 / bc1) as f32, (1.0 / bc2.sqrt()) as f32, 1.0 - 0.01 * 0.1, 0.9, 0.999, 1e-8, 0.5];
            d.launch(Launch::adam(p.all_mut(), m.all_mut(), v.all_mut(), gb.all(), n, coef).unwrap()).unwrap();
            d.launch(Launch::sgd_momentum(p.all_mut(), m.all_mut(), gb.all(), n, 0.05, 0.9, 1e-3, 0.5).unwrap())
                .unwrap();
            d.launch(Launch::sgd(p.all_mut(), gb.all(), n, 0.05, 1e-3, 0.5).unwrap()).unwrap();
        }
        // Gathers, softmax and sigmoid in place, the f64 sums.
        let rows: Vec<i64> = (0..n as i64 / 5).map(|r| (r * 7919) % (n as i64 / 5)).collect();
        let rb = d.upload(&rows).unwrap();
        let mut gathered = d.zeros::<f32>(n).unwrap();
        d.launch(Launch::gather_rows(p.all(), n / 5, rb.all(), n / 5, 5, gathered.all_mut()).unwrap()).unwrap();
        let mut gv = d.zeros::<f32>(n / 5).unwrap();
        d.launch(Launch::gather_values(p.all(), n, rb.all(), n / 5, gv.all_mut()).unwrap()).unwrap();
        d.launch(Launch::softmax_rows(gathered.all_mut(), n / 5, 5).unwrap()).unwrap();
        d.launch(Launch::sigmoid(gv.all_mut(), n / 5).unwrap()).unwrap();
        let mut part = d.zeros::<f64>(n.div_ceil(64)).unwrap();
        let mut acc = d.zeros::<f64>(1).unwrap();
        d.launch(Launch::sum_rows_f64(p.all(), n, 64, part.all_mut()).unwrap()).unwrap();
        d.launch(Launch::accumulate_f64(part.all(), n.div_ceil(64), acc.all_mut()).unwrap()).unwrap();
        let mut seg_out = d.zeros::<f32>(n / 5).unwrap();
        d.launch(Launch::sum_segments(gathered.all(), 5, n / 5, seg_out.all_mut()).unwrap()).unwrap();
        let mut outv = d.to_vec(&p).unwrap();
        outv.extend(d.to_vec(&gathered).unwrap());
        outv.extend(d.to_vec(&gv).unwrap());
        outv.extend(d.to_vec(&seg_out).unwrap());
        outv.push(d.to_vec(&acc).unwrap()[0] as f32);
        outv
    };
    let (gpu, cpu) = (run(dev), run(&Device::Host));
    let err = error(Measure::Mixed, &gpu, &cpu);
    let bound = 1e-6;
    c.record(
        "optimizers+gathers+softmax+sigmoid+sums",
        err <= bound,
        json!({ "max_rel_err": err, "bound": bound }),
        format!("{:<45} max rel err {err:.2e} (bound {bound:.0e})", "optimizers, gathers, softmax, sigmoid, sums"),
    );
}

struct Run {
    params: Vec<f32>,
    loss: f64,
    epoch_seconds: Vec<f64>,
    seconds: f64,
}

fn train_once(
    shard: &Shard,
    kind: &ModelKind,
    epochs: u64,
    batch: usize,
    device: DeviceChoice,
    world: usize,
) -> Vec<Run> {
    let cfg = TrainConfig::try_new(kind.clone(), epochs, batch)
        .unwrap()
        .with_optimizer(Optimizer::adam(0.01))
        .unwrap()
        .with_seed(3)
        .with_device(device)
        // Local ranks of the check share the one GPU.
        .with_gpu_sharing(world > 1);
    execute(Config::local(world), |ctx| {
        // Each rank takes its part of the rows.
        let per = shard.rows / ctx.world();
        let part = Shard {
            x: shard.x[ctx.rank() * per * shard.features..(ctx.rank() + 1) * per * shard.features].to_vec(),
            labels: match &shard.labels {
                Labels::Class(v) => Labels::Class(v[ctx.rank() * per..(ctx.rank() + 1) * per].to_vec()),
                _ => unreachable!("the check's data has class labels"),
            },
            rows: per,
            features: shard.features,
        };
        let t = Instant::now();
        let report = train::train(ctx, &part, &cfg, |_| {})?;
        Ok(Run {
            params: report.model.params().to_vec(),
            loss: report.final_stats.mean_loss(),
            epoch_seconds: report.epochs.iter().map(|e| e.seconds).collect(),
            seconds: t.elapsed().as_secs_f64(),
        })
    })
    .unwrap_or_else(|e| panic!("training {kind} on {device:?}: {e}"))
}

#[allow(clippy::too_many_arguments)]
fn training(
    c: &mut Check,
    name: &str,
    kind: &ModelKind,
    shard: &Shard,
    epochs: u64,
    batch: usize,
    cpu: Option<Run>,
    device: DeviceChoice,
) {
    let gpu = train_once(shard, kind, epochs, batch, device, 1).remove(0);
    let again = train_once(shard, kind, epochs, batch, device, 1).remove(0);
    let same = gpu.params.iter().map(|p| p.to_bits()).eq(again.params.iter().map(|p| p.to_bits()));
    c.record(
        &format!("{name}: deterministic"),
        same,
        json!({ "identical": same }),
        format!("{name}: two GPU runs give {} bits", if same { "identical" } else { "DIFFERENT" }),
    );
    let mut detail = json!({
        "gpu_epoch_seconds": gpu.epoch_seconds, "gpu_seconds": gpu.seconds, "gpu_final_loss": gpu.loss,
        "batch_size": batch, "epochs": epochs, "rows": shard.rows,
    });
    println!(
        "        {name}: GPU epochs {:?} s, final loss {:.6}",
        gpu.epoch_seconds.iter().map(|s| (s * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        gpu.loss
    );
    if let Some(cpu) = cpu {
        // Stated tolerance: every parameter within 1% of the largest parameter's magnitude,
        // the final loss within 0.5% (different summation orders, then hundreds of steps).
        let scale = cpu.params.iter().fold(0f32, |m, p| m.max(p.abs())).max(f32::MIN_POSITIVE);
        let err = gpu.params.iter().zip(&cpu.params).map(|(a, b)| f64::from((a - b).abs() / scale)).fold(0.0, f64::max);
        let lerr = (gpu.loss - cpu.loss).abs() / cpu.loss.abs().max(1e-12);
        let ok = err <= 1e-2 && lerr <= 5e-3;
        detail["cpu_epoch_seconds"] = json!(cpu.epoch_seconds);
        detail["cpu_final_loss"] = json!(cpu.loss);
        detail["param_err_of_largest"] = json!(err);
        detail["loss_rel_err"] = json!(lerr);
        c.record(
            &format!("{name}: GPU model = CPU model"),
            ok,
            detail,
            format!(
                "{name}: GPU model vs CPU model: params {err:.2e} of the largest (bound 1e-2), loss {:.6} vs {:.6} \
                 ({lerr:.1e}, bound 5e-3); CPU epochs {:?} s",
                gpu.loss,
                cpu.loss,
                cpu.epoch_seconds.iter().map(|s| (s * 1000.0).round() / 1000.0).collect::<Vec<_>>()
            ),
        );
    } else {
        c.results.insert(format!("{name}: timing"), detail);
    }
}

/// The shard kept in host memory (as for one larger than the GPU), its batches copied at
/// every step: the same bits as the resident shard; timed.
fn streamed_shard(c: &mut Check, shard: &Shard, epochs: u64, batch: usize, device: DeviceChoice) {
    let kind = ModelKind::Mlp { hidden: vec![64], outputs: Output::Binary };
    let resident = train_once(shard, &kind, epochs, batch, device, 1).remove(0);
    std::env::set_var("GANG_GPU_STREAM_SHARD", "1");
    let streamed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_once(shard, &kind, epochs, batch, device, 1).remove(0)
    }));
    std::env::remove_var("GANG_GPU_STREAM_SHARD");
    let streamed = streamed.unwrap_or_else(|p| std::panic::resume_unwind(p));
    let same = resident.params.iter().map(|p| p.to_bits()).eq(streamed.params.iter().map(|p| p.to_bits()));
    c.record(
        "mlp64: streamed shard = resident shard",
        same,
        json!({ "identical": same, "streamed_epoch_seconds": streamed.epoch_seconds,
                "resident_epoch_seconds": resident.epoch_seconds }),
        format!(
            "mlp64 with the shard in host memory: {} bits as resident; epochs {:?} s against {:?} s",
            if same { "the same" } else { "DIFFERENT" },
            streamed.epoch_seconds.iter().map(|s| (s * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            resident.epoch_seconds.iter().map(|s| (s * 1000.0).round() / 1000.0).collect::<Vec<_>>()
        ),
    );
}

fn sharing_ranks(c: &mut Check, shard: &Shard, batch: usize, device: DeviceChoice) {
    let kind = ModelKind::Mlp { hidden: vec![64], outputs: Output::Binary };
    let runs = train_once(shard, &kind, 1, batch, device, 2);
    let same = runs[0].params == runs[1].params;
    c.record(
        "two ranks sharing the GPU (host staging)",
        same && runs[0].loss.is_finite(),
        json!({ "same_model": same, "loss": runs[0].loss, "epoch_seconds": runs[0].epoch_seconds }),
        format!(
            "two Local ranks on one GPU, gradients through host memory: same model {same}, loss {:.6}, epoch {:.3} s",
            runs[0].loss, runs[0].epoch_seconds[0]
        ),
    );
}

fn nccl_allreduce(c: &mut Check) {
    match nccl_world1(64 << 20) {
        Ok(r) => c.record(
            "nccl allreduce 64 MiB, world 1",
            r.correct,
            json!({ "seconds": r.seconds, "copy_seconds": r.copy_seconds, "version": r.version }),
            format!(
                "NCCL {} allreduce of 64 MiB at world 1 (out of place: a copy): {:.3} ms; a device-to-device copy of \
                 64 MiB: {:.3} ms",
                r.version,
                r.seconds * 1e3,
                r.copy_seconds * 1e3
            ),
        ),
        Err(e) => c.record("nccl allreduce 64 MiB, world 1", false, json!({ "error": e }), format!("NCCL: {e}")),
    }
}

struct NcclRun {
    correct: bool,
    seconds: f64,
    copy_seconds: f64,
    version: String,
}

/// NCCL at world size 1: in place it returns without work, so out of place, where it
/// copies; timed beside a plain device-to-device copy of the same bytes (its limit).
fn nccl_world1(bytes: usize) -> Result<NcclRun, String> {
    use gang_gpu::collectives::DeviceNccl;
    use gang_gpu::nccl::Nccl;
    let e = |e: gang_gpu::Error| e.to_string();
    let nccl = Nccl::load().map_err(e)?;
    let version = nccl.version().map_err(e)?.to_string();
    let dev = Device::Cuda(CudaDevice::open(0).map_err(e)?);
    let id = nccl.unique_id().map_err(e)?;
    let comm = DeviceNccl::connect(&nccl, &id, 0, 1, &dev, std::time::Duration::from_secs(60)).map_err(e)?;
    let n = bytes / 4;
    let host: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.5).collect();
    let src = dev.upload(&host).map_err(e)?;
    let mut dst = dev.zeros::<f32>(n).map_err(e)?;
    let iters = 50;
    let time = |f: &mut dyn FnMut() -> gang_gpu::Result<()>| -> Result<f64, String> {
        for _ in 0..5 {
            f().map_err(e)?;
        }
        dev.synchronize().map_err(e)?;
        let t = Instant::now();
        for _ in 0..iters {
            f().map_err(e)?;
        }
        dev.synchronize().map_err(e)?;
        Ok(t.elapsed().as_secs_f64() / iters as f64)
    };
    let seconds = time(&mut || comm.allreduce_sum_f32_into(&dev, &src, &mut dst))?;
    // A sum over one rank is what it was.
    let correct = dev.to_vec(&dst).map_err(e)? == host;
    let mut copy = dev.zeros::<f32>(n).map_err(e)?;
    let copy_seconds = time(&mut || dev.copy(&src, &mut copy))?;
    Ok(NcclRun { correct, seconds, copy_seconds, version })
}
