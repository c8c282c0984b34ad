//! Optimizers over flat parameter buffers, with state that checkpoints as tensors.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Elements per parallel task of an optimizer step; below this the step runs on the
/// calling thread. Element-wise updates have no reduction, so the split never changes
/// a result.
const PAR_SPLIT: usize = 1 << 15;

/// An optimizer and its hyper-parameters.
///
/// The update rules are PyTorch's, so a model trained here and one trained with
/// `torch.optim` from the same state follow the same path (up to rounding).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// Stochastic gradient descent with heavy-ball momentum and L2 weight decay, as
    /// `torch.optim.SGD` (no dampening, no Nesterov):
    /// `g = grad + weight_decay * p; b = momentum * b + g; p -= lr * b`
    /// (with `momentum == 0`, `p -= lr * g`).
    Sgd {
        /// Learning rate.
        lr: f32,
        /// Momentum in `[0, 1)`; 0 disables it (and its state).
        momentum: f32,
        /// L2 penalty coefficient: adds `weight_decay * p` to the gradient.
        weight_decay: f32,
    },
    /// Adam with decoupled weight decay, as `torch.optim.AdamW` (identical to
    /// `torch.optim.Adam` when `weight_decay == 0`):
    /// `p *= 1 - lr * weight_decay; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    /// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    Adam {
        /// Learning rate.
        lr: f32,
        /// Decay of the first-moment average, in `[0, 1)` (usually 0.9).
        beta1: f32,
        /// Decay of the second-moment average, in `[0, 1)` (usually 0.999).
        beta2: f32,
        /// Added to the denominator, `> 0` (usually 1e-8).
        eps: f32,
        /// Decoupled weight decay: parameters shrink by `lr * weight_decay` each step.
        weight_decay: f32,
    },
}

impl Optimizer {
    /// Plain SGD: no momentum, no weight decay.
    pub fn sgd(lr: f32) -> Optimizer {
        Optimizer::Sgd { lr, momentum: 0.0, weight_decay: 0.0 }
    }

    /// Adam with PyTorch's defaults: `beta1 = 0.9`, `beta2 = 0.999`, `eps = 1e-8`, no
    /// weight decay.
    pub fn adam(lr: f32) -> Optimizer {
        Optimizer::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }

    /// `"sgd"` or `"adam"`.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adam { .. } => "adam",
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } => *lr,
        }
    }

    /// The same optimizer with another learning rate.
    pub fn with_lr(mut self, new: f32) -> Optimizer {
        match &mut self {
            Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } => *lr = new,
        }
        self
    }

    /// Check the hyper-parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptimizer`] for a negative or non-finite learning rate or weight
    /// decay, a momentum or beta outside `[0, 1)`, or `eps <= 0`.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidOptimizer { reason });
        let unit = |v: f32| (0.0..1.0).contains(&v);
        let nonneg = |v: f32| v.is_finite() && v >= 0.0;
        match *self {
            Optimizer::Sgd { lr, momentum, weight_decay } => {
                if !nonneg(lr) {
                    return bad(format!("sgd learning rate {lr} must be finite and >= 0"));
                }
                if !unit(momentum) {
                    return bad(format!("sgd momentum {momentum} must be in [0, 1)"));
                }
                if !nonneg(weight_decay) {
                    return bad(format!("sgd weight decay {weight_decay} must be finite and >= 0"));
                }
            }
            Optimizer::Adam { lr, beta1, beta2, eps, weight_decay } => {
                if !nonneg(lr) {
                    return bad(format!("adam learning rate {lr} must be finite and >= 0"));
                }
                if !unit(beta1) || !unit(beta2) {
                    return bad(format!("adam betas ({beta1}, {beta2}) must be in [0, 1)"));
                }
                if !(eps.is_finite() && eps > 0.0) {
                    return bad(format!("adam eps {eps} must be finite and > 0"));
                }
                if !nonneg(weight_decay) {
                    return bad(format!("adam weight decay {weight_decay} must be finite and >= 0"));
                }
            }
        }
        Ok(())
    }

    /// Names of the state tensors this optimizer keeps, in
    /// [`OptimizerState::state_tensors`] order (PyTorch's names).
    pub fn state_names(&self) -> &'static [&'static str] {
        match *self {
            Optimizer::Sgd { momentum: 0.0, .. } => &[],
            Optimizer::Sgd { .. } => &["momentum_buffer"],
            Optimizer::Adam { .. } => &["exp_avg", "exp_avg_sq"],
        }
    }
}

/// An optimizer with its state for one flat parameter buffer.
///
/// Every rank of a data-parallel job holds the same state and applies the same step to
/// the same allreduced gradient, so the replicas stay bitwise equal.
///
/// # Examples
///
/// ```
/// use gang_kernels::{Optimizer, OptimizerState};
/// let mut params = vec![1.0f32, -2.0];
/// let mut opt = OptimizerState::new(Optimizer::adam(0.1), params.len())?;
/// for _ in 0..200 {
///     let grad: Vec<f32> = params.iter().map(|p| 2.0 * p).collect(); // d/dp p^2
///     opt.step(&mut params, &grad)?;
/// }
/// assert!(params.iter().all(|p| p.abs() < 0.05));
/// assert_eq!(opt.steps(), 200);
/// # Ok::<(), gang_kernels::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    optimizer: Optimizer,
    len: usize,
    steps: u64,
    /// SGD: momentum buffer (empty without momentum). Adam: first moment.
    m: Vec<f32>,
    /// Adam: second moment. SGD: empty.
    v: Vec<f32>,
}

impl OptimizerState {
    /// Fresh state (zero moments, zero steps) for `len` parameters.
    ///
    /// # Errors
    ///
    /// As [`Optimizer::validate`].
    pub fn new(optimizer: Optimizer, len: usize) -> Result<OptimizerState> {
        optimizer.validate()?;
        let names = optimizer.state_names();
        Ok(OptimizerState {
            optimizer,
            len,
            steps: 0,
            m: if !names.is_empty() { vec![0.0; len] } else { Vec::new() },
            v: if names.len() > 1 { vec![0.0; len] } else { Vec::new() },
        })
    }

    /// State restored from a checkpoint: the step count and the tensors that
    /// [`state_tensors`](Self::state_tensors) returned, by name, in any order.
    ///
    /// # Errors
    ///
    /// As [`Optimizer::validate`]; [`Error::InvalidState`] if a tensor the optimizer
    /// needs is missing or has the wrong length, or an unknown tensor is given.
    pub fn from_state(
        optimizer: Optimizer,
        len: usize,
        steps: u64,
        tensors: &[(&str, &[f32])],
    ) -> Result<OptimizerState> {
        let mut state = OptimizerState::new(optimizer, len)?;
        let names = optimizer.state_names();
        if let Some((extra, _)) = tensors.iter().find(|(n, _)| !names.contains(n)) {
            return Err(Error::InvalidState {
                reason: format!("{} keeps no tensor named `{extra}`", optimizer.name()),
            });
        }
        for (i, name) in names.iter().enumerate() {
            let Some((_, data)) = tensors.iter().find(|(n, _)| n == name) else {
                return Err(Error::InvalidState {
                    reason: format!("missing tensor `{name}` for {}", optimizer.name()),
                });
            };
            if data.len() != len {
                return Err(Error::InvalidState {
                    reason: format!("tensor `{name}` has {} elements, expected {len}", data.len()),
                });
            }
            let dst = if i == 0 { &mut state.m } else { &mut state.v };
            dst.copy_from_slice(data);
        }
        state.steps = steps;
        Ok(state)
    }

    /// The optimizer and its hyper-parameters.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Change the learning rate (for a schedule); the state is kept.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptimizer`] for a negative or non-finite rate.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        let new = self.optimizer.with_lr(lr);
        new.validate()?;
        self.optimizer = new;
        Ok(())
    }

    /// Number of parameters the state is for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the state is for zero parameters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Steps taken so far (Adam's bias correction uses it; checkpoint it as an integer).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The state tensors by name (PyTorch's: `momentum_buffer` for SGD with momentum;
    /// `exp_avg`, `exp_avg_sq` for Adam), each of [`len`](Self::len) elements. Save them
    /// with [`steps`](Self::steps) and restore with [`from_state`](Self::from_state).
    pub fn state_tensors(&self) -> Vec<(&'static str, &[f32])> {
        self.optimizer
            .state_names()
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, if i == 0 { &self.m[..] } else { &self.v[..] }))
            .collect()
    }

    /// The step count and the state tensors (as [`state_tensors`](Self::state_tensors)),
    /// writable: for a caller that checkpoints and restores the state in place (the C
    /// API's trainer). The buffers keep their addresses for the life of the state.
    pub fn state_mut(&mut self) -> (&mut u64, Vec<(&'static str, &mut [f32])>) {
        let names = self.optimizer.state_names();
        let mut tensors = Vec::with_capacity(names.len());
        let (m, v) = (&mut self.m, &mut self.v);
        if let Some(&n) = names.first() {
            tensors.push((n, &mut m[..]));
        }
        if let Some(&n) = names.get(1) {
            tensors.push((n, &mut v[..]));
        }
        (&mut self.steps, tensors)
    }

    /// One step with the gradient `grad` as it is (already a mean).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `params` or `grad` do not have [`len`](Self::len) elements
    /// (nothing is changed then).
    pub fn step(&mut self, params: &mut [f32], grad: &[f32]) -> Result<()> {
        self.step_scaled(params, grad, 1.0)
    }

    /// One step with the gradient `scale * grad`: pass the allreduced gradient sum and
    /// `1 / global_batch_rows` to step on the mean without a separate pass.
    ///
    /// # Errors
    ///
    /// As [`step`](Self::step).
    pub fn step_scaled(&mut self, params: &mut [f32], grad: &[f32], scale: f32) -> Result<()> {
        for (what, len) in [("params", params.len()), ("grad", grad.len())] {
            if len != self.len {
                return Err(Error::Shape { what, expected: self.len, actual: len });
            }
        }
        self.steps += 1;
        match self.optimizer {
            Optimizer::Sgd { lr, momentum, weight_decay } => {
                if momentum == 0.0 {
                    for_each_split(params, grad, |p, g| {
                        for (p, g) in p.iter_mut().zip(g) {
                            *p -= lr * (scale * g + weight_decay * *p);
                        }
                    });
                } else {
                    let work = |(p, g, b): (&mut [f32], &[f32], &mut [f32])| {
                        for ((p, g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                            *b = momentum * *b + (scale * g + weight_decay * *p);
                            *p -= lr * *b;
                        }
                    };
                    if self.len <= PAR_SPLIT {
                        work((params, grad, &mut self.m));
                    } else {
                        params
                            .par_chunks_mut(PAR_SPLIT)
                            .zip(grad.par_chunks(PAR_SPLIT))
                            .zip(self.m.par_chunks_mut(PAR_SPLIT))
                            .for_each(|((p, g), b)| work((p, g, b)));
                    }
                }
            }
            Optimizer::Adam { lr, beta1, beta2, eps, weight_decay } => {
                let t = self.steps.min(i32::MAX as u64) as i32;
                let bc1 = 1.0 - f64::from(beta1).powi(t);
                let bc2 = 1.0 - f64::from(beta2).powi(t);
                let step_size = (f64::from(lr) / bc1) as f32;
                let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
                let shrink = 1.0 - lr * weight_decay;
                let work = |(p, g, m, v): (&mut [f32], &[f32], &mut [f32], &mut [f32])| {
                    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        let g = scale * g;
                        *p *= shrink;
                        *m = beta1 * *m + (1.0 - beta1) * g;
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        *p -= step_size * *m / (v.sqrt() * inv_sqrt_bc2 + eps);
                    }
                };
                if self.len <= PAR_SPLIT {
                    work((params, grad, &mut self.m, &mut self.v));
                } else {
                    params
                        .par_chunks_mut(PAR_SPLIT)
                        .zip(grad.par_chunks(PAR_SPLIT))
                        .zip(self.m.par_chunks_mut(PAR_SPLIT))
                        .zip(self.v.par_chunks_mut(PAR_SPLIT))
                        .for_each(|(((p, g), m), v)| work((p, g, m, v)));
                }
            }
        }
        Ok(())
    }
}

/// Run `f` over matching pieces of `params` and `grad`, in parallel when large.
fn for_each_split(params: &mut [f32], grad: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) {
    if params.len() <= PAR_SPLIT {
        f(params, grad);
    } else {
        params.par_chunks_mut(PAR_SPLIT).zip(grad.par_chunks(PAR_SPLIT)).for_each(|(p, g)| f(p, g));
    }
}
