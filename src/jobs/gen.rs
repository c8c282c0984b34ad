//! `gang gen`: a synthetic classification or regression dataset with a known true model.
//!
//! Every partition is generated from `(seed, partition id)` alone, so the dataset is the
//! same whatever the number of ranks that write it.
//!
//! Columns: `id` (Int64, the global row number), `f0 .. f{k-1}` (Float32 features with
//! per-feature means and scales, so that standardizing matters), and `y`: the class
//! (Int64) for classification, drawn from the softmax of the true linear model (with
//! probability `noise` replaced by a uniformly random class), or the target (Float64) for
//! regression, the true linear model plus Gaussian noise of standard deviation `noise`.

use crate::error::{Error, Result};
use arrow_array::{ArrayRef, Float32Array, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenSpec {
    /// Total rows.
    pub rows: u64,
    /// Number of feature columns.
    pub features: usize,
    /// Number of classes; 0 means regression.
    pub classes: usize,
    /// Number of partitions (output files).
    pub partitions: usize,
    /// Seed of everything.
    pub seed: u64,
    /// Label noise (classification: probability of a random label; regression: standard
    /// deviation of the added noise).
    pub noise: f64,
}

impl GenSpec {
    /// Checks the spec.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the bad option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if self.rows == 0 {
            return bad("--rows must be at least 1");
        }
        if self.features == 0 {
            return bad("--features must be at least 1");
        }
        if self.classes == 1 {
            return bad("--classes must be 0 (regression) or at least 2");
        }
        if self.partitions == 0 || self.partitions as u64 > self.rows {
            return bad("--partitions must be between 1 and --rows");
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) || (self.classes > 0 && self.noise > 1.0) {
            return bad("--noise must be >= 0 (and at most 1 for classification: it is a probability)");
        }
        Ok(())
    }

    /// The schema of every partition.
    pub fn schema(&self) -> SchemaRef {
        let mut fields = vec![Field::new("id", DataType::Int64, false)];
        fields.extend((0..self.features).map(|j| Field::new(format!("f{j}"), DataType::Float32, false)));
        fields.push(if self.classes > 0 {
            Field::new("y", DataType::Int64, false)
        } else {
            Field::new("y", DataType::Float64, false)
        });
        Arc::new(Schema::new(fields))
    }

    /// Rows `start..end` of partition `p`.
    pub fn partition_rows(&self, p: usize) -> std::ops::Range<u64> {
        let n = self.partitions as u64;
        let (base, extra) = (self.rows / n, self.rows % n);
        let p = p as u64;
        let start = p * base + p.min(extra);
        start..start + base + u64::from(p < extra)
    }

    /// The true model the labels were drawn from.
    pub fn true_model(&self) -> TrueModel {
        let outputs = if self.classes == 2 { 1 } else { self.classes.max(1) };
        let mut rng = Rng::new(self.seed ^ 0x6d6f_64656c);
        let weights =
            (0..self.features * outputs).map(|_| rng.normal() as f32 * 1.5 / (self.features as f32).sqrt()).collect();
        let bias = (0..outputs).map(|_| rng.normal() as f32 * 0.5).collect();
        let means = (0..self.features).map(|j| (j % 5) as f32 - 2.0).collect();
        let scales = (0..self.features).map(|j| 1.0 + (j % 3) as f32).collect();
        TrueModel { features: self.features, outputs, weights, bias, means, scales }
    }

    /// Generates partition `p` as batches of at most `batch_rows` rows.
    ///
    /// # Errors
    /// Arrow errors building the batches (not expected).
    pub fn generate(&self, p: usize, batch_rows: usize) -> Result<Vec<RecordBatch>> {
        let model = self.true_model();
        let schema = self.schema();
        let rows = self.partition_rows(p);
        let mut rng = Rng::new(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (p as u64 + 1));
        let mut out = Vec::new();
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + batch_rows.max(1) as u64).min(rows.end);
            let n = (end - start) as usize;
            let mut cols: Vec<Vec<f32>> = vec![Vec::with_capacity(n); self.features];
            let mut labels_i = Vec::with_capacity(if self.classes > 0 { n } else { 0 });
            let mut labels_f = Vec::with_capacity(if self.classes == 0 { n } else { 0 });
            let mut z = vec![0f32; self.features];
            let mut logits = vec![0f64; model.outputs];
            for _ in 0..n {
                for j in 0..self.features {
                    z[j] = rng.normal() as f32;
                    cols[j].push(model.means[j] + model.scales[j] * z[j]);
                }
                // The true model acts on standardized features.
                for (o, l) in logits.iter_mut().enumerate() {
                    *l = f64::from(model.bias[o])
                        + (0..self.features)
                            .map(|j| f64::from(model.weights[j * model.outputs + o] * z[j]))
                            .sum::<f64>();
                }
                if self.classes == 0 {
                    labels_f.push(logits[0] + self.noise * rng.normal());
                } else {
                    let class = if rng.uniform() < self.noise {
                        (rng.next_u64() % self.classes as u64) as i64
                    } else {
                        sample_class(&logits, self.classes, rng.uniform())
                    };
                    labels_i.push(class);
                }
            }
            let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(start as i64..end as i64))];
            arrays.extend(cols.into_iter().map(|c| Arc::new(Float32Array::from(c)) as ArrayRef));
            arrays.push(if self.classes > 0 {
                Arc::new(Int64Array::from(labels_i))
            } else {
                Arc::new(Float64Array::from(labels_f))
            });
            out.push(RecordBatch::try_new(schema.clone(), arrays)?);
            start = end;
        }
        Ok(out)
    }
}

/// Draws a class from the logistic (2 classes, one logit) or softmax model.
fn sample_class(logits: &[f64], classes: usize, u: f64) -> i64 {
    if classes == 2 {
        let p1 = 1.0 / (1.0 + (-logits[0]).exp());
        return i64::from(u < p1);
    }
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let total: f64 = e.iter().sum();
    let mut acc = 0.0;
    for (k, v) in e.iter().enumerate() {
        acc += v / total;
        if u < acc {
            return k as i64;
        }
    }
    (classes - 1) as i64
}

/// The model the labels come from, on standardized features `(x - mean) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrueModel {
    /// Number of features.
    pub features: usize,
    /// Outputs: 1 for regression and binary classification, k for k > 2 classes.
    pub outputs: usize,
    /// Row-major `[features, outputs]`.
    pub weights: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
    /// Mean of each raw feature.
    pub means: Vec<f32>,
    /// Standard deviation of each raw feature.
    pub scales: Vec<f32>,
}

/// xoshiro256** seeded through SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator from a 64-bit seed.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(classes: usize) -> GenSpec {
        GenSpec { rows: 1003, features: 4, classes, partitions: 4, seed: 7, noise: 0.05 }
    }

    #[test]
    fn partitions_cover_every_row_once() {
        let s = spec(2);
        let ranges: Vec<_> = (0..4).map(|p| s.partition_rows(p)).collect();
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges[3].end, 1003);
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        let total: u64 =
            (0..4).map(|p| s.generate(p, 100).unwrap().iter().map(|b| b.num_rows() as u64).sum::<u64>()).sum();
        assert_eq!(total, 1003);
    }

    #[test]
    fn generation_is_deterministic_and_independent_of_batching() {
        let s = spec(3);
        let a = arrow_select::concat::concat_batches(&s.schema(), &s.generate(2, 7).unwrap()).unwrap();
        let b = arrow_select::concat::concat_batches(&s.schema(), &s.generate(2, 1000).unwrap()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, arrow_select::concat::concat_batches(&s.schema(), &s.generate(1, 1000).unwrap()).unwrap());
    }

    #[test]
    fn labels_follow_the_true_model() {
        // Noise-free binary data: the true model's decision agrees with most labels.
        let s = GenSpec { rows: 4000, features: 3, classes: 2, partitions: 1, seed: 1, noise: 0.0 };
        let m = s.true_model();
        let b = &s.generate(0, 4000).unwrap()[0];
        let y = b.column(4).as_any().downcast_ref::<Int64Array>().unwrap();
        let mut agree = 0;
        for i in 0..4000 {
            let mut logit = f64::from(m.bias[0]);
            for j in 0..3 {
                let x = b.column(1 + j).as_any().downcast_ref::<Float32Array>().unwrap().value(i);
                logit += f64::from(m.weights[j] * (x - m.means[j]) / m.scales[j]);
            }
            agree += i64::from((logit > 0.0) == (y.value(i) == 1));
        }
        assert!(agree > 2800, "only {agree} of 4000 labels agree with the true model");
    }

    #[test]
    fn features_have_the_advertised_means() {
        let s = GenSpec { rows: 20000, features: 5, classes: 0, partitions: 1, seed: 3, noise: 0.1 };
        let b = &s.generate(0, 20000).unwrap()[0];
        for j in 0..5 {
            let c = b.column(1 + j).as_any().downcast_ref::<Float32Array>().unwrap();
            let mean = c.values().iter().map(|&v| f64::from(v)).sum::<f64>() / 20000.0;
            assert!((mean - ((j % 5) as f64 - 2.0)).abs() < 0.1, "feature {j} mean {mean}");
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = spec(2);
        s.classes = 1;
        assert!(s.validate().is_err());
        let mut s = spec(2);
        s.partitions = 0;
        assert!(s.validate().is_err());
        let mut s = spec(2);
        s.noise = 2.0;
        assert!(s.validate().is_err());
        assert!(spec(0).validate().is_ok());
    }
}
