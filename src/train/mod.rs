//! Data-parallel training: each rank computes gradients on its shard with the kernels of
//! `gang-kernels`, the gradients of all layers travel in one flat buffer allreduced once
//! per step, and every rank applies the same optimizer step, so the model is the same on
//! every rank (checked every epoch).
//!
//! Deterministic: initial weights come from a seed (and rank 0, broadcast), every epoch's
//! shuffle from `(seed, epoch, rank)`, gradients are summed in a fixed order inside a rank
//! (the kernels' fixed chunks) and by MPI's allreduce across ranks (a fixed algorithm for a
//! given world size). The same world size gives a bitwise-identical model across runs, and
//! across a restart from a checkpoint, which saves the parameters, the optimizer state and
//! the position in the epoch.

pub mod data;
pub mod device;
pub mod model_file;
pub mod svg;

use crate::checkpoint::{CheckpointStore, Meta, State, Tensor};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fault::FaultPlan;
use crate::ReduceOp;
use gang_kernels::{BatchStats, Model, ModelKind, Optimizer, OptimizerState, Output, SplitMix64};
use serde::{Deserialize, Serialize};
use std::time::Instant;

pub use data::{Labels, Shard};
pub use device::{DeviceChoice, DeviceComm};

/// What to train and how: a builder that validates what it is given.
///
/// ```
/// use gang::train::{CheckpointConfig, TrainConfig};
/// use gang_kernels::{ModelKind, Optimizer};
///
/// let cfg = TrainConfig::try_new(ModelKind::Logistic, 3, 512)
///     .unwrap()
///     .with_optimizer(Optimizer::adam(0.01))
///     .unwrap()
///     .with_seed(7)
///     .with_checkpoint(CheckpointConfig::try_new("ckpt/", 100, 2).unwrap());
/// assert_eq!((cfg.epochs(), cfg.batch_size(), cfg.seed()), (3, 512, 7));
/// assert!(TrainConfig::try_new(ModelKind::Logistic, 0, 512).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct TrainConfig {
    model: ModelKind,
    epochs: u64,
    batch_size: usize,
    optimizer: Optimizer,
    seed: u64,
    shuffle_block: usize,
    checkpoint: Option<CheckpointConfig>,
    device: DeviceChoice,
    device_comm: DeviceComm,
    allow_gpu_sharing: bool,
    gpu_discovery_script: Option<std::path::PathBuf>,
}

impl TrainConfig {
    /// Trains `model` for `epochs` passes over the data, `batch_size` rows per step over the
    /// whole gang; SGD with learning rate 0.1, seed 0, blocks of rows as large as
    /// fit in [`SHUFFLE_BLOCK_BYTES`], no checkpoints.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `epochs` or `batch_size` is 0.
    pub fn try_new(model: ModelKind, epochs: u64, batch_size: usize) -> Result<TrainConfig> {
        if epochs == 0 {
            return Err(Error::InvalidArgument("the number of epochs must be at least 1".into()));
        }
        if batch_size == 0 {
            return Err(Error::InvalidArgument("the batch size must be at least 1".into()));
        }
        Ok(TrainConfig {
            model,
            epochs,
            batch_size,
            optimizer: Optimizer::sgd(0.1),
            seed: 0,
            shuffle_block: 0,
            checkpoint: None,
            device: DeviceChoice::Auto,
            device_comm: DeviceComm::Auto,
            allow_gpu_sharing: false,
            gpu_discovery_script: None,
        })
    }

    /// Where the kernels run ([`DeviceChoice::Auto`] by default: a GPU when every rank has
    /// one and gang was built with the `cuda` feature).
    pub fn with_device(mut self, device: DeviceChoice) -> TrainConfig {
        self.device = device;
        self
    }

    /// Where the kernels run.
    pub fn device(&self) -> DeviceChoice {
        self.device
    }

    /// How the gradients of GPU ranks are summed ([`DeviceComm::Auto`] by default).
    pub fn with_device_comm(mut self, comm: DeviceComm) -> TrainConfig {
        self.device_comm = comm;
        self
    }

    /// A GPU discovery script in Spark's format that lists each rank's GPUs (see
    /// `gang_protocol::device::VisibleDevices`; `CUDA_VISIBLE_DEVICES`, when set, wins).
    pub fn with_gpu_discovery_script(mut self, script: Option<std::path::PathBuf>) -> TrainConfig {
        self.gpu_discovery_script = script;
        self
    }

    /// Lets several ranks of a node train on one GPU (refused by default: the preflight
    /// check fails the gang with a table of the plan). Their gradients travel through host
    /// memory (NCCL refuses two ranks on one device).
    pub fn with_gpu_sharing(mut self, allow: bool) -> TrainConfig {
        self.allow_gpu_sharing = allow;
        self
    }

    /// The optimizer and its hyper-parameters.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for hyper-parameters that cannot work (a learning rate
    /// that is not positive and finite, ...).
    pub fn with_optimizer(mut self, optimizer: Optimizer) -> Result<TrainConfig> {
        optimizer.validate().map_err(kernel_error)?;
        self.optimizer = optimizer;
        Ok(self)
    }

    /// The seed of the initial weights and the shuffles.
    pub fn with_seed(mut self, seed: u64) -> TrainConfig {
        self.seed = seed;
        self
    }

    /// Rows that stay together when an epoch is shuffled (see [`train`]); 1 shuffles single
    /// rows; 0 takes as many rows as fit in [`SHUFFLE_BLOCK_BYTES`].
    pub fn with_shuffle_block(mut self, rows: usize) -> TrainConfig {
        self.shuffle_block = rows;
        self
    }

    /// Checkpoints: where, every how many steps, how many to keep.
    pub fn with_checkpoint(mut self, checkpoint: CheckpointConfig) -> TrainConfig {
        self.checkpoint = Some(checkpoint);
        self
    }

    /// The model.
    pub fn model(&self) -> &ModelKind {
        &self.model
    }

    /// Passes over the data.
    pub fn epochs(&self) -> u64 {
        self.epochs
    }

    /// Rows per step over the whole gang (each rank takes `batch_size / world`).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Rows per shuffled block (0: as many as fit in [`SHUFFLE_BLOCK_BYTES`]).
    pub fn shuffle_block(&self) -> usize {
        self.shuffle_block
    }

    /// The checkpoints, if any.
    pub fn checkpoint(&self) -> Option<&CheckpointConfig> {
        self.checkpoint.as_ref()
    }
}

/// Where and how often to checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    dir: std::path::PathBuf,
    every: u64,
    keep: usize,
}

impl CheckpointConfig {
    /// Checkpoints in `dir` every `every` steps (and at the end), keeping the newest `keep`
    /// complete ones.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `every` or `keep` is 0.
    pub fn try_new(dir: impl Into<std::path::PathBuf>, every: u64, keep: usize) -> Result<CheckpointConfig> {
        if every == 0 {
            return Err(Error::InvalidArgument("checkpoints must be taken every 1 step or more".into()));
        }
        if keep == 0 {
            return Err(Error::InvalidArgument("at least one checkpoint must be kept".into()));
        }
        Ok(CheckpointConfig { dir: dir.into(), every, keep })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Steps between checkpoints.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// Complete checkpoints kept.
    pub fn keep(&self) -> usize {
        self.keep
    }
}

/// One epoch's figures over the whole gang.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Epoch number, from 1.
    pub epoch: u64,
    /// Mean training loss over the epoch's steps (log-loss; half squared error for
    /// regression).
    pub loss: f64,
    /// Training accuracy over the epoch's steps (classification).
    pub accuracy: f64,
    /// Wall-clock seconds of the epoch on this rank.
    pub seconds: f64,
    /// Seconds of the epoch spent in the gradient allreduce.
    pub allreduce_seconds: f64,
}

/// What training produced.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The trained model (the same on every rank).
    pub model: Model,
    /// Figures per epoch (epochs before a restored checkpoint are not repeated).
    pub epochs: Vec<EpochStats>,
    /// Steps taken in all, including those before a restore.
    pub steps: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// The checkpoint step training resumed from, if any.
    pub resumed_from: Option<u64>,
    /// Loss and accuracy of the final model over all training rows.
    pub final_stats: BatchStats,
}

/// Where training stands: what a checkpoint records besides the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// Steps taken in all.
    step: u64,
    /// Epoch in progress (from 0).
    epoch: u64,
    /// Steps taken in that epoch.
    step_in_epoch: u64,
}

/// A 64-bit digest of the parameters' bits, to check that every rank holds the same model.
fn digest(params: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in params {
        h ^= u64::from(p.to_bits());
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn kernel_error(e: gang_kernels::Error) -> Error {
    Error::External(Box::new(e))
}

/// Bytes of rows per shuffled block by default (`shuffle_block: 0`): 1,024 rows of 32
/// `f32` features. Smaller blocks cost speed: a step reading its rows as 8 KiB blocks
/// in random order took three times as long as one reading 128 KiB blocks (the hardware
/// prefetcher restarts at every block), single rows ten times.
pub const SHUFFLE_BLOCK_BYTES: usize = 128 << 10;

/// The rows per shuffled block of `cfg` for rows of `features` `f32`.
fn shuffle_block(cfg: &TrainConfig, features: usize) -> usize {
    match cfg.shuffle_block {
        0 => (SHUFFLE_BLOCK_BYTES / (4 * features.max(1))).max(1),
        rows => rows,
    }
}

/// This rank's rows in the order of `epoch`: blocks of `block` consecutive rows (the
/// last may be shorter), in a random order drawn from `(seed, epoch, rank)`, with the
/// offset of each block's first row in the epoch.
struct EpochOrder {
    blocks: Vec<std::ops::Range<usize>>,
    /// `starts[i]`: the epoch row at which `blocks[i]` begins.
    starts: Vec<usize>,
}

impl EpochOrder {
    fn new(rows: usize, block: usize, seed: u64, epoch: u64, rank: usize) -> EpochOrder {
        let block = block.max(1);
        let mut ids: Vec<usize> = (0..rows.div_ceil(block)).collect();
        let mut rng = SplitMix64::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((rank as u64 + 1) << 48));
        rng.shuffle(&mut ids);
        let blocks: Vec<_> = ids.iter().map(|&b| b * block..rows.min((b + 1) * block)).collect();
        let starts = blocks
            .iter()
            .scan(0, |at, b| {
                let s = *at;
                *at += b.len();
                Some(s)
            })
            .collect();
        EpochOrder { blocks, starts }
    }

    /// The shard's row ranges holding epoch rows `from..from + len`, in order, into `out`.
    fn ranges(&self, from: usize, len: usize, out: &mut Vec<std::ops::Range<usize>>) {
        out.clear();
        let mut i = self.starts.partition_point(|&s| s <= from).saturating_sub(1);
        let (mut at, end) = (from, from + len);
        while at < end {
            let b = &self.blocks[i];
            let skip = at - self.starts[i];
            let take = (b.len() - skip).min(end - at);
            out.push(b.start + skip..b.start + skip + take);
            at += take;
            i += 1;
        }
    }
}

/// Trains `cfg.model` on the shards of the gang (collective: every rank calls it with its
/// own shard). Resumes from the newest complete checkpoint in `cfg.checkpoint` if there is
/// one. `on_epoch` runs on every rank after each epoch with the gang-wide figures.
///
/// Each epoch visits the shard's rows in blocks of `cfg.shuffle_block` consecutive rows
/// (by default 128 KiB of them, [`SHUFFLE_BLOCK_BYTES`]),
/// the blocks in a random order, and computes every step's gradient on its rows where they
/// lie (no copy). Rows of a block stay together in every epoch: if the input is sorted
/// (by label, by time), shuffle the rows once first ([`Shard::shuffle_rows`], which
/// `gang train` does), or set `shuffle_block` to 1 for a row-level shuffle every epoch
/// (slower: one cache miss per row).
///
/// # Errors
/// Configuration errors (batch size smaller than the gang, a model that does not fit the
/// labels), kernel errors on bad data, checkpoint errors, and
/// [`Error::Environment`] if the ranks' models ever differ.
pub fn train(
    ctx: &Context,
    shard: &Shard,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<TrainReport> {
    let comm = ctx.comm();
    let (rank, world) = (ctx.rank(), ctx.world());
    if cfg.batch_size < world {
        return Err(Error::InvalidArgument(format!(
            "the batch size {} is smaller than the gang ({world} ranks): every rank needs at least one row per step",
            cfg.batch_size
        )));
    }
    cfg.optimizer.validate().map_err(kernel_error)?;
    let local_batch = cfg.batch_size / world;
    let steps_per_epoch = comm.allreduce_scalar((shard.rows / local_batch) as u64, ReduceOp::Min)?;
    if steps_per_epoch == 0 {
        let smallest = comm.allreduce_scalar(shard.rows as u64, ReduceOp::Min)?;
        return Err(Error::InvalidArgument(format!(
            "the smallest shard has {smallest} rows, fewer than the {local_batch} rows per rank and step of \
             a batch size of {} over {world} ranks: lower the batch size or use fewer ranks",
            cfg.batch_size
        )));
    }
    let total_steps = steps_per_epoch * cfg.epochs;

    // Initial model on rank 0, broadcast: every rank starts from the same bits.
    let mut model = Model::new(cfg.model.clone(), shard.features, cfg.seed).map_err(kernel_error)?;
    comm.broadcast(0, model.params_mut())?;
    let mut opt = OptimizerState::new(cfg.optimizer, model.num_params()).map_err(kernel_error)?;
    let mut pos = Position { step: 0, epoch: 0, step_in_epoch: 0 };

    let store = match &cfg.checkpoint {
        Some(c) => Some(CheckpointStore::new(&c.dir, c.keep)?),
        None => None,
    };
    let mut resumed_from = None;
    if let Some(store) = &store {
        if let Some(r) = store.restore(ctx)? {
            let saved: Position = serde_json::from_value(r.meta.extra.get("position").cloned().unwrap_or_default())
                .map_err(|e| Error::Input {
                    path: r.dir.clone(),
                    location: Some("metadata".into()),
                    rank: Some(rank),
                    detail: format!("no training position in the checkpoint ({e}): was it written by gang train?"),
                })?;
            let params = r.tensor("params").ok_or_else(|| restore_error(&r.dir, "params"))?;
            if params.data.len() != model.num_params() {
                return Err(Error::Input {
                    path: r.dir.clone(),
                    location: Some("params".into()),
                    rank: Some(rank),
                    detail: format!(
                        "the checkpoint holds {} parameters but {} has {}: it belongs to another model; use another \
                         checkpoint directory",
                        params.data.len(),
                        cfg.model,
                        model.num_params()
                    ),
                });
            }
            model.params_mut().copy_from_slice(&params.data);
            let state: Vec<(&str, &[f32])> = cfg
                .optimizer
                .state_names()
                .iter()
                .map(|n| {
                    r.tensor(&format!("optimizer.{n}"))
                        .map(|t| (*n, t.data.as_slice()))
                        .ok_or_else(|| restore_error(&r.dir, n))
                })
                .collect::<Result<_>>()?;
            let opt_steps =
                r.meta.extra.get("optimizer_steps").and_then(serde_json::Value::as_u64).unwrap_or(saved.step);
            opt = OptimizerState::from_state(cfg.optimizer, model.num_params(), opt_steps, &state)
                .map_err(kernel_error)?;
            pos = saved;
            if r.resharded(world) {
                // Another world size: the same epoch, restarted from its beginning.
                pos.step -= pos.step_in_epoch;
                pos.step_in_epoch = 0;
            }
            resumed_from = Some(r.step);
            if rank == 0 {
                for s in &r.skipped {
                    eprintln!("gang train: passed over a checkpoint: {s}");
                }
                eprintln!(
                    "gang train: resumed from the checkpoint of step {} (epoch {}, step {} of {}) in {}",
                    r.step,
                    pos.epoch + 1,
                    pos.step_in_epoch,
                    steps_per_epoch,
                    r.dir.display()
                );
            }
        }
    }

    // The GPU, when the configuration asks for one and every rank has one: the model,
    // the optimizer state and the shard move to the device once; checkpoints and the
    // end-of-epoch check read them back.
    #[cfg(feature = "cuda")]
    let mut gpu = device::open(ctx, cfg, &model, &opt, shard, local_batch)?;
    #[cfg(not(feature = "cuda"))]
    if matches!(cfg.device, DeviceChoice::Cuda | DeviceChoice::CudaHost) {
        return Err(Error::classified(
            crate::failure::FailureClass::Usage,
            "--device cuda: this build of gang has no GPU support (built without the `cuda` feature)",
        ));
    }

    let faults = FaultPlan::from_env()?;
    let mut grad = model.grad_buffer();
    let mut ranges = Vec::new();
    let mut epochs = Vec::new();
    while pos.epoch < cfg.epochs {
        let started = Instant::now();
        let mut allreduce_s = 0.0;
        let block = shuffle_block(cfg, shard.features);
        let order = EpochOrder::new(shard.rows, block, cfg.seed, pos.epoch, rank);
        let mut stats = BatchStats::default();
        while pos.step_in_epoch < steps_per_epoch {
            faults.check(rank, pos.step, ctx.attempt());
            order.ranges(pos.step_in_epoch as usize * local_batch, local_batch, &mut ranges);
            let scale = 1.0 / (local_batch * world) as f32;
            #[cfg(feature = "cuda")]
            if let Some(g) = gpu.as_mut() {
                g.trainer.loss_and_grad_rows(&ranges).map_err(device::gpu_error)?;
                let t = Instant::now();
                g.allreduce(ctx, &mut grad)?;
                allreduce_s += t.elapsed().as_secs_f64();
                g.trainer.step(scale).map_err(device::gpu_error)?;
            }
            #[cfg(feature = "cuda")]
            let on_cpu = gpu.is_none();
            #[cfg(not(feature = "cuda"))]
            let on_cpu = true;
            if on_cpu {
                grad.iter_mut().for_each(|g| *g = 0.0);
                let s = model
                    .loss_and_grad_rows(&shard.x, shard.labels.targets(), &ranges, &mut grad)
                    .map_err(kernel_error)?;
                stats.merge(&s);
                let t = Instant::now();
                comm.allreduce(&mut grad, ReduceOp::Sum)?;
                allreduce_s += t.elapsed().as_secs_f64();
                opt.step_scaled(model.params_mut(), &grad, scale).map_err(kernel_error)?;
            }
            pos.step += 1;
            pos.step_in_epoch += 1;
            ctx.progress(pos.step, total_steps, "train");
            if pos.step_in_epoch == steps_per_epoch {
                pos.epoch += 1;
                pos.step_in_epoch = 0;
                // Close the epoch before a checkpoint, so that a restore continues with the
                // next one.
                break;
            }
            if let (Some(store), Some(c)) = (&store, &cfg.checkpoint) {
                if pos.step.is_multiple_of(c.every) {
                    #[cfg(feature = "cuda")]
                    if let Some(g) = &gpu {
                        (model, opt) = device::read_back(g)?;
                    }
                    save(ctx, store, &model, &opt, pos)?;
                }
            }
        }
        #[cfg(feature = "cuda")]
        if let Some(g) = gpu.as_mut() {
            stats = g.trainer.take_stats().map_err(device::gpu_error)?;
            (model, opt) = device::read_back(g)?;
        }
        // Gang-wide figures of the epoch, and a check that every rank holds the same model.
        let mut sums = [stats.loss_sum, stats.correct as f64, stats.n as f64];
        comm.allreduce(&mut sums, ReduceOp::Sum)?;
        let d = digest(model.params());
        let (lo, hi) = (comm.allreduce_scalar(d, ReduceOp::Min)?, comm.allreduce_scalar(d, ReduceOp::Max)?);
        if lo != hi {
            return Err(Error::Environment(format!(
                "the ranks' models differ after epoch {}: the allreduce did not give every rank the same sum",
                pos.epoch
            )));
        }
        let e = EpochStats {
            epoch: pos.epoch,
            loss: sums[0] / sums[2].max(1.0),
            accuracy: if matches!(model.output(), Output::Regression) { 0.0 } else { sums[1] / sums[2].max(1.0) },
            seconds: started.elapsed().as_secs_f64(),
            allreduce_seconds: allreduce_s,
        };
        on_epoch(&e);
        epochs.push(e);
        if let (Some(store), Some(c)) = (&store, &cfg.checkpoint) {
            if pos.step.is_multiple_of(c.every) || pos.epoch == cfg.epochs {
                save(ctx, store, &model, &opt, pos)?;
            }
        }
    }

    let final_stats = evaluate(ctx, &model, shard)?;
    Ok(TrainReport { model, epochs, steps: pos.step, steps_per_epoch, resumed_from, final_stats })
}

fn restore_error(dir: &std::path::Path, what: &str) -> Error {
    Error::Input {
        path: dir.to_path_buf(),
        location: Some(what.to_string()),
        rank: None,
        detail: format!("the checkpoint has no tensor {what:?}: was it written by gang train with this optimizer?"),
    }
}

fn save(ctx: &Context, store: &CheckpointStore, model: &Model, opt: &OptimizerState, pos: Position) -> Result<()> {
    let mut state = State::new().with_replicated(Tensor::vector("params", model.params().to_vec()));
    for (name, data) in opt.state_tensors() {
        state = state.with_replicated(Tensor::vector(format!("optimizer.{name}"), data.to_vec()));
    }
    state = state.with_meta(Meta {
        epoch: pos.epoch,
        rng_state: Vec::new(),
        data_cursor: pos.step_in_epoch,
        extra: serde_json::json!({ "position": pos, "optimizer_steps": opt.steps(), "model": model.kind().to_string() }),
    });
    store.save(ctx, pos.step, &state)
}

/// Loss and accuracy of `model` over every row of the gang's shards.
///
/// # Errors
/// Kernel and communication errors.
pub fn evaluate(ctx: &Context, model: &Model, shard: &Shard) -> Result<BatchStats> {
    let s = model.loss(&shard.x, shard.labels.targets()).map_err(kernel_error)?;
    let mut sums = [s.loss_sum, s.correct as f64, s.n as f64];
    ctx.comm().allreduce(&mut sums, ReduceOp::Sum)?;
    Ok(BatchStats { loss_sum: sums[0], correct: sums[1] as u64, n: sums[2] as u64 })
}

/// Parses `linear`, `logistic`, `softmax` and `mlp:64` / `mlp:64,32`; `classes` is the
/// number of classes of the label (0 for a real-valued label).
///
/// # Errors
/// [`Error::InvalidArgument`] for an unknown model or one that does not fit the label.
pub fn parse_model(spec: &str, classes: usize) -> Result<ModelKind> {
    let head = match classes {
        0 => Output::Regression,
        2 => Output::Binary,
        k => Output::Softmax { classes: k },
    };
    let bad = |why: String| Err(Error::InvalidArgument(format!("model {spec}: {why}")));
    match spec {
        "linear" if classes == 0 => Ok(ModelKind::Linear),
        "linear" => {
            bad("linear regression needs a real-valued label; this one has classes (use logistic or softmax)".into())
        }
        "logistic" if classes == 2 => Ok(ModelKind::Logistic),
        "logistic" => bad(format!(
            "logistic regression needs a label with 2 classes; this one has {classes} (use softmax or linear)"
        )),
        "softmax" if classes >= 2 => Ok(ModelKind::Softmax { classes }),
        "softmax" => bad("softmax regression needs a class label (integers 0..k)".into()),
        _ => match spec.strip_prefix("mlp:") {
            Some(sizes) => {
                let hidden: Vec<usize> = sizes
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().ok().filter(|&n| n > 0))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "model {spec}: hidden sizes must be positive integers, e.g. mlp:64,32"
                        ))
                    })?;
                if hidden.is_empty() || hidden.len() > 2 {
                    return bad("one or two hidden layers, e.g. mlp:64 or mlp:64,32".into());
                }
                Ok(ModelKind::Mlp { hidden, outputs: head })
            }
            None => bad("expected linear, logistic, softmax, mlp:H or mlp:H1,H2".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{execute, Config};

    fn toy_shard(rank: usize, rows: usize) -> Shard {
        // y = 1 when x0 + 0.5 x1 > 0, for rows derived from the rank.
        let mut rng = SplitMix64::new(rank as u64 + 7);
        let mut x = Vec::with_capacity(rows * 2);
        let mut y = Vec::with_capacity(rows);
        for _ in 0..rows {
            let (a, b) = (rng.next_f32() * 2.0 - 1.0, rng.next_f32() * 2.0 - 1.0);
            x.extend([a, b]);
            y.push(i64::from(a + 0.5 * b > 0.0));
        }
        Shard { x, labels: Labels::Class(y), rows, features: 2 }
    }

    fn cfg(dir: Option<&std::path::Path>, every: u64) -> TrainConfig {
        let c = TrainConfig::try_new(ModelKind::Logistic, 4, 64)
            .unwrap()
            .with_optimizer(Optimizer::adam(0.05))
            .unwrap()
            .with_seed(3)
            .with_shuffle_block(8);
        match dir {
            Some(d) => c.with_checkpoint(CheckpointConfig::try_new(d, every, 2).unwrap()),
            None => c,
        }
    }

    #[test]
    fn training_learns_and_is_the_same_on_every_rank_and_every_run() {
        let run = || {
            execute(Config::local(2), |ctx| {
                let r = train(ctx, &toy_shard(ctx.rank(), 500), &cfg(None, 0), |_| {})?;
                Ok((r.model.params().to_vec(), r.final_stats))
            })
            .unwrap()
        };
        let (a, b) = (run(), run());
        assert_eq!(a[0].0, a[1].0, "ranks hold different models");
        assert_eq!(a[0].0, b[0].0, "two runs differ");
        assert!(a[0].1.accuracy() > 0.95, "accuracy {}", a[0].1.accuracy());
    }

    #[test]
    fn a_restart_from_a_checkpoint_gives_the_same_model_bit_for_bit() {
        let dir = std::env::temp_dir().join(format!("gang-train-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let full = execute(Config::local(2), |ctx| {
            Ok(train(ctx, &toy_shard(ctx.rank(), 500), &cfg(None, 0), |_| {})?.model.params().to_vec())
        })
        .unwrap();
        // A run that stops after 2 epochs (as if killed), with checkpoints every 5 steps,
        // then a run of all 4 epochs that resumes from them.
        let mut short = cfg(Some(&dir), 5);
        short.epochs = 2;
        execute(Config::local(2), |ctx| train(ctx, &toy_shard(ctx.rank(), 500), &short, |_| {}).map(|_| ())).unwrap();
        let resumed = execute(Config::local(2), |ctx| {
            let r = train(ctx, &toy_shard(ctx.rank(), 500), &cfg(Some(&dir), 5), |_| {})?;
            assert!(r.resumed_from.is_some());
            Ok(r.model.params().to_vec())
        })
        .unwrap();
        assert_eq!(resumed[0], full[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The GPU training path (device buffers, host-staged gradients, read-back for
    /// checkpoints and the end-of-epoch check) over the host build of the CUDA kernels:
    /// the same model as the CPU kernels to rounding, the same bits on every run, and a
    /// restart from its checkpoints gives the uninterrupted run's model bit for bit.
    #[cfg(feature = "cuda")]
    #[test]
    fn the_gpu_path_on_the_kernels_host_build_matches_the_cpu_and_restarts_bit_for_bit() {
        let host = |c: TrainConfig| c.with_device(DeviceChoice::CudaHost);
        let run = |c: &TrainConfig| {
            execute(Config::local(2), |ctx| {
                let r = train(ctx, &toy_shard(ctx.rank(), 500), c, |_| {})?;
                Ok((r.model.params().to_vec(), r.final_stats, r.epochs.last().map(|e| e.loss)))
            })
            .unwrap()
        };
        let cpu = run(&cfg(None, 0));
        let gpu = run(&host(cfg(None, 0)));
        assert_eq!(gpu[0].0, gpu[1].0, "ranks hold different models");
        assert_eq!(run(&host(cfg(None, 0)))[0].0, gpu[0].0, "two runs differ");
        let scale = cpu[0].0.iter().fold(0f32, |m, p| m.max(p.abs()));
        for (g, c) in gpu[0].0.iter().zip(&cpu[0].0) {
            assert!((g - c).abs() <= 1e-3 * scale, "{:?} against the CPU's {:?}", gpu[0].0, cpu[0].0);
        }
        let (gl, cl) = (gpu[0].2.unwrap(), cpu[0].2.unwrap());
        assert!((gl - cl).abs() <= 1e-4 * cl, "last epoch's loss {gl} against the CPU's {cl}");
        assert!(gpu[0].1.accuracy() > 0.95, "accuracy {}", gpu[0].1.accuracy());

        let dir = std::env::temp_dir().join(format!("gang-train-gpu-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut short = host(cfg(Some(&dir), 5));
        short.epochs = 2;
        execute(Config::local(2), |ctx| train(ctx, &toy_shard(ctx.rank(), 500), &short, |_| {}).map(|_| ())).unwrap();
        let resumed = execute(Config::local(2), |ctx| {
            let r = train(ctx, &toy_shard(ctx.rank(), 500), &host(cfg(Some(&dir), 5)), |_| {})?;
            assert!(r.resumed_from.is_some());
            Ok(r.model.params().to_vec())
        })
        .unwrap();
        assert_eq!(resumed[0], gpu[0].0, "the resumed model differs from the uninterrupted one");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_epoch_visits_every_row_once_in_blocks() {
        for (rows, block) in [(1000, 64), (1000, 1), (7, 64), (130, 8)] {
            let order = EpochOrder::new(rows, block, 1, 0, 0);
            let mut seen = vec![0u32; rows];
            let mut out = Vec::new();
            // Steps of 37 rows, and the rest.
            let mut at = 0;
            while at < rows {
                let len = 37.min(rows - at);
                order.ranges(at, len, &mut out);
                assert_eq!(out.iter().map(|r| r.len()).sum::<usize>(), len);
                for r in &out {
                    assert!(r.len() <= block);
                    seen[r.clone()].iter_mut().for_each(|s| *s += 1);
                }
                at += len;
            }
            assert!(seen.iter().all(|&s| s == 1), "rows {rows} block {block}");
            let again = EpochOrder::new(rows, block, 1, 0, 0);
            assert_eq!(order.blocks, again.blocks);
            if rows / block.max(1) > 4 {
                assert_ne!(order.blocks, EpochOrder::new(rows, block, 1, 1, 0).blocks, "epochs differ");
            }
        }
    }

    #[test]
    fn models_are_parsed_against_the_label() {
        assert_eq!(parse_model("logistic", 2).unwrap(), ModelKind::Logistic);
        assert_eq!(parse_model("softmax", 3).unwrap(), ModelKind::Softmax { classes: 3 });
        assert_eq!(parse_model("linear", 0).unwrap(), ModelKind::Linear);
        assert_eq!(
            parse_model("mlp:64,32", 2).unwrap(),
            ModelKind::Mlp { hidden: vec![64, 32], outputs: Output::Binary }
        );
        for (spec, classes) in [("logistic", 3), ("linear", 2), ("mlp:", 2), ("mlp:1,2,3", 2), ("tree", 2)] {
            assert!(parse_model(spec, classes).is_err(), "{spec}");
        }
    }
}
