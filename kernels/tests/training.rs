//! End-to-end training on small synthetic problems: the kernels plus the optimizers
//! reach what they should.

mod common;

use gang_kernels::{BatchStats, Model, ModelKind, Optimizer, OptimizerState, Output, SplitMix64, Targets};

/// Full-batch training: `steps` steps on the mean gradient; returns the final stats and
/// the final mean gradient.
fn train(model: &mut Model, opt: Optimizer, x: &[f32], y: Targets<'_>, steps: usize) -> (BatchStats, Vec<f32>) {
    let mut state = OptimizerState::new(opt, model.num_params()).unwrap();
    let mut grad = model.grad_buffer();
    for _ in 0..steps {
        grad.fill(0.0);
        let s = model.loss_and_grad(x, y, &mut grad).unwrap();
        state.step_scaled(model.params_mut(), &grad, 1.0 / s.n as f32).unwrap();
    }
    grad.fill(0.0);
    let s = model.loss_and_grad(x, y, &mut grad).unwrap();
    let n = s.n as f32;
    grad.iter_mut().for_each(|g| *g /= n);
    (s, grad)
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|g| g * g).sum::<f32>().sqrt()
}

#[test]
fn logistic_regression_converges_on_noisy_separable_data() {
    let (n, f) = (2000, 10);
    let x = common::features(n, f, 1);
    let w_true = common::features(1, f, 2);
    let mut rng = SplitMix64::new(3);
    // Labels from a linear rule with 5% of them flipped.
    let y: Vec<i64> = x
        .chunks_exact(f)
        .map(|r| {
            let z: f32 = r.iter().zip(&w_true).map(|(a, b)| a * b).sum::<f32>() + 0.1;
            let flip = rng.next_f32() < 0.05;
            i64::from((z > 0.0) != flip)
        })
        .collect();
    let mut model = Model::new(ModelKind::Logistic, f, 0).unwrap();
    let start = model.loss(&x, Targets::Class(&y)).unwrap();
    assert!((start.mean_loss() - std::f64::consts::LN_2).abs() < 1e-6);
    let (s, g) = train(&mut model, Optimizer::adam(0.1), &x, Targets::Class(&y), 400);
    eprintln!("logistic: loss {:.4} acc {:.3} |grad| {:.2e}", s.mean_loss(), s.accuracy(), norm(&g));
    assert!(s.mean_loss() < 0.31, "mean loss {}", s.mean_loss());
    assert!(s.accuracy() > 0.92, "accuracy {}", s.accuracy());
    // At the optimum of the (unregularized) log-likelihood: the mean gradient vanishes.
    assert!(norm(&g) < 1e-3, "mean gradient norm {}", norm(&g));
}

#[test]
fn linear_regression_recovers_the_weights() {
    let (n, f) = (500, 4);
    let x = common::features(n, f, 4);
    let w = [1.5f32, -2.0, 0.25, 3.0];
    let y: Vec<f32> = x.chunks_exact(f).map(|r| r.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() - 0.5).collect();
    let mut model = Model::new(ModelKind::Linear, f, 0).unwrap();
    let opt = Optimizer::Sgd { lr: 0.5, momentum: 0.9, weight_decay: 0.0 };
    let (s, _) = train(&mut model, opt, &x, Targets::Value(&y), 300);
    assert!(s.mean_loss() < 1e-8, "mse/2 {}", s.mean_loss());
    let t = model.tensors();
    let (weight, bias) = (&model.params()[t[0].range()], model.params()[t[1].offset]);
    for (a, b) in weight.iter().zip(&w) {
        assert!((a - b).abs() < 1e-3, "{weight:?}");
    }
    assert!((bias + 0.5).abs() < 1e-3);
    let pred = model.predict(&x).unwrap();
    assert!(pred.iter().zip(&y).all(|(p, t)| (p - t).abs() < 1e-3));
}

#[test]
fn softmax_regression_separates_blobs() {
    let (n, f, k) = (900, 2, 3);
    let centres = [[2.0f32, 0.0], [-1.0, 1.7], [-1.0, -1.7]];
    let noise = common::features(n, f, 5);
    let y: Vec<i64> = (0..n).map(|i| (i % k) as i64).collect();
    let x: Vec<f32> = (0..n)
        .flat_map(|i| {
            let c = centres[i % k];
            [c[0] + noise[2 * i], c[1] + noise[2 * i + 1]]
        })
        .collect();
    let mut model = Model::new(ModelKind::Softmax { classes: k }, f, 0).unwrap();
    let (s, _) = train(&mut model, Optimizer::adam(0.05), &x, Targets::Class(&y), 200);
    assert!(s.accuracy() > 0.99, "accuracy {}", s.accuracy());
    assert!(s.mean_loss() < 0.1, "loss {}", s.mean_loss());
    assert_eq!(model.predict_class(&x).unwrap(), y);
    let p = model.predict(&x).unwrap();
    for row in p.chunks_exact(k) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn mlp_learns_xor() {
    // XOR of the signs of two coordinates, 400 noisy points.
    let (n, f) = (400, 2);
    let x = common::features(n, f, 6);
    let y: Vec<i64> = x.chunks_exact(2).map(|r| i64::from((r[0] > 0.0) != (r[1] > 0.0))).collect();
    // A linear model cannot do better than chance.
    let mut linear = Model::new(ModelKind::Logistic, f, 0).unwrap();
    let (s_lin, _) = train(&mut linear, Optimizer::adam(0.05), &x, Targets::Class(&y), 200);
    assert!(s_lin.accuracy() < 0.7, "logistic on XOR: {}", s_lin.accuracy());

    let kind = ModelKind::Mlp { hidden: vec![16], outputs: Output::Binary };
    let mut mlp = Model::new(kind, f, 1).unwrap();
    let (s, _) = train(&mut mlp, Optimizer::adam(0.03), &x, Targets::Class(&y), 600);
    eprintln!("mlp xor: loss {:.4} acc {:.3}", s.mean_loss(), s.accuracy());
    assert!(s.accuracy() > 0.97, "accuracy {}", s.accuracy());
    assert!(s.mean_loss() < 0.15, "loss {}", s.mean_loss());
    // The four corners.
    let corners = [0.5f32, 0.5, -0.5, 0.5, -0.5, -0.5, 0.5, -0.5];
    assert_eq!(mlp.predict_class(&corners).unwrap(), [0, 1, 0, 1]);
}

#[test]
fn two_hidden_layer_mlp_softmax_trains() {
    let (n, f, k) = (600, 3, 4);
    let x = common::features(n, f, 8);
    // Class = quadrant of (x0, x1), x2 is noise.
    let y: Vec<i64> = x.chunks_exact(f).map(|r| i64::from(r[0] > 0.0) * 2 + i64::from(r[1] > 0.0)).collect();
    let kind = ModelKind::Mlp { hidden: vec![16, 8], outputs: Output::Softmax { classes: k } };
    let mut mlp = Model::new(kind, f, 2).unwrap();
    let (s, _) = train(&mut mlp, Optimizer::adam(0.02), &x, Targets::Class(&y), 400);
    assert!(s.accuracy() > 0.95, "accuracy {}", s.accuracy());
}
