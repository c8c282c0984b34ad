//! Training on a [`Device`]: the shard resident in device memory, the forward pass, the
//! loss, the backward pass and the optimizer step as kernels on device buffers.
//!
//! The same model, the same optimizer and the same flat parameter layout as
//! `gang-kernels` (`layer{i}.weight` `[out, in]`, then `layer{i}.bias`), so the rank
//! runtime moves a model between the CPU and a device by copying one buffer, and the
//! checkpoints are the same files. Deterministic: every kernel sums in a fixed order, the
//! segment length of the gradient reduction depends only on the batch size, so the same
//! device gives the same bits on every run and across a restart.
//!
//! ```
//! use gang_gpu::exec::Device;
//! use gang_gpu::train::DeviceTrainer;
//! use gang_kernels::{Model, ModelKind, Optimizer, OptimizerState, Targets};
//!
//! let x: Vec<f32> = vec![1.0, 0.5, -1.0, -0.2, 0.3, 0.4, -0.7, 0.1];
//! let y: Vec<i64> = vec![1, 0, 1, 0];
//! let model = Model::new(ModelKind::Logistic, 2, 42)?;
//! let opt = OptimizerState::new(Optimizer::sgd(0.5), model.num_params())?;
//! // The host build of the kernels; `Device::Cuda(CudaDevice::open(0)?)` on a GPU.
//! let mut t = DeviceTrainer::new(Device::Host, &model, &opt, &x, Targets::Class(&y), 4)?;
//! for _ in 0..100 {
//!     t.loss_and_grad_rows(&[0..4])?;
//!     t.step(1.0 / 4.0)?;
//! }
//! let stats = t.take_stats()?;
//! assert_eq!(stats.n, 400);
//! let trained = t.model()?;
//! assert_eq!(trained.predict_class(&x)?, y);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ops::Range;

use gang_kernels::{BatchStats, Model, Optimizer, OptimizerState, Output, Targets};

use crate::error::{Error, Result};
use crate::exec::{Buf, Device, Launch};

/// One dense layer's place in the flat buffer.
#[derive(Debug, Clone, Copy)]
struct Layer {
    inp: usize,
    out: usize,
    /// Offset of the weight; the bias follows it.
    w: usize,
}

impl Layer {
    fn len(&self) -> usize {
        self.out * self.inp + self.out
    }
    fn b(&self) -> usize {
        self.w + self.out * self.inp
    }
}

/// The dense layers of a model, input side first, from its tensor layout.
fn layers_of(model: &Model) -> Vec<Layer> {
    model
        .tensors()
        .iter()
        .filter(|t| t.name.ends_with(".weight"))
        .map(|t| Layer { out: t.shape[0], inp: t.shape[1], w: t.offset })
        .collect()
}

/// Segment length of the two-pass reductions for a batch of `rows`: at least 64 rows, at
/// most 1024 segments. A function of the batch size only, so results are deterministic.
pub fn segment_rows(rows: usize) -> usize {
    rows.div_ceil(1024).max(64)
}

/// Where the shard lives.
#[derive(Debug)]
enum ShardData<'s> {
    /// In device memory: a step's rows are gathered there by a kernel.
    Resident { x: Buf<f32>, t: Buf<f32> },
    /// In host memory (it does not fit the device): a step's rows are gathered on the host
    /// into `xs`/`ts` and copied to the batch buffers.
    Streamed { x: &'s [f32], t: Vec<f32>, xs: Vec<f32>, ts: Vec<f32> },
}

/// A model, its optimizer state and a shard on a device, with the workspace of a step.
#[derive(Debug)]
pub struct DeviceTrainer<'s> {
    dev: Device,
    template: Model,
    optimizer: Optimizer,
    steps: u64,
    layers: Vec<Layer>,
    head: Output,
    features: usize,
    max_rows: usize,
    seg: usize,
    shard_rows: usize,
    params: Buf<f32>,
    grad: Buf<f32>,
    m: Option<Buf<f32>>,
    v: Option<Buf<f32>>,
    data: ShardData<'s>,
    rows: Buf<i64>,
    xb: Buf<f32>,
    tb: Buf<f32>,
    acts: Vec<Buf<f32>>,
    delta: Buf<f32>,
    dprev: Buf<f32>,
    partial: Buf<f32>,
    loss: Buf<f32>,
    correct: Buf<f32>,
    spart: Buf<f64>,
    stats: Buf<f64>,
    counted: u64,
    row_ids: Vec<i64>,
}

/// Checks targets against the head (the kernels trust them: a class beyond the softmax's
/// width would be written out of bounds) and turns them into floats.
fn targets_as_f32(head: &Output, y: Targets<'_>) -> Result<Vec<f32>> {
    let bad = |row: usize, what: String| Err(Error::InvalidArgument(format!("row {row}: {what}")));
    match (head, y) {
        (Output::Softmax { classes }, Targets::Class(c)) => {
            if let Some(r) = c.iter().position(|&l| l < 0 || l as usize >= *classes) {
                return bad(r, format!("label {} is not a class of 0..{classes}", c[r]));
            }
            Ok(c.iter().map(|&l| l as f32).collect())
        }
        (Output::Binary, Targets::Class(c)) => {
            if let Some(r) = c.iter().position(|&l| l != 0 && l != 1) {
                return bad(r, format!("label {} is not 0 or 1", c[r]));
            }
            Ok(c.iter().map(|&l| l as f32).collect())
        }
        (Output::Binary, Targets::Value(v)) => {
            if let Some(r) = v.iter().position(|t| !(0.0..=1.0).contains(t)) {
                return bad(r, format!("target {} is not a probability in [0, 1]", v[r]));
            }
            Ok(v.to_vec())
        }
        (Output::Regression, Targets::Class(c)) => Ok(c.iter().map(|&l| l as f32).collect()),
        (Output::Regression, Targets::Value(v)) => {
            if let Some(r) = v.iter().position(|t| !t.is_finite()) {
                return bad(r, format!("regression target {} is not finite", v[r]));
            }
            Ok(v.to_vec())
        }
        (Output::Softmax { .. }, Targets::Value(_)) => {
            Err(Error::InvalidArgument("a softmax model needs class labels, not values".into()))
        }
    }
}

impl<'s> DeviceTrainer<'s> {
    /// Puts `model`, `opt` and the shard (`x` row-major `[rows, features]`, targets `y`)
    /// on `dev`, with a workspace for batches of up to `max_rows` rows.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for shapes or targets that do not fit the model;
    /// [`Error::Driver`] when the device is out of memory (the message says how much was
    /// asked for).
    pub fn new(
        dev: Device,
        model: &Model,
        opt: &OptimizerState,
        x: &'s [f32],
        y: Targets<'_>,
        max_rows: usize,
    ) -> Result<DeviceTrainer<'s>> {
        DeviceTrainer::build(dev, model, opt, x, y, max_rows, true)
    }

    /// [`new`](Self::new) for a shard that stays in host memory (one larger than the
    /// device's): each step gathers its rows on the host and copies them to the device.
    /// The same results as a resident shard, bit for bit; the copy is not overlapped with
    /// the previous step's compute.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn streaming(
        dev: Device,
        model: &Model,
        opt: &OptimizerState,
        x: &'s [f32],
        y: Targets<'_>,
        max_rows: usize,
    ) -> Result<DeviceTrainer<'s>> {
        DeviceTrainer::build(dev, model, opt, x, y, max_rows, false)
    }

    fn build(
        dev: Device,
        model: &Model,
        opt: &OptimizerState,
        x: &'s [f32],
        y: Targets<'_>,
        max_rows: usize,
        resident: bool,
    ) -> Result<DeviceTrainer<'s>> {
        let features = model.features();
        if !x.len().is_multiple_of(features) || x.len() / features != y.len() {
            return Err(Error::InvalidArgument(format!(
                "the shard has {} values for {} targets and {features} features",
                x.len(),
                y.len()
            )));
        }
        if opt.len() != model.num_params() {
            return Err(Error::InvalidArgument("the optimizer state does not belong to the model".into()));
        }
        let shard_rows = y.len();
        let max_rows = max_rows.max(1);
        let head = model.output().clone();
        let layers = layers_of(model);
        let t_host = targets_as_f32(&head, y)?;
        let seg = segment_rows(max_rows);
        let segments = max_rows.div_ceil(seg);
        let widest = layers.iter().map(|l| l.out.max(l.inp)).max().unwrap_or(1);
        let longest = layers.iter().map(Layer::len).max().unwrap_or(1);
        let (m, v) = {
            let state = opt.state_tensors();
            let up = |i: usize| -> Result<Option<Buf<f32>>> { state.get(i).map(|(_, s)| dev.upload(s)).transpose() };
            (up(0)?, up(1)?)
        };
        let acts = layers.iter().map(|l| dev.zeros(max_rows * l.out)).collect::<Result<Vec<_>>>()?;
        Ok(DeviceTrainer {
            params: dev.upload(model.params())?,
            grad: dev.zeros(model.num_params())?,
            m,
            v,
            data: if resident {
                ShardData::Resident { x: dev.upload(x)?, t: dev.upload(&t_host)? }
            } else {
                ShardData::Streamed {
                    x,
                    t: t_host,
                    xs: Vec::with_capacity(max_rows * features),
                    ts: Vec::with_capacity(max_rows),
                }
            },
            rows: dev.zeros(max_rows)?,
            xb: dev.zeros(max_rows * features)?,
            tb: dev.zeros(max_rows)?,
            acts,
            delta: dev.zeros(max_rows * widest)?,
            dprev: dev.zeros(max_rows * widest)?,
            partial: dev.zeros(segments * longest)?,
            loss: dev.zeros(max_rows)?,
            correct: dev.zeros(max_rows)?,
            spart: dev.zeros(segments)?,
            stats: dev.zeros(2)?,
            counted: 0,
            row_ids: Vec::with_capacity(max_rows),
            template: model.clone(),
            optimizer: *opt.optimizer(),
            steps: opt.steps(),
            layers,
            head,
            features,
            max_rows,
            seg,
            shard_rows,
            dev,
        })
    }

    /// The device memory [`DeviceTrainer::new`] allocates for `model`, `opt`, a shard of
    /// `rows` rows and batches of up to `max_rows` rows, in bytes ([`streaming`](Self::streaming):
    /// the same with `rows` = 0).
    pub fn bytes_needed(model: &Model, opt: &OptimizerState, rows: usize, max_rows: usize) -> usize {
        let max_rows = max_rows.max(1);
        let layers = layers_of(model);
        let widest = layers.iter().map(|l| l.out.max(l.inp)).max().unwrap_or(1);
        let longest = layers.iter().map(Layer::len).max().unwrap_or(1);
        let segments = max_rows.div_ceil(segment_rows(max_rows));
        let floats = rows * (model.features() + 1)
            + model.num_params() * (2 + opt.state_tensors().len())
            + max_rows * (model.features() + 4 + 2 * widest + layers.iter().map(|l| l.out).sum::<usize>())
            + segments * longest;
        floats * 4 + max_rows * 8 + segments * 8 + 16
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Rows of the resident shard.
    pub fn shard_rows(&self) -> usize {
        self.shard_rows
    }

    /// The gradient **sum** of the rows in `ranges` (rows of the shard, in order) into the
    /// gradient buffer (overwritten), and their loss and correct predictions added to the
    /// running totals ([`take_stats`](Self::take_stats)).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the ranges hold more rows than the workspace or
    /// rows outside the shard.
    pub fn loss_and_grad_rows(&mut self, ranges: &[Range<usize>]) -> Result<()> {
        let n = self.gather(ranges)?;
        self.forward(n)?;
        self.head_and_stats(n)?;
        self.backward(n)
    }

    /// The loss and correct predictions of the rows in `ranges` (any number of rows: they
    /// go through the workspace a batch at a time), added to the running totals; no
    /// gradient.
    pub fn loss_rows(&mut self, ranges: &[Range<usize>]) -> Result<()> {
        let mut batch: Vec<Range<usize>> = Vec::new();
        let mut room = self.max_rows;
        for r in ranges {
            let mut start = r.start;
            while start < r.end {
                let take = room.min(r.end - start);
                batch.push(start..start + take);
                start += take;
                room -= take;
                if room == 0 {
                    self.loss_batch(&batch)?;
                    batch.clear();
                    room = self.max_rows;
                }
            }
        }
        if !batch.is_empty() {
            self.loss_batch(&batch)?;
        }
        Ok(())
    }

    fn loss_batch(&mut self, ranges: &[Range<usize>]) -> Result<()> {
        let n = self.gather(ranges)?;
        self.forward(n)?;
        self.head_and_stats(n)
    }

    /// The running totals since the last call (loss sum, correct predictions, rows), and
    /// resets them. Waits for the device.
    pub fn take_stats(&mut self) -> Result<BatchStats> {
        let mut s = [0f64; 2];
        self.dev.read(&self.stats, 0, &mut s)?;
        self.dev.zero(&mut self.stats)?;
        let n = std::mem::take(&mut self.counted);
        Ok(BatchStats { loss_sum: s[0], correct: s[1] as u64, n })
    }

    /// The gradient buffer (for an allreduce on the device).
    pub fn grad_mut(&mut self) -> &mut Buf<f32> {
        &mut self.grad
    }

    /// Runs `f` on the device and the gradient buffer (an allreduce on the device, e.g.
    /// [`DeviceNccl::allreduce_sum_f32`](crate::collectives::DeviceNccl::allreduce_sum_f32)).
    pub fn with_grad<R>(&mut self, f: impl FnOnce(&Device, &mut Buf<f32>) -> Result<R>) -> Result<R> {
        f(&self.dev, &mut self.grad)
    }

    /// Copies the gradient to the host (for an allreduce through host memory).
    pub fn grad_to_host(&self, host: &mut [f32]) -> Result<()> {
        self.dev.read(&self.grad, 0, host)
    }

    /// Replaces the gradient with `host` (after an allreduce through host memory).
    pub fn grad_from_host(&mut self, host: &[f32]) -> Result<()> {
        self.dev.write(&mut self.grad, 0, host)
    }

    /// One optimizer step with the gradient `scale * grad` (`1 / global rows`), as
    /// [`OptimizerState::step_scaled`].
    pub fn step(&mut self, scale: f32) -> Result<()> {
        self.steps += 1;
        let len = self.params.len();
        let l = match self.optimizer {
            Optimizer::Sgd { lr, momentum: 0.0, weight_decay } => {
                Launch::sgd(self.params.all_mut(), self.grad.all(), len, lr, weight_decay, scale)?
            }
            Optimizer::Sgd { lr, momentum, weight_decay } => {
                let b = self.m.as_mut().ok_or_else(|| missing_state("momentum_buffer"))?;
                Launch::sgd_momentum(
                    self.params.all_mut(),
                    b.all_mut(),
                    self.grad.all(),
                    len,
                    lr,
                    momentum,
                    weight_decay,
                    scale,
                )?
            }
            Optimizer::Adam { lr, beta1, beta2, eps, weight_decay } => {
                // The bias corrections in double, as on the CPU.
                let t = self.steps.min(i32::MAX as u64) as i32;
                let bc1 = 1.0 - f64::from(beta1).powi(t);
                let bc2 = 1.0 - f64::from(beta2).powi(t);
                let coef = [
                    (f64::from(lr) / bc1) as f32,
                    (1.0 / bc2.sqrt()) as f32,
                    1.0 - lr * weight_decay,
                    beta1,
                    beta2,
                    eps,
                    scale,
                ];
                let (m, v) = match (self.m.as_mut(), self.v.as_mut()) {
                    (Some(m), Some(v)) => (m, v),
                    _ => return Err(missing_state("exp_avg")),
                };
                Launch::adam(self.params.all_mut(), m.all_mut(), v.all_mut(), self.grad.all(), len, coef)?
            }
        };
        self.dev.launch(l)
    }

    /// The model with the device's parameters (waits for the device).
    pub fn model(&self) -> Result<Model> {
        let params = self.dev.to_vec(&self.params)?;
        Model::from_params(self.template.kind().clone(), self.features, params)
            .map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// The optimizer state on the device, as the CPU's (for checkpoints).
    pub fn optimizer_state(&self) -> Result<OptimizerState> {
        let names = self.optimizer.state_names();
        let mut host = Vec::new();
        for (i, b) in [&self.m, &self.v].into_iter().enumerate().take(names.len()) {
            let b = b.as_ref().ok_or_else(|| missing_state(names[i]))?;
            host.push(self.dev.to_vec(b)?);
        }
        let state: Vec<(&str, &[f32])> = names.iter().zip(&host).map(|(n, v)| (*n, v.as_slice())).collect();
        OptimizerState::from_state(self.optimizer, self.params.len(), self.steps, &state)
            .map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// Replaces the parameters (a model restored from a checkpoint).
    pub fn set_params(&mut self, params: &[f32]) -> Result<()> {
        if params.len() != self.params.len() {
            return Err(Error::InvalidArgument(format!(
                "{} parameters given for a model of {}",
                params.len(),
                self.params.len()
            )));
        }
        self.dev.write(&mut self.params, 0, params)
    }

    /// Copies the rows of `ranges` into the batch buffers; returns their number.
    fn gather(&mut self, ranges: &[Range<usize>]) -> Result<usize> {
        self.row_ids.clear();
        for r in ranges {
            if r.end > self.shard_rows || r.start > r.end {
                return Err(Error::InvalidArgument(format!(
                    "rows {}..{} are outside the shard's {} rows",
                    r.start, r.end, self.shard_rows
                )));
            }
            self.row_ids.extend(r.clone().map(|i| i as i64));
        }
        let n = self.row_ids.len();
        if n > self.max_rows {
            return Err(Error::InvalidArgument(format!(
                "a batch of {n} rows does not fit the workspace of {} rows",
                self.max_rows
            )));
        }
        let f = self.features;
        match &mut self.data {
            ShardData::Resident { x, t } => {
                self.dev.write(&mut self.rows, 0, &self.row_ids)?;
                self.dev.launch(Launch::gather_rows(
                    x.all(),
                    self.shard_rows,
                    self.rows.all(),
                    n,
                    f,
                    self.xb.all_mut(),
                )?)?;
                self.dev.launch(Launch::gather_values(
                    t.all(),
                    self.shard_rows,
                    self.rows.all(),
                    n,
                    self.tb.all_mut(),
                )?)?;
            }
            ShardData::Streamed { x, t, xs, ts } => {
                xs.clear();
                ts.clear();
                for r in ranges {
                    xs.extend_from_slice(&x[r.start * f..r.end * f]);
                    ts.extend_from_slice(&t[r.clone()]);
                }
                self.dev.write(&mut self.xb, 0, xs)?;
                self.dev.write(&mut self.tb, 0, ts)?;
            }
        }
        self.counted += n as u64;
        Ok(n)
    }

    fn forward(&mut self, n: usize) -> Result<()> {
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            let (prev, cur) = self.acts.split_at_mut(i);
            let input = if i == 0 { self.xb.all() } else { prev[i - 1].all() };
            self.dev.launch(Launch::dense_forward(
                input,
                self.params.at(l.w),
                self.params.at(l.b()),
                n,
                l.inp,
                l.out,
                i < last,
                cur[0].all_mut(),
            )?)?;
        }
        Ok(())
    }

    fn head_and_stats(&mut self, n: usize) -> Result<()> {
        let z = self.acts.last().expect("a model has a layer").all();
        let l = match self.head {
            Output::Regression => Launch::head(
                "gang_head_regression",
                z,
                self.tb.all(),
                n,
                self.delta.all_mut(),
                self.loss.all_mut(),
                self.correct.all_mut(),
            )?,
            Output::Binary => Launch::head(
                "gang_head_binary",
                z,
                self.tb.all(),
                n,
                self.delta.all_mut(),
                self.loss.all_mut(),
                self.correct.all_mut(),
            )?,
            Output::Softmax { classes } => Launch::head_softmax(
                z,
                self.tb.all(),
                n,
                classes,
                self.delta.all_mut(),
                self.loss.all_mut(),
                self.correct.all_mut(),
            )?,
        };
        self.dev.launch(l)?;
        let segments = n.div_ceil(self.seg);
        for (which, acc) in [(0usize, 0usize), (1, 1)] {
            let v = if which == 0 { self.loss.all() } else { self.correct.all() };
            self.dev.launch(Launch::sum_rows_f64(v, n, self.seg, self.spart.all_mut())?)?;
            self.dev.launch(Launch::accumulate_f64(self.spart.all(), segments, self.stats.at_mut(acc))?)?;
        }
        Ok(())
    }

    fn backward(&mut self, n: usize) -> Result<()> {
        let segments = n.div_ceil(self.seg);
        for i in (0..self.layers.len()).rev() {
            let l = self.layers[i];
            let input = if i == 0 { self.xb.all() } else { self.acts[i - 1].all() };
            self.dev.launch(Launch::dense_grad_partial(
                self.delta.all(),
                input,
                n,
                l.inp,
                l.out,
                self.seg,
                self.partial.all_mut(),
            )?)?;
            self.dev.launch(Launch::sum_segments(self.partial.all(), segments, l.len(), self.grad.at_mut(l.w))?)?;
            if i > 0 {
                self.dev.launch(Launch::dense_backward_input(
                    self.delta.all(),
                    self.params.at(l.w),
                    self.acts[i - 1].all(),
                    n,
                    l.inp,
                    l.out,
                    self.dprev.all_mut(),
                )?)?;
                std::mem::swap(&mut self.delta, &mut self.dprev);
            }
        }
        Ok(())
    }
}

fn missing_state(name: &str) -> Error {
    Error::InvalidArgument(format!("the optimizer state {name} is missing on the device"))
}
