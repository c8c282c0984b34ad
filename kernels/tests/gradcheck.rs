//! Analytic gradients against central finite differences of an independent f64
//! reference, for every model and loss.

mod common;

use gang_kernels::{Model, ModelKind, Output, Targets};

/// Check loss, gradient and predictions of `model` (with random parameters) on `x, y`.
fn check(kind: ModelKind, f: usize, n: usize, y: Targets<'_>, seed: u64) {
    let x = common::features(n, f, seed);
    let mut model = Model::new(kind.clone(), f, seed).unwrap();
    common::randomize(&mut model, 0.7, seed + 1);
    let p64: Vec<f64> = model.params().iter().map(|&p| f64::from(p)).collect();

    // Loss against the reference.
    let reference = common::ref_loss(&model, &p64, &x, y);
    let mut grad = model.grad_buffer();
    let stats = model.loss_and_grad(&x, y, &mut grad).unwrap();
    assert_eq!(stats.n, n as u64);
    assert!(
        (stats.loss_sum - reference).abs() <= 1e-5 * reference.abs().max(1.0),
        "{kind}: loss {} vs reference {reference}",
        stats.loss_sum
    );
    assert_eq!(model.loss(&x, y).unwrap(), stats, "{kind}: loss() == loss_and_grad() stats");

    // Gradient against central differences of the reference.
    let h = 1e-6;
    let mut worst = 0f64;
    for i in 0..p64.len() {
        let mut p = p64.clone();
        p[i] += h;
        let up = common::ref_loss(&model, &p, &x, y);
        p[i] -= 2.0 * h;
        let down = common::ref_loss(&model, &p, &x, y);
        let numeric = (up - down) / (2.0 * h);
        let err = (f64::from(grad[i]) - numeric).abs() / (1.0 + numeric.abs());
        worst = worst.max(err);
        assert!(err < 1e-5, "{kind}: d loss / d param {i}: analytic {} numeric {numeric}", grad[i]);
    }
    assert!(grad.iter().any(|&g| g != 0.0), "{kind}: gradient is all zero");

    // Predictions against the reference logits.
    let logits = common::ref_logits(&model, &p64, &x);
    let pred = model.predict(&x).unwrap();
    let k = model.outputs();
    assert_eq!(pred.len(), n * k);
    for (r, z) in logits.iter().enumerate() {
        let expect: Vec<f64> = match model.output() {
            Output::Regression => vec![z[0]],
            Output::Binary => vec![1.0 / (1.0 + (-z[0]).exp())],
            Output::Softmax { .. } => {
                let s: f64 = z.iter().map(|v| v.exp()).sum();
                z.iter().map(|v| v.exp() / s).collect()
            }
        };
        for (c, e) in expect.iter().enumerate() {
            let got = f64::from(pred[r * k + c]);
            assert!((got - e).abs() < 1e-5 * e.abs().max(1.0), "{kind}: predict row {r} col {c}: {got} vs {e}");
        }
    }
    eprintln!("{kind}: {} params, worst relative gradient error {worst:.2e}", p64.len());
}

#[test]
fn linear_mse() {
    let y: Vec<f32> = common::features(40, 1, 9).iter().map(|v| 3.0 * v).collect();
    check(ModelKind::Linear, 5, 40, Targets::Value(&y), 1);
    let c = common::labels(40, 7, 2);
    check(ModelKind::Linear, 5, 40, Targets::Class(&c), 2);
}

#[test]
fn logistic_log_loss() {
    let c = common::labels(50, 2, 3);
    check(ModelKind::Logistic, 13, 50, Targets::Class(&c), 3);
    // Soft labels.
    let v: Vec<f32> = common::features(50, 1, 4).iter().map(|v| 0.5 + 0.5 * v).collect();
    check(ModelKind::Logistic, 13, 50, Targets::Value(&v), 4);
}

#[test]
fn softmax_log_loss() {
    let c = common::labels(60, 4, 5);
    check(ModelKind::Softmax { classes: 4 }, 6, 60, Targets::Class(&c), 5);
    // Wide enough (>= 8 classes) for the transposed forward form.
    let c = common::labels(30, 9, 6);
    check(ModelKind::Softmax { classes: 9 }, 3, 30, Targets::Class(&c), 6);
}

#[test]
fn mlp_heads() {
    let v: Vec<f32> = common::features(70, 1, 7).to_vec();
    check(ModelKind::Mlp { hidden: vec![5], outputs: Output::Regression }, 4, 70, Targets::Value(&v), 7);
    let c = common::labels(70, 2, 8);
    check(ModelKind::Mlp { hidden: vec![6, 4], outputs: Output::Binary }, 4, 70, Targets::Class(&c), 8);
    let c = common::labels(70, 3, 9);
    check(ModelKind::Mlp { hidden: vec![5], outputs: Output::Softmax { classes: 3 } }, 4, 70, Targets::Class(&c), 9);
}

#[test]
fn mlp_wide_layers_and_several_blocks() {
    // Hidden widths >= 8 take the transposed forward form; 150 rows span three blocks.
    let c = common::labels(150, 3, 10);
    check(
        ModelKind::Mlp { hidden: vec![12, 9], outputs: Output::Softmax { classes: 3 } },
        5,
        150,
        Targets::Class(&c),
        10,
    );
}
