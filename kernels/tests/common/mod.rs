//! Helpers shared by the integration tests: synthetic data and an independent f64
//! reference implementation of the forward pass and losses.
#![allow(dead_code)]

use gang_kernels::{Model, Output, SplitMix64, Targets};

/// `n * f` features, uniform in `[-1, 1)`.
pub fn features(n: usize, f: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n * f).map(|_| 2.0 * rng.next_f32() - 1.0).collect()
}

/// Fill all parameters with uniform values in `[-scale, scale)`.
pub fn randomize(model: &mut Model, scale: f32, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for p in model.params_mut() {
        *p = (2.0 * rng.next_f32() - 1.0) * scale;
    }
}

/// Labels `0..classes` drawn uniformly.
pub fn labels(n: usize, classes: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.next_below(classes as u64) as i64).collect()
}

fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// The logits of every row, computed naively in f64 from `params`, reading layer `l`'s
/// weight as `[out, in]` row-major (PyTorch's convention) and its bias after it.
pub fn ref_logits(model: &Model, params: &[f64], x: &[f32]) -> Vec<Vec<f64>> {
    let t = model.tensors();
    let f = model.features();
    let layers = t.len() / 2;
    x.chunks_exact(f)
        .map(|row| {
            let mut h: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            for l in 0..layers {
                let (w, b) = (&t[2 * l], &t[2 * l + 1]);
                let (out, inp) = (w.shape[0], w.shape[1]);
                assert_eq!(inp, h.len());
                let mut z = vec![0.0; out];
                for (o, zo) in z.iter_mut().enumerate() {
                    *zo = params[b.offset + o];
                    for (i, hi) in h.iter().enumerate() {
                        *zo += params[w.offset + o * inp + i] * hi;
                    }
                }
                if l + 1 < layers {
                    z.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                h = z;
            }
            h
        })
        .collect()
}

/// The summed loss, in f64.
pub fn ref_loss(model: &Model, params: &[f64], x: &[f32], y: Targets<'_>) -> f64 {
    let value = |r: usize| match y {
        Targets::Class(c) => c[r] as f64,
        Targets::Value(v) => f64::from(v[r]),
    };
    ref_logits(model, params, x)
        .iter()
        .enumerate()
        .map(|(r, z)| match model.output() {
            Output::Regression => 0.5 * (z[0] - value(r)).powi(2),
            Output::Binary => {
                let t = value(r);
                t * softplus(-z[0]) + (1.0 - t) * softplus(z[0])
            }
            Output::Softmax { .. } => {
                let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                lse - z[value(r) as usize]
            }
        })
        .sum()
}
