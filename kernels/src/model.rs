//! Models whose parameters live in one flat buffer, their losses, gradients and
//! predictions.

use std::fmt;
use std::ops::Range;

use rayon::prelude::*;

use crate::arith::{self, Arith, Kernel};
use crate::dense::{self, DenseWeights};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Rows per unit of parallel work.
///
/// [`Model::loss_and_grad`] cuts a batch into chunks of this many rows (the last one may
/// be shorter), computes each chunk's gradient into its own zeroed buffer, and adds the
/// chunk gradients in chunk order. The result depends on this constant and on the batch,
/// never on the number of threads.
pub const CHUNK_ROWS: usize = 1024;

/// Rows that go through all layers of an MLP together (keeps the activations of a
/// block in L1/L2 cache). Like [`CHUNK_ROWS`], a constant: results do not depend on it
/// varying at run time.
const BLOCK_ROWS: usize = 64;

/// The output head of a model: what it predicts and which loss trains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One real value; loss `0.5 * (pred - y)^2` per row (see [`Model::loss_and_grad`]).
    Regression,
    /// One logit for the probability of class 1; log-loss.
    Binary,
    /// One logit per class; softmax cross-entropy (log-loss).
    Softmax {
        /// Number of classes (at least 2); labels are `0..classes`.
        classes: usize,
    },
}

impl Output {
    /// Width of the last layer: 1, 1 or `classes`.
    pub fn width(&self) -> usize {
        match self {
            Output::Regression | Output::Binary => 1,
            Output::Softmax { classes } => *classes,
        }
    }

    /// `"regression"`, `"binary"` or `"softmax"`.
    pub fn name(&self) -> &'static str {
        match self {
            Output::Regression => "regression",
            Output::Binary => "binary",
            Output::Softmax { .. } => "softmax",
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Softmax { classes } => write!(f, "softmax:{classes}"),
            other => f.write_str(other.name()),
        }
    }
}

/// The architecture of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelKind {
    /// Linear regression: one dense layer, 1 output, [`Output::Regression`].
    Linear,
    /// Logistic regression: one dense layer, 1 logit, [`Output::Binary`].
    Logistic,
    /// Multinomial (softmax) regression: one dense layer, `classes` logits.
    Softmax {
        /// Number of classes (at least 2).
        classes: usize,
    },
    /// Multi-layer perceptron: dense layers of the `hidden` widths, each followed by a
    /// ReLU, then a dense output layer for the head `outputs`. One or two hidden layers
    /// is the usual case; any non-empty list works.
    Mlp {
        /// Widths of the hidden layers, input side first.
        hidden: Vec<usize>,
        /// The head.
        outputs: Output,
    },
}

impl ModelKind {
    /// The head of the model.
    pub fn output(&self) -> Output {
        match self {
            ModelKind::Linear => Output::Regression,
            ModelKind::Logistic => Output::Binary,
            ModelKind::Softmax { classes } => Output::Softmax { classes: *classes },
            ModelKind::Mlp { outputs, .. } => outputs.clone(),
        }
    }

    /// Widths of the hidden layers (empty for the linear models).
    pub fn hidden(&self) -> &[usize] {
        match self {
            ModelKind::Mlp { hidden, .. } => hidden,
            _ => &[],
        }
    }
}

/// `linear`, `logistic`, `softmax:3`, `mlp:64,32->binary`, `mlp:16->softmax:3`.
impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelKind::Linear => f.write_str("linear"),
            ModelKind::Logistic => f.write_str("logistic"),
            ModelKind::Softmax { classes } => write!(f, "softmax:{classes}"),
            ModelKind::Mlp { hidden, outputs } => {
                f.write_str("mlp:")?;
                for (i, h) in hidden.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{h}")?;
                }
                write!(f, "->{outputs}")
            }
        }
    }
}

/// One named tensor inside a model's flat parameter buffer.
///
/// Layer `i` (input side first) has `layer{i}.weight`, shape `[out, in]`, row-major, and
/// `layer{i}.bias`, shape `[out]`: the layout of PyTorch's `nn.Linear`, so the tensors
/// exported as safetensors load into `nn.Linear` layers as they are (rename
/// `layer{i}.` to the module's key, e.g. `0.`, `2.` in an `nn.Sequential` with ReLUs
/// between).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorView {
    /// `layer{i}.weight` or `layer{i}.bias`.
    pub name: String,
    /// `[out, in]` for weights, `[out]` for biases.
    pub shape: Vec<usize>,
    /// Index of the first element in the flat buffer.
    pub offset: usize,
    /// Number of elements (the product of `shape`).
    pub len: usize,
}

impl TensorView {
    /// The range of the flat buffer holding this tensor.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// The targets of a batch, one per row.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// Class labels: `0..classes` for softmax, `0`/`1` for binary; taken as values by
    /// a regression model.
    Class(&'a [i64]),
    /// Real values: any finite value for regression; a probability in `[0, 1]` for a
    /// binary model (soft labels; accuracy counts `y >= 0.5` as class 1). Refused by a
    /// softmax model.
    Value(&'a [f32]),
}

impl<'a> Targets<'a> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Targets::Class(y) => y.len(),
            Targets::Value(y) => y.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn name(&self) -> &'static str {
        match self {
            Targets::Class(_) => "class",
            Targets::Value(_) => "value",
        }
    }

    fn slice(&self, rows: Range<usize>) -> Targets<'a> {
        match *self {
            Targets::Class(y) => Targets::Class(&y[rows]),
            Targets::Value(y) => Targets::Value(&y[rows]),
        }
    }
}

/// Loss and accuracy summed over the rows of a batch.
///
/// Sums, not means, so that ranks can add their stats (an allreduce of the three
/// numbers) before dividing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Sum of the per-row losses.
    pub loss_sum: f64,
    /// Rows whose predicted class equals the label (always 0 for regression).
    pub correct: u64,
    /// Rows.
    pub n: u64,
}

impl BatchStats {
    /// Add `other` into `self`.
    pub fn merge(&mut self, other: &BatchStats) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.n += other.n;
    }

    /// `loss_sum / n` (0 for an empty batch).
    pub fn mean_loss(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.loss_sum / self.n as f64
        }
    }

    /// `correct / n` (0 for an empty batch).
    pub fn accuracy(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.correct as f64 / self.n as f64
        }
    }
}

/// Where one dense layer sits in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layer {
    inp: usize,
    out: usize,
    /// Offset of the weight `[out, inp]`; the bias `[out]` follows at `w + out * inp`.
    w: usize,
}

impl Layer {
    fn b(&self) -> usize {
        self.w + self.out * self.inp
    }
    fn end(&self) -> usize {
        self.b() + self.out
    }
}

/// A model: an architecture, its number of input features, and all its parameters in
/// one flat `Vec<f32>` (see [`Model::tensors`] for the layout).
///
/// # Examples
///
/// ```
/// use gang_kernels::{Model, ModelKind, Targets};
/// let model = Model::new(ModelKind::Logistic, 2, 0)?;
/// let x = [1.0, 2.0, -1.0, 0.5];
/// let mut grad = model.grad_buffer();
/// let stats = model.loss_and_grad(&x, Targets::Class(&[1, 0]), &mut grad)?;
/// assert_eq!(stats.n, 2);
/// assert!((stats.mean_loss() - std::f64::consts::LN_2).abs() < 1e-6); // zero weights
/// # Ok::<(), gang_kernels::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    kind: ModelKind,
    head: Output,
    features: usize,
    layers: Vec<Layer>,
    params: Vec<f32>,
}

impl Model {
    /// A new model with `features` inputs and deterministic initial parameters.
    ///
    /// Linear, logistic and softmax regression start at zero. An MLP draws its weights
    /// from [`SplitMix64`] seeded with `seed`, layer by layer, row-major: hidden layers
    /// He-uniform (`U(-sqrt(6/in), sqrt(6/in))`, for ReLU), the output layer
    /// Xavier-uniform (`U(-sqrt(6/(in+out)), ...)`); biases start at zero. The same
    /// `(kind, features, seed)` gives the same bits on every machine.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidModel`] for zero features, fewer than 2 classes, an MLP without
    /// hidden layers or with a zero-width layer.
    pub fn new(kind: ModelKind, features: usize, seed: u64) -> Result<Model> {
        let mut model = Model::shaped(kind, features)?;
        if !model.kind.hidden().is_empty() {
            let mut rng = SplitMix64::new(seed);
            let last = model.layers.len() - 1;
            for (i, layer) in model.layers.iter().enumerate() {
                let bound = if i < last {
                    (6.0 / layer.inp as f64).sqrt()
                } else {
                    (6.0 / (layer.inp + layer.out) as f64).sqrt()
                } as f32;
                for p in &mut model.params[layer.w..layer.b()] {
                    *p = (2.0 * rng.next_f32() - 1.0) * bound;
                }
            }
        }
        Ok(model)
    }

    /// A model with the given parameters (from a checkpoint, or broadcast from rank 0).
    ///
    /// # Errors
    ///
    /// As [`Model::new`], and [`Error::Shape`] if `params` does not have
    /// [`num_params`](Self::num_params) elements.
    pub fn from_params(kind: ModelKind, features: usize, params: Vec<f32>) -> Result<Model> {
        let mut model = Model::shaped(kind, features)?;
        if params.len() != model.params.len() {
            return Err(Error::Shape { what: "params", expected: model.params.len(), actual: params.len() });
        }
        model.params = params;
        Ok(model)
    }

    /// Validate `kind` and lay out zeroed parameters.
    fn shaped(kind: ModelKind, features: usize) -> Result<Model> {
        let invalid = |reason: String| Err(Error::InvalidModel { reason });
        if features == 0 {
            return invalid("a model needs at least one feature".into());
        }
        if let ModelKind::Mlp { hidden, .. } = &kind {
            if hidden.is_empty() {
                return invalid("an MLP needs at least one hidden layer".into());
            }
            if hidden.contains(&0) {
                return invalid(format!("an MLP hidden layer has width 0 ({kind})"));
            }
        }
        let head = kind.output();
        if let Output::Softmax { classes } = head {
            if classes < 2 {
                return invalid(format!("softmax needs at least 2 classes, got {classes}"));
            }
        }
        let mut widths = vec![features];
        widths.extend_from_slice(kind.hidden());
        widths.push(head.width());
        let mut layers = Vec::with_capacity(widths.len() - 1);
        let mut offset = 0usize;
        for pair in widths.windows(2) {
            let layer = Layer { inp: pair[0], out: pair[1], w: offset };
            offset = pair[0]
                .checked_add(1)
                .and_then(|w| w.checked_mul(pair[1]))
                .and_then(|len| len.checked_add(offset))
                .filter(|&end| end <= isize::MAX as usize / 4)
                .ok_or_else(|| Error::InvalidModel {
                    reason: format!("{kind} with {features} features is too large"),
                })?;
            debug_assert_eq!(offset, layer.end());
            layers.push(layer);
        }
        Ok(Model { kind, head, features, layers, params: vec![0.0; offset] })
    }

    /// The architecture.
    pub fn kind(&self) -> &ModelKind {
        &self.kind
    }

    /// The head (what the model predicts).
    pub fn output(&self) -> &Output {
        &self.head
    }

    /// Number of input features (the row width of `x`).
    pub fn features(&self) -> usize {
        self.features
    }

    /// Columns of [`predict`](Self::predict)'s output per row: 1 for regression and
    /// binary, `classes` for softmax.
    pub fn outputs(&self) -> usize {
        self.head.width()
    }

    /// Number of parameters (the length of [`params`](Self::params) and of a gradient).
    pub fn num_params(&self) -> usize {
        self.params.len()
    }

    /// All parameters, laid out as [`tensors`](Self::tensors) says.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// All parameters, mutable (for the optimizer step and for a broadcast from rank 0).
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    /// The parameters, by value.
    pub fn into_params(self) -> Vec<f32> {
        self.params
    }

    /// A zeroed gradient buffer of the right length.
    pub fn grad_buffer(&self) -> Vec<f32> {
        vec![0.0; self.params.len()]
    }

    /// The named tensors of the flat buffer, in buffer order: `layer0.weight`
    /// (`[out, in]`), `layer0.bias` (`[out]`), `layer1.weight`, ... A gradient
    /// buffer has the same layout.
    pub fn tensors(&self) -> Vec<TensorView> {
        let mut out = Vec::with_capacity(2 * self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            out.push(TensorView {
                name: format!("layer{i}.weight"),
                shape: vec![l.out, l.inp],
                offset: l.w,
                len: l.out * l.inp,
            });
            out.push(TensorView { name: format!("layer{i}.bias"), shape: vec![l.out], offset: l.b(), len: l.out });
        }
        out
    }

    /// Loss, accuracy and the gradient of the loss summed over the rows of a batch.
    ///
    /// `x` is row-major `[n, features]`, `y` has `n` targets. The gradient of the
    /// **sum** of the per-row losses is **added** to `grad` (zero it first, e.g. with
    /// [`grad_buffer`](Self::grad_buffer); adding lets a step's rows arrive in several
    /// batches). For data-parallel training, allreduce (sum) the gradients of all ranks,
    /// then divide by the global number of rows (or pass `1/n` to
    /// [`OptimizerState::step_scaled`](crate::OptimizerState::step_scaled)).
    ///
    /// Losses per row: regression `0.5 * (pred - y)^2` (so its gradient is
    /// `pred - y`; the mean squared error is `2 * loss_sum / n`); binary and softmax the
    /// log-loss (cross-entropy with natural log), computed stably through
    /// softplus/log-sum-exp. Accuracy counts rows whose predicted class (logit >= 0 for
    /// binary, first arg-max for softmax) equals the label; it is 0 for regression.
    ///
    /// Rows are processed in chunks of [`CHUNK_ROWS`] on the current rayon pool, each
    /// into its own buffer, added in chunk order: the result is bitwise identical for
    /// any number of threads.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] / [`Error::Ragged`] for mismatched lengths of `x`, `y`, `grad`;
    /// [`Error::Label`], [`Error::Target`], [`Error::TargetKind`] for targets the loss
    /// cannot take. On error `grad` is unchanged.
    pub fn loss_and_grad(&self, x: &[f32], y: Targets<'_>, grad: &mut [f32]) -> Result<BatchStats> {
        if grad.len() != self.params.len() {
            return Err(Error::Shape { what: "grad", expected: self.params.len(), actual: grad.len() });
        }
        self.check_batch(x, y)?;
        Ok(self.run(&[Piece { x, y }], Some(grad)))
    }

    /// [`loss_and_grad`](Self::loss_and_grad) of a batch made of row ranges of a larger
    /// matrix, without copying them: the batch is rows `ranges[0]` of `x` and `y`, then
    /// `ranges[1]`, and so on (a shuffled epoch takes its batches as runs of rows). The
    /// result is bitwise identical to `loss_and_grad` of those rows gathered into one
    /// matrix.
    ///
    /// # Errors
    ///
    /// As [`loss_and_grad`](Self::loss_and_grad), and [`Error::Shape`] (`"rows"`) for a
    /// range outside `x`; row numbers in target errors count from the start of `x`.
    pub fn loss_and_grad_rows(
        &self,
        x: &[f32],
        y: Targets<'_>,
        ranges: &[Range<usize>],
        grad: &mut [f32],
    ) -> Result<BatchStats> {
        if grad.len() != self.params.len() {
            return Err(Error::Shape { what: "grad", expected: self.params.len(), actual: grad.len() });
        }
        let n = self.rows(x)?;
        if y.len() != n {
            return Err(Error::Shape { what: "y", expected: n, actual: y.len() });
        }
        if let Some(bad) = ranges.iter().find(|r| r.start > r.end || r.end > n) {
            return Err(Error::Shape { what: "rows", expected: n, actual: bad.end.max(bad.start) });
        }
        for r in ranges {
            self.check_targets(y.slice(r.clone())).map_err(|e| e.shift_row(r.start))?;
        }
        let f = self.features;
        let pieces: Vec<Piece<'_>> =
            ranges.iter().map(|r| Piece { x: &x[r.start * f..r.end * f], y: y.slice(r.clone()) }).collect();
        Ok(self.run(&pieces, Some(grad)))
    }

    /// Loss and accuracy of a batch, without the gradient (evaluation).
    ///
    /// # Errors
    ///
    /// As [`loss_and_grad`](Self::loss_and_grad).
    pub fn loss(&self, x: &[f32], y: Targets<'_>) -> Result<BatchStats> {
        self.check_batch(x, y)?;
        Ok(self.run(&[Piece { x, y }], None))
    }

    /// Predictions for the rows of `x` (row-major `[n, features]`), row-major
    /// `[n, outputs()]`: the value for regression, the probability of class 1 for
    /// binary, the class probabilities for softmax.
    ///
    /// # Errors
    ///
    /// [`Error::Ragged`] if `x` is not a whole number of rows.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>> {
        self.outputs_of(x, true)
    }

    /// The predicted class of each row of `x`: `1` where the probability of class 1 is
    /// at least 0.5 (binary), the first most probable class (softmax).
    ///
    /// # Errors
    ///
    /// [`Error::NotClassifier`] for a regression model; [`Error::Ragged`] as
    /// [`predict`](Self::predict).
    pub fn predict_class(&self, x: &[f32]) -> Result<Vec<i64>> {
        if self.head == Output::Regression {
            return Err(Error::NotClassifier);
        }
        let z = self.outputs_of(x, false)?;
        let k = self.outputs();
        Ok(match self.head {
            Output::Binary => z.iter().map(|&z| i64::from(z >= 0.0)).collect(),
            _ => z.chunks_exact(k).map(|row| argmax(row) as i64).collect(),
        })
    }

    /// Outputs of the last layer, `[n, outputs()]`: raw, or as probabilities
    /// (`predict`).
    fn outputs_of(&self, x: &[f32], probabilities: bool) -> Result<Vec<f32>> {
        let n = self.rows(x)?;
        let k = self.outputs();
        let f = self.features;
        let wts = self.prepare();
        let mut out = vec![0f32; n * k];
        out.par_chunks_mut(CHUNK_ROWS * k).zip(x.par_chunks(CHUNK_ROWS * f)).for_each(|(out, x)| {
            arith::dispatch(OutputsJob { model: self, wts: &wts, x, out, probabilities });
        });
        Ok(out)
    }

    /// [`outputs_of`](Self::outputs_of) for one chunk of rows.
    #[inline(always)]
    fn outputs_chunk<A: Arith>(&self, wts: &[Option<Vec<f32>>], x: &[f32], o: &mut [f32], probabilities: bool) {
        let (f, k) = (self.features, self.outputs());
        let mut ws = Workspace::new(self);
        let rows = x.len() / f;
        let mut r0 = 0;
        while r0 < rows {
            let b = BLOCK_ROWS.min(rows - r0);
            let z = self.forward_block::<A>(wts, &x[r0 * f..(r0 + b) * f], b, &mut ws);
            o[r0 * k..(r0 + b) * k].copy_from_slice(&z[..b * k]);
            r0 += b;
        }
        if probabilities {
            match self.head {
                Output::Regression => {}
                Output::Binary => o.iter_mut().for_each(|z| *z = sigmoid::<A>(*z)),
                Output::Softmax { .. } => o.chunks_exact_mut(k).for_each(softmax_in_place::<A>),
            }
        }
    }

    /// Rows of `x`, or [`Error::Ragged`].
    fn rows(&self, x: &[f32]) -> Result<usize> {
        if !x.len().is_multiple_of(self.features) {
            return Err(Error::Ragged { what: "x", len: x.len(), width: self.features });
        }
        Ok(x.len() / self.features)
    }

    /// Check the shapes of a batch and every target, before any work.
    fn check_batch(&self, x: &[f32], y: Targets<'_>) -> Result<()> {
        let n = self.rows(x)?;
        if y.len() != n {
            return Err(Error::Shape { what: "y", expected: n, actual: y.len() });
        }
        self.check_targets(y)
    }

    /// Check every target against the head.
    fn check_targets(&self, y: Targets<'_>) -> Result<()> {
        match (&self.head, y) {
            (Output::Regression, Targets::Class(_)) => Ok(()),
            (Output::Regression, Targets::Value(v)) if v.iter().fold(true, |ok, t| ok & t.is_finite()) => Ok(()),
            (Output::Binary, Targets::Value(v)) if v.iter().fold(true, |ok, t| ok & (0.0..=1.0).contains(t)) => Ok(()),
            (Output::Regression, Targets::Value(v)) => match v.iter().position(|t| !t.is_finite()) {
                Some(row) => Err(Error::Target { row, value: v[row], reason: "a regression target must be finite" }),
                None => Ok(()),
            },
            (Output::Binary, Targets::Class(c)) => check_labels(c, 2),
            (Output::Binary, Targets::Value(v)) => match v.iter().position(|t| !(0.0..=1.0).contains(t)) {
                Some(row) => {
                    Err(Error::Target { row, value: v[row], reason: "a binary target must be a probability in [0, 1]" })
                }
                None => Ok(()),
            },
            (Output::Softmax { classes }, Targets::Class(c)) => check_labels(c, *classes),
            (head @ Output::Softmax { .. }, y @ Targets::Value(_)) => {
                Err(Error::TargetKind { head: head.name(), targets: y.name() })
            }
        }
    }

    /// Transposed weights of the layers whose forward pass uses them.
    fn prepare(&self) -> Vec<Option<Vec<f32>>> {
        self.layers
            .iter()
            .map(|l| dense::uses_transpose(l.out).then(|| dense::transpose(&self.params[l.w..l.b()], l.out, l.inp)))
            .collect()
    }

    fn weights<'a>(&'a self, i: usize, wts: &'a [Option<Vec<f32>>]) -> DenseWeights<'a> {
        let l = &self.layers[i];
        DenseWeights {
            inp: l.inp,
            out: l.out,
            w: &self.params[l.w..l.b()],
            wt: wts[i].as_deref(),
            b: &self.params[l.b()..l.end()],
        }
    }

    /// Loss (and gradient) of a checked batch (its pieces, in order), chunked and
    /// parallel, deterministic.
    fn run(&self, pieces: &[Piece<'_>], mut grad: Option<&mut [f32]>) -> BatchStats {
        let f = self.features;
        let p = self.params.len();
        // Chunk c holds rows c * CHUNK_ROWS.. of the batch, wherever the pieces break.
        let mut chunks: Vec<Vec<Piece<'_>>> = Vec::new();
        let mut room = 0;
        for piece in pieces {
            let mut off = 0;
            while off < piece.y.len() {
                if room == 0 {
                    chunks.push(Vec::new());
                    room = CHUNK_ROWS;
                }
                let take = room.min(piece.y.len() - off);
                let part = off..off + take;
                chunks
                    .last_mut()
                    .expect("pushed above")
                    .push(Piece { x: &piece.x[part.start * f..part.end * f], y: piece.y.slice(part) });
                off += take;
                room -= take;
            }
        }
        let wts = self.prepare();
        let mut total = BatchStats::default();
        let threads = rayon::current_num_threads();

        if chunks.len() <= 1 || threads <= 1 {
            // Same arithmetic as the parallel path: each chunk into a zeroed buffer,
            // then added to `grad` in chunk order.
            let mut buf = grad.as_ref().map(|_| vec![0f32; p]);
            for c in &chunks {
                if let Some(b) = buf.as_deref_mut() {
                    b.fill(0.0);
                }
                let s = self.chunk_any(&wts, c, buf.as_deref_mut());
                total.merge(&s);
                if let (Some(g), Some(b)) = (grad.as_deref_mut(), buf.as_deref()) {
                    dense::add_assign(g, b);
                }
            }
            return total;
        }

        // Waves of a few chunks per thread; the wave size only bounds memory, the sum
        // order is chunk order regardless.
        let wave = (threads * 4).min(chunks.len());
        let mut bufs: Vec<Vec<f32>> = match grad {
            Some(_) => vec![vec![0f32; p]; wave],
            None => Vec::new(),
        };
        for group in chunks.chunks(wave) {
            let stats: Vec<BatchStats> = if grad.is_some() {
                bufs[..group.len()]
                    .par_iter_mut()
                    .zip(group)
                    .map(|(b, c)| {
                        b.fill(0.0);
                        self.chunk_any(&wts, c, Some(b))
                    })
                    .collect()
            } else {
                group.par_iter().map(|c| self.chunk_any(&wts, c, None)).collect()
            };
            for s in &stats {
                total.merge(s);
            }
            if let Some(g) = grad.as_deref_mut() {
                fold_in_order(g, &bufs[..group.len()]);
            }
        }
        total
    }

    /// [`chunk`](Self::chunk) with the active build of the kernels.
    fn chunk_any(&self, wts: &[Option<Vec<f32>>], pieces: &[Piece<'_>], grad: Option<&mut [f32]>) -> BatchStats {
        arith::dispatch(ChunkJob { model: self, wts, pieces, grad })
    }

    /// Loss (and gradient, added to `grad`) of one chunk of rows (its pieces, in order),
    /// sequentially.
    #[inline(always)]
    fn chunk<A: Arith>(&self, wts: &[Option<Vec<f32>>], pieces: &[Piece<'_>], grad: Option<&mut [f32]>) -> BatchStats {
        if self.layers.len() == 1 && self.layers[0].out == 1 {
            return self.chunk_single_output::<A>(pieces, grad);
        }
        let f = self.features;
        let last = self.layers.len() - 1;
        let k = self.outputs();
        let mut ws = Workspace::new(self);
        let mut loss = LossSum::default();
        let mut correct = 0u64;
        let mut grad = grad;
        let mut n = 0;
        for piece in pieces {
            let rows = piece.y.len();
            n += rows;
            let mut r0 = 0;
            while r0 < rows {
                let b = BLOCK_ROWS.min(rows - r0);
                let xb = &piece.x[r0 * f..(r0 + b) * f];
                self.forward_block::<A>(wts, xb, b, &mut ws);
                let yb = piece.y.slice(r0..r0 + b);
                head_block::<A>(
                    &self.head,
                    &ws.acts[last][..b * k],
                    yb,
                    &mut ws.delta[..b * k],
                    &mut loss,
                    &mut correct,
                );
                if let Some(g) = grad.as_deref_mut() {
                    self.backward_block::<A>(wts, xb, b, &mut ws, g);
                }
                r0 += b;
            }
        }
        BatchStats { loss_sum: loss.total(), correct, n: n as u64 }
    }

    /// Forward pass of `b` rows through every layer into `ws.acts`; returns the
    /// logits `[b, outputs()]`.
    #[inline(always)]
    fn forward_block<'w, A: Arith>(
        &self,
        wts: &[Option<Vec<f32>>],
        xb: &[f32],
        b: usize,
        ws: &'w mut Workspace,
    ) -> &'w [f32] {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let (prev, cur) = ws.acts.split_at_mut(i);
            let inp = if i == 0 { xb } else { &prev[i - 1][..b * layer.inp] };
            let z = &mut cur[0][..b * layer.out];
            dense::forward::<A>(&self.weights(i, wts), inp, b, z);
            if i < last {
                z.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        &ws.acts[last][..b * self.outputs()]
    }

    /// Backward pass of `b` rows from `ws.delta` (d loss / d logits), adding into `grad`.
    #[inline(always)]
    fn backward_block<A: Arith>(
        &self,
        wts: &[Option<Vec<f32>>],
        xb: &[f32],
        b: usize,
        ws: &mut Workspace,
        grad: &mut [f32],
    ) {
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let inp = if i == 0 { xb } else { &ws.acts[i - 1][..b * layer.inp] };
            let (gw, gb) = grad[layer.w..layer.end()].split_at_mut(layer.out * layer.inp);
            let dx = (i > 0).then(|| &mut ws.dprev[..b * layer.inp]);
            dense::backward::<A>(&self.weights(i, wts), inp, b, &ws.delta[..b * layer.out], gw, gb, dx);
            if i > 0 {
                // Through the ReLU into `delta` (no longer needed): the gradient passes
                // where the activation was positive. Written to the other buffer so that
                // every element is stored (in place, the select becomes a masked store,
                // slow on some CPUs).
                let n = b * layer.inp;
                for ((d, &p), &a) in ws.delta[..n].iter_mut().zip(&ws.dprev[..n]).zip(inp) {
                    *d = if a > 0.0 { p } else { 0.0 };
                }
            }
        }
    }

    /// Linear and logistic regression, a block of rows at a time: the logits (one dot
    /// product per row), the losses (vectorised across the block), then the gradient
    /// `d^T x` of the block while it is still in L1 (accumulators in registers). No
    /// intermediate buffers.
    #[inline(always)]
    fn chunk_single_output<A: Arith>(&self, pieces: &[Piece<'_>], grad: Option<&mut [f32]>) -> BatchStats {
        let f = self.features;
        let (w, bias) = (&self.params[..f], self.params[f]);
        let mut loss = LossSum::default();
        let mut correct = 0u64;
        let mut gb = 0f32;
        let (mut gw, gbias) = match grad {
            Some(g) => {
                let (gw, gbias) = g.split_at_mut(f);
                (Some(gw), Some(gbias))
            }
            None => (None, None),
        };
        let mut z = [0f32; BLOCK_ROWS];
        let mut d = [0f32; BLOCK_ROWS];
        let mut n = 0;
        for piece in pieces {
            let rows = piece.y.len();
            n += rows;
            let mut r0 = 0;
            while r0 < rows {
                let b = BLOCK_ROWS.min(rows - r0);
                let xb = &piece.x[r0 * f..(r0 + b) * f];
                let eights = b - b % 8;
                for (z8, x8) in z[..eights].chunks_exact_mut(8).zip(xb.chunks_exact(8 * f)) {
                    for (zr, dr) in z8.iter_mut().zip(A::dot_rows8(x8, w)) {
                        *zr = bias + dr;
                    }
                }
                for (zr, xr) in z[eights..b].iter_mut().zip(xb[eights * f..].chunks_exact(f)) {
                    *zr = bias + dense::dot::<A>(xr, w);
                }
                head_block::<A>(&self.head, &z[..b], piece.y.slice(r0..r0 + b), &mut d[..b], &mut loss, &mut correct);
                if let Some(gw) = gw.as_deref_mut() {
                    gb = d[..b].iter().fold(gb, |s, &dr| s + dr);
                    // (A lone column sum: the same order as `add_column_sums`.)
                    dense::accumulate_outer::<A>(&d[..b], xb, b, 1, f, gw);
                }
                r0 += b;
            }
        }
        if let Some(gbias) = gbias {
            gbias[0] += gb;
        }
        BatchStats { loss_sum: loss.total(), correct, n: n as u64 }
    }
}

/// Rows of a batch that lie together in memory: `x` `[rows, features]` and their targets.
#[derive(Clone, Copy)]
struct Piece<'a> {
    x: &'a [f32],
    y: Targets<'a>,
}

/// One chunk's loss and gradient, as a unit of work for [`arith::dispatch`].
struct ChunkJob<'a, 'p, 'g> {
    model: &'a Model,
    wts: &'a [Option<Vec<f32>>],
    pieces: &'a [Piece<'p>],
    grad: Option<&'g mut [f32]>,
}

impl Kernel for ChunkJob<'_, '_, '_> {
    type Output = BatchStats;
    #[inline(always)]
    fn run<A: Arith>(self) -> BatchStats {
        self.model.chunk::<A>(self.wts, self.pieces, self.grad)
    }
}

/// Whether any label is outside `0..classes`, as a unit of work for [`arith::dispatch`].
struct AnyLabelOutside<'a> {
    labels: &'a [i64],
    classes: u64,
}

impl Kernel for AnyLabelOutside<'_> {
    type Output = bool;
    #[inline(always)]
    fn run<A: Arith>(self) -> bool {
        // (Negative labels are huge as u64.)
        self.labels.iter().fold(false, |bad, &c| bad | (c as u64 >= self.classes))
    }
}

/// One chunk's outputs, as a unit of work for [`arith::dispatch`].
struct OutputsJob<'a> {
    model: &'a Model,
    wts: &'a [Option<Vec<f32>>],
    x: &'a [f32],
    out: &'a mut [f32],
    probabilities: bool,
}

impl Kernel for OutputsJob<'_> {
    type Output = ();
    #[inline(always)]
    fn run<A: Arith>(self) {
        self.model.outputs_chunk::<A>(self.wts, self.x, self.out, self.probabilities);
    }
}

/// The head of a block of `b` rows: logits `z` (`[b, k]`) against targets `y` (`b`),
/// writes d loss / d logits into `d` (`[b, k]`), adds the losses and correct predictions.
///
/// The per-row work of the binary and regression heads runs as one loop over the block
/// (vectorised: [`arith::exp_neg`] and [`arith::ln_1p_unit`] are branch-free).
#[inline(always)]
fn head_block<A: Arith>(
    head: &Output,
    z: &[f32],
    y: Targets<'_>,
    d: &mut [f32],
    loss: &mut LossSum,
    correct: &mut u64,
) {
    let b = y.len();
    match head {
        Output::Softmax { classes } => {
            let k = *classes;
            let Targets::Class(c) = y else { unreachable!("checked by check_targets") };
            for (r, &label) in c.iter().enumerate() {
                let (l, ok) = softmax_row::<A>(&z[r * k..(r + 1) * k], label as usize, &mut d[r * k..(r + 1) * k]);
                loss.add_block(&[l]);
                *correct += u64::from(ok);
            }
        }
        Output::Binary | Output::Regression => {
            let mut t = [0f32; BLOCK_ROWS];
            match y {
                Targets::Class(c) => t.iter_mut().zip(c).for_each(|(t, &c)| *t = c as f32),
                Targets::Value(v) => t[..b].copy_from_slice(v),
            }
            let mut l = [0f32; BLOCK_ROWS];
            let rows = z[..b].iter().zip(&t[..b]).zip(&mut d[..b]).zip(&mut l[..b]);
            if *head == Output::Binary {
                // Straight-line float code over the block: vectorised, eight rows at a time.
                for (((&z, &t), d), l) in rows {
                    (*l, *d) = binary_row::<A>(z, t);
                }
                *correct += z[..b].iter().zip(&t[..b]).filter(|&(&z, &t)| (z >= 0.0) == (t >= 0.5)).count() as u64;
            } else {
                for (((&z, &t), d), l) in rows {
                    (*l, *d) = regression_row(z, t);
                }
            }
            loss.add_block(&l[..b]);
        }
    }
}

/// The loss sum of a chunk: row `i` of the chunk (counting across its pieces) goes into
/// lane `i % 4`, the lanes are added as `(0 + 1) + (2 + 3)` at the end. Four independent
/// sums instead of one chain of dependent additions (one row per addition latency), and
/// the same bits wherever the chunk's pieces break.
#[derive(Default)]
struct LossSum {
    lanes: [f64; 4],
    rows: usize,
}

impl LossSum {
    /// Adds the losses of the chunk's next `ls.len()` rows.
    #[inline(always)]
    fn add_block(&mut self, ls: &[f32]) {
        // Rotate so that lane 0 takes this block's first row.
        let shift = self.rows % 4;
        let mut acc = self.lanes;
        acc.rotate_left(shift);
        let (quads, tail) = ls.as_chunks::<4>();
        for q in quads {
            acc = std::array::from_fn(|j| acc[j] + f64::from(q[j]));
        }
        for (a, &l) in acc.iter_mut().zip(tail) {
            *a += f64::from(l);
        }
        acc.rotate_right(shift);
        self.lanes = acc;
        self.rows += ls.len();
    }

    fn total(&self) -> f64 {
        let [a, b, c, d] = self.lanes;
        (a + b) + (c + d)
    }
}

/// Per-chunk scratch: activations of every layer for one block, and two delta buffers.
struct Workspace {
    acts: Vec<Vec<f32>>,
    delta: Vec<f32>,
    dprev: Vec<f32>,
}

impl Workspace {
    fn new(model: &Model) -> Workspace {
        let widest = model.layers.iter().map(|l| l.out.max(l.inp)).max().unwrap_or(1);
        Workspace {
            acts: model.layers.iter().map(|l| vec![0f32; BLOCK_ROWS * l.out]).collect(),
            delta: vec![0f32; BLOCK_ROWS * widest],
            dprev: vec![0f32; BLOCK_ROWS * widest],
        }
    }
}

/// `dst += parts[0]; dst += parts[1]; ...` element by element, in that order, split
/// across threads by element when the work is large (the per-element order is the same
/// either way).
fn fold_in_order(dst: &mut [f32], parts: &[Vec<f32>]) {
    const SPLIT: usize = 1 << 14;
    if dst.len() * parts.len() < 1 << 20 {
        for p in parts {
            dense::add_assign(dst, p);
        }
    } else {
        dst.par_chunks_mut(SPLIT).enumerate().for_each(|(j, d)| {
            for p in parts {
                dense::add_assign(d, &p[j * SPLIT..]);
            }
        });
    }
}

fn check_labels(labels: &[i64], classes: usize) -> Result<()> {
    // Every batch is checked: first a pass without early exit (vectorised, with AVX2
    // where the CPU has it: 64-bit compares), then the search for the row to name only
    // when one is bad.
    if !arith::dispatch(AnyLabelOutside { labels, classes: classes as u64 }) {
        return Ok(());
    }
    match labels.iter().position(|&c| c < 0 || c as u64 >= classes as u64) {
        Some(row) => Err(Error::Label { row, label: labels[row], classes }),
        None => Ok(()),
    }
}

/// `0.5 (z - t)^2` and its derivative `z - t`.
#[inline(always)]
fn regression_row(z: f32, t: f32) -> (f32, f32) {
    let d = z - t;
    (0.5 * d * d, d)
}

/// Log-loss of logit `z` against target probability `t`, and its derivative
/// `sigmoid(z) - t`.
///
/// `loss = t softplus(-z) + (1 - t) softplus(z)` with
/// `softplus(z) = max(z, 0) + ln(1 + e^-|z|)`: no overflow, and no cancellation for
/// confident correct predictions.
#[inline(always)]
fn binary_row<A: Arith>(z: f32, t: f32) -> (f32, f32) {
    let e = arith::exp_neg::<A>(-z.abs());
    let l1p = arith::ln_1p_unit::<A>(e);
    let loss = l1p + t * (-z).max(0.0) + (1.0 - t) * z.max(0.0);
    let inv = 1.0 / (1.0 + e);
    let p = if z >= 0.0 { inv } else { e * inv };
    (loss, p - t)
}

#[inline(always)]
fn sigmoid<A: Arith>(z: f32) -> f32 {
    let e = arith::exp_neg::<A>(-z.abs());
    if z >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// First index of the largest value (NaN never wins).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Softmax cross-entropy of logits `z` against class `label`: writes
/// `softmax(z) - onehot(label)` into `d` and returns the loss
/// `log(sum exp(z - max)) - (z_label - max)` and whether the arg-max is the label.
#[inline(always)]
fn softmax_row<A: Arith>(z: &[f32], label: usize, d: &mut [f32]) -> (f32, bool) {
    let best = argmax(z);
    let m = z[best];
    let mut s = 0f32;
    for (di, &zi) in d.iter_mut().zip(z) {
        let e = arith::exp_neg::<A>(zi - m);
        *di = e;
        s += e;
    }
    let inv = 1.0 / s;
    d.iter_mut().for_each(|di| *di *= inv);
    d[label] -= 1.0;
    (arith::ln_ge1::<A>(s) - (z[label] - m), best == label)
}

#[inline(always)]
fn softmax_in_place<A: Arith>(z: &mut [f32]) {
    let m = z[argmax(z)];
    let mut s = 0f32;
    for v in z.iter_mut() {
        *v = arith::exp_neg::<A>(*v - m);
        s += *v;
    }
    let inv = 1.0 / s;
    z.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_row_is_stable<A: Arith>() {
        let (l, g) = binary_row::<A>(100.0, 1.0);
        assert!((0.0..1e-30).contains(&l) && g.abs() < 1e-30);
        let (l, g) = binary_row::<A>(-100.0, 1.0);
        assert!((l - 100.0).abs() < 1e-4 && (g + 1.0).abs() < 1e-6);
        let (l, _) = binary_row::<A>(0.0, 0.0);
        assert!((l - std::f32::consts::LN_2).abs() < 1e-7);
    }

    fn softmax_row_is_stable<A: Arith>() {
        let mut d = [0f32; 3];
        let (l, ok) = softmax_row::<A>(&[1000.0, 0.0, -1000.0], 0, &mut d);
        assert!(l.abs() < 1e-6 && ok);
        assert!(d.iter().all(|v| v.is_finite()));
        let (l, ok) = softmax_row::<A>(&[0.0, 0.0, 0.0], 2, &mut d);
        assert!((l - 3f32.ln()).abs() < 1e-6 && !ok);
    }

    #[test]
    fn losses_are_stable() {
        binary_row_is_stable::<crate::arith::Plain>();
        binary_row_is_stable::<crate::arith::Fused>();
        softmax_row_is_stable::<crate::arith::Plain>();
        softmax_row_is_stable::<crate::arith::Fused>();
    }

    /// The portable and the AVX2 + FMA builds differ only in rounding.
    #[test]
    fn both_builds_agree_to_rounding() {
        if crate::Kernels::detect() != crate::Kernels::Avx2Fma {
            return;
        }
        let (n, f) = (3000usize, 32usize);
        let mut rng = SplitMix64::new(4);
        let x: Vec<f32> = (0..n * f).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        let y: Vec<i64> = (0..n).map(|i| (i % 2) as i64).collect();
        for kind in [ModelKind::Logistic, ModelKind::Mlp { hidden: vec![64, 32], outputs: Output::Binary }] {
            let m = Model::new(kind.clone(), f, 5).unwrap();
            let wts = m.prepare();
            let pieces = [Piece { x: &x, y: Targets::Class(&y) }];
            let (mut g1, mut g2) = (m.grad_buffer(), m.grad_buffer());
            let s1 = ChunkJob { model: &m, wts: &wts, pieces: &pieces, grad: Some(&mut g1) }.run::<arith::Plain>();
            // `Fused` outside the AVX2 entry point: slower, the same results.
            let s2 = ChunkJob { model: &m, wts: &wts, pieces: &pieces, grad: Some(&mut g2) }.run::<arith::Fused>();
            assert!((s1.loss_sum - s2.loss_sum).abs() < 1e-5 * s1.loss_sum, "{kind}");
            let scale = g1.iter().fold(0f32, |a, g| a.max(g.abs()));
            for (a, b) in g1.iter().zip(&g2) {
                assert!((a - b).abs() <= 1e-4 * scale, "{kind}: {a} vs {b}");
            }
        }
    }

    /// A batch given as row ranges of a larger matrix gives the bits of the same rows
    /// gathered into one matrix, for every model shape (ranges that cut chunks and blocks
    /// anywhere).
    #[test]
    fn row_ranges_give_the_bits_of_the_gathered_batch() {
        let (n, f) = (5000usize, 7usize);
        let mut rng = SplitMix64::new(9);
        let x: Vec<f32> = (0..n * f).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        let y: Vec<i64> = (0..n).map(|i| (i % 3) as i64).collect();
        let ranges = [4000..4100, 17..1500, 2000..2001, 4500..5000, 2500..3000, 0..17];
        let rows: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
        let gx: Vec<f32> = rows.iter().flat_map(|&r| x[r * f..(r + 1) * f].iter().copied()).collect();
        let gy: Vec<i64> = rows.iter().map(|&r| y[r]).collect();
        let yb: Vec<i64> = y.iter().map(|&c| c.min(1)).collect();
        let gyb: Vec<i64> = gy.iter().map(|&c| c.min(1)).collect();
        let kinds = [
            (ModelKind::Logistic, true),
            (ModelKind::Softmax { classes: 3 }, false),
            (ModelKind::Mlp { hidden: vec![19, 8], outputs: Output::Binary }, true),
            (ModelKind::Mlp { hidden: vec![16], outputs: Output::Softmax { classes: 3 } }, false),
        ];
        for (kind, binary) in kinds {
            let m = Model::new(kind.clone(), f, 5).unwrap();
            let (all, batch) = if binary { (&yb, &gyb) } else { (&y, &gy) };
            let mut g1 = m.grad_buffer();
            let s1 = m.loss_and_grad(&gx, Targets::Class(batch), &mut g1).unwrap();
            let mut g2 = m.grad_buffer();
            let s2 = m.loss_and_grad_rows(&x, Targets::Class(all), &ranges, &mut g2).unwrap();
            assert_eq!(s1, s2, "{kind}");
            assert_eq!(g1, g2, "{kind}");
        }
        let m = Model::new(ModelKind::Logistic, f, 0).unwrap();
        let mut g = m.grad_buffer();
        let (inside, outside) = ([10..20, 30..31], [0..10, 4990..5001]);
        let bad = m.loss_and_grad_rows(&x, Targets::Class(&y), &inside, &mut g).unwrap_err();
        assert_eq!(bad, Error::Label { row: 11, label: 2, classes: 2 });
        assert!(m.loss_and_grad_rows(&x, Targets::Class(&yb), &outside, &mut g).is_err());
    }

    #[test]
    fn a_loss_sum_has_the_same_bits_however_its_rows_come() {
        let ls: Vec<f32> = (0..203).map(|i| ((i * 37 % 101) as f32).exp2() * 1e-9 + 0.1 * i as f32).collect();
        let mut whole = LossSum::default();
        whole.add_block(&ls);
        for cuts in [vec![1, 2, 3, 64, 200], vec![5, 6, 7, 8, 9, 10], vec![64, 128, 192], vec![202]] {
            let mut parts = LossSum::default();
            let mut start = 0;
            for end in cuts.into_iter().chain([ls.len()]) {
                parts.add_block(&ls[start..end]);
                start = end;
            }
            assert_eq!(parts.total().to_bits(), whole.total().to_bits());
        }
        let exact: f64 = ls.iter().map(|&l| f64::from(l)).sum();
        assert!((whole.total() - exact).abs() <= 1e-12 * exact);
    }

    #[test]
    fn layout() {
        let m =
            Model::new(ModelKind::Mlp { hidden: vec![4, 3], outputs: Output::Softmax { classes: 2 } }, 5, 1).unwrap();
        let t = m.tensors();
        let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["layer0.weight", "layer0.bias", "layer1.weight", "layer1.bias", "layer2.weight", "layer2.bias"]
        );
        assert_eq!(t[0].shape, [4, 5]);
        assert_eq!(t[2].shape, [3, 4]);
        assert_eq!(t[4].shape, [2, 3]);
        let mut next = 0;
        for v in &t {
            assert_eq!(v.offset, next);
            assert_eq!(v.len, v.shape.iter().product::<usize>());
            next += v.len;
        }
        assert_eq!(next, m.num_params());
        assert_eq!(m.kind().to_string(), "mlp:4,3->softmax:2");
    }
}
