//! The device training loop over the host build of the CUDA kernels, against
//! gang-kernels on the CPU: the same gradients (to rounding), the same model after
//! training, the same bits on every run. A wrong index or a wrong derivative in a `.cu`
//! kernel, or a wrong offset in the loop that launches them, fails here, without a GPU.
#![allow(clippy::single_range_in_vec_init)] // row ranges of one piece are what the trainer takes

use gang_gpu::exec::{Device, Launch};
use gang_gpu::train::DeviceTrainer;
use gang_kernels::{Model, ModelKind, Optimizer, OptimizerState, Output, SplitMix64, Targets};

struct Data {
    x: Vec<f32>,
    class: Vec<i64>,
    value: Vec<f32>,
    features: usize,
}

/// Rows whose class is a function of the features (learnable), with noise.
fn data(rows: usize, features: usize, classes: usize, seed: u64) -> Data {
    let mut rng = SplitMix64::new(seed);
    let x: Vec<f32> = (0..rows * features).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    let mut class = Vec::with_capacity(rows);
    let mut value = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &x[r * features..(r + 1) * features];
        let s: f32 = row.iter().enumerate().map(|(j, v)| v * ((j % 3) as f32 - 0.8)).sum();
        value.push(s + 0.1 * (rng.next_f32() - 0.5));
        let c = if classes == 2 { usize::from(s > 0.0) } else { ((s + 3.0).max(0.0) as usize).min(classes - 1) };
        class.push(c as i64);
    }
    Data { x, class, value, features }
}

fn targets<'a>(kind: &ModelKind, d: &'a Data) -> Targets<'a> {
    match kind.output() {
        Output::Regression => Targets::Value(&d.value),
        _ => Targets::Class(&d.class),
    }
}

/// Largest |a - b| / (|b| + floor) over the elements.
fn rel_err(a: &[f32], b: &[f32], floor: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| (a - b).abs() / (b.abs() + floor)).fold(0.0, f32::max)
}

fn models() -> Vec<ModelKind> {
    vec![
        ModelKind::Linear,
        ModelKind::Logistic,
        ModelKind::Softmax { classes: 4 },
        ModelKind::Mlp { hidden: vec![16], outputs: Output::Binary },
        ModelKind::Mlp { hidden: vec![12, 8], outputs: Output::Softmax { classes: 3 } },
        ModelKind::Mlp { hidden: vec![8], outputs: Output::Regression },
    ]
}

fn classes(kind: &ModelKind) -> usize {
    match kind.output() {
        Output::Softmax { classes } => classes,
        _ => 2,
    }
}

#[test]
fn one_gradient_matches_the_cpu_kernels_for_every_model() {
    for kind in models() {
        let d = data(700, 10, classes(&kind), 1);
        let model = Model::new(kind.clone(), d.features, 3).unwrap();
        let opt = OptimizerState::new(Optimizer::sgd(0.1), model.num_params()).unwrap();
        let y = targets(&kind, &d);
        // Rows in two pieces, as the shuffled blocks of an epoch come.
        let ranges = [300..700, 0..120];
        let mut cpu_grad = model.grad_buffer();
        let cpu = model.loss_and_grad_rows(&d.x, y, &ranges, &mut cpu_grad).unwrap();

        let mut t = DeviceTrainer::new(Device::Host, &model, &opt, &d.x, y, 520).unwrap();
        t.loss_and_grad_rows(&ranges).unwrap();
        let mut grad = vec![0f32; model.num_params()];
        t.grad_to_host(&mut grad).unwrap();
        let stats = t.take_stats().unwrap();

        let scale = cpu_grad.iter().fold(0f32, |m, g| m.max(g.abs()));
        let err = rel_err(&grad, &cpu_grad, 1e-3 * scale);
        assert!(err < 1e-4, "{kind}: gradient differs from the CPU's by {err} (relative)");
        assert_eq!(stats.n, cpu.n, "{kind}");
        assert_eq!(stats.correct, cpu.correct, "{kind}: correct predictions");
        let lerr = (stats.loss_sum - cpu.loss_sum).abs() / cpu.loss_sum.abs().max(1e-9);
        assert!(lerr < 1e-5, "{kind}: loss {} against the CPU's {}", stats.loss_sum, cpu.loss_sum);
    }
}

#[test]
fn training_ends_with_the_cpu_model_for_every_model_and_optimizer() {
    let optimizers = [
        Optimizer::sgd(0.2),
        Optimizer::Sgd { lr: 0.05, momentum: 0.9, weight_decay: 1e-3 },
        Optimizer::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 },
    ];
    for kind in models() {
        for optimizer in optimizers {
            let d = data(512, 6, classes(&kind), 2);
            let y = targets(&kind, &d);
            let mut cpu = Model::new(kind.clone(), d.features, 5).unwrap();
            let mut cpu_opt = OptimizerState::new(optimizer, cpu.num_params()).unwrap();
            let mut t = DeviceTrainer::new(Device::Host, &cpu, &cpu_opt, &d.x, y, 128).unwrap();
            let mut grad = cpu.grad_buffer();
            for step in 0..20usize {
                let start = (step * 128) % 512;
                let ranges = [start..start + 128];
                grad.fill(0.0);
                cpu.loss_and_grad_rows(&d.x, y, &ranges, &mut grad).unwrap();
                cpu_opt.step_scaled(cpu.params_mut(), &grad, 1.0 / 128.0).unwrap();
                t.loss_and_grad_rows(&ranges).unwrap();
                t.step(1.0 / 128.0).unwrap();
            }
            let dev = t.model().unwrap();
            let scale = cpu.params().iter().fold(0f32, |m, p| m.max(p.abs()));
            let err = rel_err(dev.params(), cpu.params(), 1e-2 * scale);
            assert!(
                err < 2e-3,
                "{kind} with {}: parameters differ by {err} (relative) after 20 steps",
                optimizer.name()
            );
            // The optimizer state comes back as the CPU's, for checkpoints.
            let state = t.optimizer_state().unwrap();
            assert_eq!(state.steps(), 20);
            for ((n1, a), (n2, b)) in state.state_tensors().iter().zip(cpu_opt.state_tensors()) {
                assert_eq!(*n1, n2);
                let s = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(rel_err(a, b, 1e-2 * s + 1e-12) < 5e-3, "{kind}: optimizer state {n1}");
            }
        }
    }
}

#[test]
fn the_same_steps_give_the_same_bits() {
    let kind = ModelKind::Mlp { hidden: vec![16, 8], outputs: Output::Softmax { classes: 3 } };
    let d = data(400, 7, 3, 9);
    let run = || {
        let model = Model::new(kind.clone(), d.features, 11).unwrap();
        let opt = OptimizerState::new(Optimizer::adam(0.01), model.num_params()).unwrap();
        let mut t = DeviceTrainer::new(Device::Host, &model, &opt, &d.x, Targets::Class(&d.class), 200).unwrap();
        for s in 0..6usize {
            let a = (s * 37) % 200;
            t.loss_and_grad_rows(&[a..a + 100, 300..400]).unwrap();
            t.step(1.0 / 200.0).unwrap();
        }
        let stats = t.take_stats().unwrap();
        (t.model().unwrap().params().iter().map(|p| p.to_bits()).collect::<Vec<_>>(), stats.loss_sum.to_bits())
    };
    assert_eq!(run(), run());
}

#[test]
fn training_learns() {
    let kind = ModelKind::Mlp { hidden: vec![16], outputs: Output::Binary };
    let d = data(1024, 8, 2, 4);
    let model = Model::new(kind, d.features, 1).unwrap();
    let opt = OptimizerState::new(Optimizer::adam(0.02), model.num_params()).unwrap();
    let mut t = DeviceTrainer::new(Device::Host, &model, &opt, &d.x, Targets::Class(&d.class), 256).unwrap();
    t.loss_rows(&[0..1024]).unwrap();
    let before = t.take_stats().unwrap();
    for epoch in 0..15 {
        for b in 0..4 {
            let a = ((b + epoch) % 4) * 256;
            t.loss_and_grad_rows(&[a..a + 256]).unwrap();
            t.step(1.0 / 256.0).unwrap();
        }
    }
    t.take_stats().unwrap();
    t.loss_rows(&[0..1024]).unwrap();
    let after = t.take_stats().unwrap();
    assert!(after.mean_loss() < before.mean_loss() * 0.6, "{} -> {}", before.mean_loss(), after.mean_loss());
    assert!(after.accuracy() > 0.9, "accuracy {}", after.accuracy());
}

#[test]
fn bad_rows_labels_and_lengths_are_errors_not_out_of_bounds_accesses() {
    let d = data(50, 4, 3, 1);
    let kind = ModelKind::Softmax { classes: 3 };
    let model = Model::new(kind, 4, 0).unwrap();
    let opt = OptimizerState::new(Optimizer::sgd(0.1), model.num_params()).unwrap();
    let mut t = DeviceTrainer::new(Device::Host, &model, &opt, &d.x, Targets::Class(&d.class), 20).unwrap();
    let e = t.loss_and_grad_rows(&[40..60]).unwrap_err().to_string();
    assert!(e.contains("outside the shard"), "{e}");
    let e = t.loss_and_grad_rows(&[0..30]).unwrap_err().to_string();
    assert!(e.contains("does not fit the workspace"), "{e}");

    let mut bad = d.class.clone();
    bad[7] = 3;
    let e = DeviceTrainer::new(Device::Host, &model, &opt, &d.x, Targets::Class(&bad), 20).unwrap_err().to_string();
    assert!(e.contains("row 7") && e.contains("label 3"), "{e}");

    // A launch whose buffer is too short is refused before it runs.
    let dev = Device::Host;
    let x = dev.upload(&[1.0f32; 10]).unwrap();
    let w = dev.upload(&[1.0f32; 6]).unwrap();
    let b = dev.upload(&[0.0f32; 3]).unwrap();
    let mut z = dev.zeros::<f32>(5).unwrap();
    let e = Launch::dense_forward(x.all(), w.all(), b.all(), 5, 2, 3, false, z.all_mut()).unwrap();
    let e = dev.launch(e).unwrap_err().to_string();
    assert!(e.contains("gang_dense_forward") && e.contains("needs 15"), "{e}");
    // A gather's row outside its source.
    let rows = dev.upload(&[0i64, 9]).unwrap();
    let mut out = dev.zeros::<f32>(4).unwrap();
    let l = Launch::gather_rows(x.all(), 5, rows.all(), 2, 2, out.all_mut()).unwrap();
    let e = dev.launch(l).unwrap_err().to_string();
    assert!(e.contains("row 9"), "{e}");
}

#[test]
fn a_streamed_shard_gives_the_resident_shard_s_bits() {
    let kind = ModelKind::Mlp { hidden: vec![16], outputs: Output::Softmax { classes: 3 } };
    let d = data(600, 7, 3, 5);
    let run = |streamed: bool| {
        let model = Model::new(kind.clone(), d.features, 2).unwrap();
        let opt = OptimizerState::new(Optimizer::adam(0.01), model.num_params()).unwrap();
        let y = Targets::Class(&d.class);
        let mut t = if streamed {
            DeviceTrainer::streaming(Device::Host, &model, &opt, &d.x, y, 200).unwrap()
        } else {
            DeviceTrainer::new(Device::Host, &model, &opt, &d.x, y, 200).unwrap()
        };
        for s in 0..8usize {
            let a = (s * 53) % 400;
            t.loss_and_grad_rows(&[a..a + 120, 500..580]).unwrap();
            t.step(1.0 / 200.0).unwrap();
        }
        t.loss_rows(&[0..600]).unwrap();
        let stats = t.take_stats().unwrap();
        (t.model().unwrap().params().iter().map(|p| p.to_bits()).collect::<Vec<_>>(), stats.loss_sum.to_bits())
    };
    assert_eq!(run(true), run(false));
    // Rows outside the shard are refused there too.
    let model = Model::new(kind, d.features, 2).unwrap();
    let opt = OptimizerState::new(Optimizer::sgd(0.1), model.num_params()).unwrap();
    let mut t = DeviceTrainer::streaming(Device::Host, &model, &opt, &d.x, Targets::Class(&d.class), 100).unwrap();
    assert!(t.loss_and_grad_rows(&[590..610]).unwrap_err().to_string().contains("outside the shard"));
}
