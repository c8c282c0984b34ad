//! In-situ training: a model trained on the simulation's arrays, its gradients allreduced
//! over the gang, fed through plain pointers or the Arrow C Data Interface.

use std::ffi::{c_char, c_int};
use std::ops::Range;

use gang::checkpoint::Dtype;
use gang::train::model_file::{self, ModelInfo};
use gang::ReduceOp;
use gang_kernels::{BatchStats, Model, Targets};
use gang_kernels::{Optimizer, OptimizerState};

use crate::arrow::{self, ArrowArray, ArrowSchema, Features, Labels};
use crate::{agree_args, c_str, entry, on_gang, out_ptr, slice, slice_mut, Fail, R};
use crate::{gang_t, GANG_OK};

/// Rows one after the other: `x[row * cols + col]` (C arrays `x[rows][cols]`).
pub const GANG_ROW_MAJOR: c_int = 0;
/// Columns one after the other: `x[col * rows + row]` (Fortran arrays `x(rows, cols)`).
pub const GANG_COLUMN_MAJOR: c_int = 1;

/// A model being trained on the gang, with its optimizer.
pub struct gang_trainer_t {
    gang: *const gang_t,
    model: Model,
    opt: OptimizerState,
    spec: String,
    classes: usize,
    batch: usize,
    grad: Vec<f32>,
    /// Row-major copy of column-major features.
    rows_scratch: Vec<f32>,
    /// int32 classes widened to int64.
    class_scratch: Vec<i64>,
    /// Held by every checkpoint handle this trainer's state is registered with.
    token: std::rc::Rc<()>,
}

fn on_trainer(t: *mut gang_trainer_t, f: impl FnOnce(&gang_t, &mut gang_trainer_t) -> R) -> c_int {
    // SAFETY: a non-NULL handle comes from gang_trainer_new and was not freed (the caller's
    // contract).
    let Some(tr) = (unsafe { t.as_mut() }) else {
        return entry(|| Err(Fail::arg("the trainer handle is NULL: call gang_trainer_new first")));
    };
    let g = tr.gang;
    on_gang(g, |gang| f(gang, tr))
}

/// The trainer's settings, from `key=value` words.
struct Settings {
    model: String,
    classes: usize,
    optimizer: Optimizer,
    batch: usize,
    seed: u64,
}

fn parse_settings(config: &str) -> R<Settings> {
    let mut model = "linear".to_string();
    let (mut classes, mut batch, mut seed) = (0usize, 256usize, 0u64);
    let (mut opt_name, mut lr, mut momentum, mut weight_decay) = ("adam".to_string(), None, 0.0f32, 0.0f32);
    for word in config.split_whitespace() {
        let (k, v) = word.split_once('=').ok_or_else(|| {
            Fail::arg(format!("config word {word:?} is not key=value (e.g. \"model=mlp:32 optimizer=adam lr=0.01\")"))
        })?;
        let num = |what: &str| Fail::arg(format!("config {k}={v}: {what}"));
        match k {
            "model" => model = v.to_string(),
            "classes" => classes = v.parse().map_err(|_| num("not a count"))?,
            "batch" => batch = v.parse().ok().filter(|&b| b > 0).ok_or_else(|| num("not a positive count"))?,
            "seed" => seed = v.parse().map_err(|_| num("not an integer"))?,
            "optimizer" => opt_name = v.to_string(),
            "lr" => lr = Some(v.parse::<f32>().map_err(|_| num("not a number"))?),
            "momentum" => momentum = v.parse().map_err(|_| num("not a number"))?,
            "weight_decay" => weight_decay = v.parse().map_err(|_| num("not a number"))?,
            other => {
                return Err(Fail::arg(format!(
                    "unknown config key {other:?}: the keys are model, classes, optimizer, lr, momentum, \
                     weight_decay, batch, seed"
                )))
            }
        }
    }
    let optimizer = match opt_name.as_str() {
        "adam" => match Optimizer::adam(lr.unwrap_or(1e-3)) {
            Optimizer::Adam { lr, beta1, beta2, eps, .. } => Optimizer::Adam { lr, beta1, beta2, eps, weight_decay },
            o => o,
        },
        "sgd" => Optimizer::Sgd { lr: lr.unwrap_or(0.01), momentum, weight_decay },
        other => return Err(Fail::arg(format!("unknown optimizer {other:?}: use sgd or adam"))),
    };
    optimizer.validate()?;
    Ok(Settings { model, classes, optimizer, batch, seed })
}

/// Creates a trainer of rows of `features` floats and stores it in `*out`. Collective:
/// every rank passes the same arguments and starts from the same parameters.
///
/// `config` is `key=value` words separated by spaces, e.g.
/// `"model=mlp:32,16 optimizer=adam lr=0.001 batch=256"`:
/// - `model`: `linear` (default), `logistic`, `softmax` or `mlp:H` / `mlp:H1,H2` (ReLU
///   layers of those widths);
/// - `classes`: 0 (default) for real-valued targets, 2 for binary, k for k classes;
/// - `optimizer`: `adam` (default; lr 0.001) or `sgd` (lr 0.01), with `lr`, `momentum`
///   (sgd) and `weight_decay`;
/// - `batch`: the gang-wide batch of one optimizer step (default 256), split evenly over
///   the ranks; `seed`: of the initial parameters (default 0).
#[no_mangle]
pub unsafe extern "C" fn gang_trainer_new(
    g: *mut gang_t,
    features: i64,
    config: *const c_char,
    out: *mut *mut gang_trainer_t,
) -> c_int {
    on_gang(g, |gang| {
        let out = out_ptr(out, "out (where the handle goes)")?;
        *out = std::ptr::null_mut();
        let features = usize::try_from(features)
            .ok()
            .filter(|&f| f > 0)
            .ok_or_else(|| Fail::arg(format!("features is {features}: a row needs at least one feature")))?;
        let checked = (|| {
            let config = if config.is_null() { "" } else { c_str(config, "config")? };
            let s = parse_settings(config)?;
            let kind = gang::train::parse_model(&s.model, s.classes)?;
            let model = Model::new(kind, features, s.seed)?;
            let opt = OptimizerState::new(s.optimizer, model.num_params())?;
            Ok((s, model, opt))
        })();
        let (s, mut model, opt) = agree_args(gang, "gang_trainer_new", checked)?;
        gang.ctx().comm().broadcast(0, model.params_mut())?;
        let grad = model.grad_buffer();
        gang.adopt_child();
        *out = Box::into_raw(Box::new(gang_trainer_t {
            gang,
            model,
            opt,
            spec: s.model,
            classes: s.classes,
            batch: s.batch,
            grad,
            rows_scratch: Vec::new(),
            class_scratch: Vec::new(),
            token: std::rc::Rc::new(()),
        }));
        Ok(())
    })
}

/// Targets of a call, before slicing.
#[derive(Clone, Copy)]
enum Y<'a> {
    Value(&'a [f32]),
    Class(&'a [i64]),
}

impl<'a> Y<'a> {
    fn rows(&self, r: Range<usize>) -> Targets<'a> {
        match *self {
            Y::Value(y) => Targets::Value(&y[r]),
            Y::Class(y) => Targets::Class(&y[r]),
        }
    }
}

impl gang_trainer_t {
    /// One pass over this rank's `rows` (row-major `x`): optimizer steps of `batch` rows
    /// gang-wide, each gradient summed over the ranks. Ranks with fewer rows take part in
    /// every step (with no rows in the last ones). Returns the mean loss over every row of
    /// the gang.
    fn fit(&mut self, gang: &gang_t, x: &[f32], rows: usize, y: Y<'_>) -> R<f64> {
        let comm = gang.ctx().comm();
        let world = comm.size();
        let local = self.batch.div_ceil(world).max(1);
        let steps = comm.allreduce_scalar(rows.div_ceil(local) as u64, ReduceOp::Max)?;
        let f = self.model.features();
        let mut total = BatchStats::default();
        for s in 0..steps as usize {
            let r = (s * local).min(rows)..((s + 1) * local).min(rows);
            self.grad.iter_mut().for_each(|g| *g = 0.0);
            let stats = if r.is_empty() {
                BatchStats::default()
            } else {
                self.model.loss_and_grad(&x[r.start * f..r.end * f], y.rows(r.clone()), &mut self.grad)?
            };
            comm.allreduce(&mut self.grad, ReduceOp::Sum)?;
            let mut sums = [stats.n as f64, stats.loss_sum];
            comm.allreduce(&mut sums, ReduceOp::Sum)?;
            if sums[0] > 0.0 {
                self.opt.step_scaled(self.model.params_mut(), &self.grad, 1.0 / sums[0] as f32)?;
            }
            total.n += sums[0] as u64;
            total.loss_sum += sums[1];
        }
        Ok(total.mean_loss())
    }

    fn check_cols(&self, cols: usize) -> R<()> {
        if cols != self.model.features() {
            return Err(Fail::arg(format!(
                "the rows have {cols} features but the trainer was created for {}",
                self.model.features()
            )));
        }
        Ok(())
    }
}

/// Row-major features from the caller's `x` of `layout` (column-major copied into `scratch`).
fn row_major<'a>(x: &'a [f32], rows: usize, cols: usize, layout: c_int, scratch: &'a mut Vec<f32>) -> R<&'a [f32]> {
    check_layout(layout)?;
    if layout == GANG_ROW_MAJOR {
        return Ok(x);
    }
    let columns: Vec<&[f32]> = if rows == 0 { vec![&[]; cols] } else { x.chunks(rows).collect() };
    gather_rows(&columns, rows, scratch);
    Ok(scratch)
}

/// `columns` (each `rows` long) into row order in `scratch`, a block of rows at a time so
/// that the block's rows stay in the cache while every column is written into them.
fn gather_rows(columns: &[&[f32]], rows: usize, scratch: &mut Vec<f32>) {
    const BLOCK: usize = 256;
    let cols = columns.len();
    scratch.clear();
    scratch.resize(rows * cols, 0.0);
    for start in (0..rows).step_by(BLOCK) {
        let end = (start + BLOCK).min(rows);
        let out = &mut scratch[start * cols..end * cols];
        for (c, col) in columns.iter().enumerate() {
            for (row, &v) in out.chunks_exact_mut(cols).zip(&col[start..end]) {
                row[c] = v;
            }
        }
    }
}

fn check_layout(layout: c_int) -> R<()> {
    match layout {
        GANG_ROW_MAJOR | GANG_COLUMN_MAJOR => Ok(()),
        other => Err(Fail::arg(format!("unknown layout {other}: use GANG_ROW_MAJOR or GANG_COLUMN_MAJOR"))),
    }
}

fn counts(rows: i64, cols: i64) -> R<(usize, usize)> {
    let r = usize::try_from(rows).map_err(|_| Fail::arg(format!("rows is {rows}")))?;
    let c = usize::try_from(cols).map_err(|_| Fail::arg(format!("cols is {cols}")))?;
    r.checked_mul(c).ok_or_else(|| Fail::arg("rows * cols overflows"))?;
    Ok((r, c))
}

/// Trains on this rank's `rows` rows of `cols` features at `x` (of `layout`:
/// GANG_ROW_MAJOR or GANG_COLUMN_MAJOR) with one target per row: `y` (floats: regression,
/// soft binary labels) or `classes` (int64 classes); pass exactly one, the other NULL. One
/// pass over the rows in optimizer steps of the trainer's batch; gradients are summed over
/// the gang. Collective (ranks may pass different numbers of rows). `*loss`, if not NULL,
/// receives the mean loss over every row of the gang before each step.
///
/// Row-major `x` is read in place; column-major `x` is copied into row order first (one
/// copy of the features per call).
#[no_mangle]
pub unsafe extern "C" fn gang_trainer_step(
    t: *mut gang_trainer_t,
    x: *const f32,
    rows: i64,
    cols: i64,
    layout: c_int,
    y: *const f32,
    classes: *const i64,
    loss: *mut f64,
) -> c_int {
    on_trainer(t, |gang, tr| {
        let checked = (|| {
            let (r, c) = counts(rows, cols)?;
            tr.check_cols(c)?;
            check_layout(layout)?;
            let x = slice(x, (r * c) as i64, "x")?;
            let targets = match (y.is_null(), classes.is_null()) {
                (false, true) => Y::Value(slice(y, rows, "y")?),
                (true, false) => Y::Class(slice(classes, rows, "classes")?),
                (true, true) if r == 0 => Y::Value(&[]),
                _ => return Err(Fail::arg("pass the targets as exactly one of y (floats) and classes (int64)")),
            };
            Ok((r, c, x, targets))
        })();
        let (r, c, x, targets) = agree_args(gang, "gang_trainer_step", checked)?;
        let mut scratch = std::mem::take(&mut tr.rows_scratch);
        let mean = {
            let x = row_major(x, r, c, layout, &mut scratch)?;
            tr.fit(gang, x, r, targets)?
        };
        tr.rows_scratch = scratch;
        if let Some(l) = unsafe_out(loss) {
            *l = mean;
        }
        Ok(())
    })
}

/// An optional out-parameter.
fn unsafe_out<'a, T>(p: *mut T) -> Option<&'a mut T> {
    // SAFETY: a non-NULL out-pointer points to a writable T (the caller's contract).
    unsafe { p.as_mut() }
}

/// `gang_trainer_step` fed through the Arrow C Data Interface: `x` is a
/// `FixedSizeList<float32>` of the feature count (format `"+w:N"`, one list per row; read
/// in place, no copy) or a struct of `float32` columns (`"+s"`; gathered into row order, one
/// copy); `y` is `float32` targets or `int64`/`int32` classes (int32 widened, one copy of
/// the labels). No nulls. The arrays and schemas are borrowed for the call: gang neither
/// moves nor releases them, and their buffers must not change until it returns.
#[no_mangle]
pub unsafe extern "C" fn gang_trainer_step_arrow(
    t: *mut gang_trainer_t,
    x: *const ArrowArray,
    x_schema: *const ArrowSchema,
    y: *const ArrowArray,
    y_schema: *const ArrowSchema,
    loss: *mut f64,
) -> c_int {
    on_trainer(t, |gang, tr| {
        let checked = (|| {
            let (rows, cols, features) = arrow::features(x, x_schema)?;
            tr.check_cols(cols)?;
            let labels = arrow::labels(y, y_schema)?;
            let n = match &labels {
                Labels::F32(v) => v.len(),
                Labels::I64(v) => v.len(),
                Labels::I32(v) => v.len(),
            };
            if n != rows {
                return Err(Fail::arg(format!("{n} labels for {rows} rows of features")));
            }
            Ok((rows, cols, features, labels))
        })();
        let (rows, _, features, labels) = agree_args(gang, "gang_trainer_step_arrow", checked)?;
        let mut classes = std::mem::take(&mut tr.class_scratch);
        let mut scratch = std::mem::take(&mut tr.rows_scratch);
        let mean = {
            let targets = match labels {
                Labels::F32(v) => Y::Value(v),
                Labels::I64(v) => Y::Class(v),
                Labels::I32(v) => {
                    classes.clear();
                    classes.extend(v.iter().map(|&c| i64::from(c)));
                    Y::Class(&classes)
                }
            };
            let x: &[f32] = match features {
                Features::RowMajor(v) => v,
                Features::Columns(columns) => {
                    gather_rows(&columns, rows, &mut scratch);
                    &scratch
                }
            };
            tr.fit(gang, x, rows, targets)?
        };
        tr.class_scratch = classes;
        tr.rows_scratch = scratch;
        if let Some(l) = unsafe_out(loss) {
            *l = mean;
        }
        Ok(())
    })
}

/// The number of outputs per row of `gang_trainer_predict`: 1 for regression and binary
/// models (the value, the probability of class 1), k for k classes (the probabilities).
#[no_mangle]
pub unsafe extern "C" fn gang_trainer_outputs(t: *mut gang_trainer_t, outputs: *mut i64) -> c_int {
    on_trainer(t, |_, tr| {
        *out_ptr(outputs, "outputs")? = tr.model.outputs() as i64;
        Ok(())
    })
}

/// Predicts `rows` rows of `cols` features at `x` (of `layout`) into `out`, which holds
/// `out_len` floats: at least rows * gang_trainer_outputs. Row-major results. Local: no
/// communication (every rank holds the same model).
#[no_mangle]
pub unsafe extern "C" fn gang_trainer_predict(
    t: *mut gang_trainer_t,
    x: *const f32,
    rows: i64,
    cols: i64,
    layout: c_int,
    out: *mut f32,
    out_len: i64,
) -> c_int {
    on_trainer(t, |_, tr| {
        let (r, c) = counts(rows, cols)?;
        tr.check_cols(c)?;
        let x = slice(x, (r * c) as i64, "x")?;
        let need = r * tr.model.outputs();
        if out_len < need as i64 {
            return Err(Fail::arg(format!("out holds {out_len} floats; {r} rows need {need}")));
        }
        let out = slice_mut(out, need as i64, "out")?;
        let mut scratch = std::mem::take(&mut tr.rows_scratch);
        let p = {
            let x = row_major(x, r, c, layout, &mut scratch)?;
            tr.model.predict(x)?
        };
        tr.rows_scratch = scratch;
        out.copy_from_slice(&p);
        Ok(())
    })
}

/// Writes the model to `path` as safetensors (PyTorch `nn.Linear` layout: `layer0.weight`,
/// `layer0.bias`, ...; `gang predict` and numpy read it), durably (temporary file, fsync,
/// rename). Collective: rank 0 writes; every rank returns its result.
#[no_mangle]
pub unsafe extern "C" fn gang_trainer_save(t: *mut gang_trainer_t, path: *const c_char) -> c_int {
    on_trainer(t, |gang, tr| {
        let path = std::path::PathBuf::from(agree_args(gang, "gang_trainer_save", c_str(path, "path"))?);
        let info = ModelInfo {
            spec: tr.spec.clone(),
            classes: tr.classes,
            features: (0..tr.model.features()).map(|i| format!("f{i}")).collect(),
            label: "y".into(),
            metadata: [("writer".to_string(), "libgang".to_string())].into_iter().collect(),
        };
        gang.ctx().comm().agree("trainer save", || model_file::save(&path, &tr.model, &info).map(|()| true))?;
        Ok(())
    })
}

/// Registers the trainer's state with the checkpoint handle `ck` of the same gang, as
/// replicated regions: `trainer.params` (the model), the optimizer's state
/// (`trainer.exp_avg`, `trainer.exp_avg_sq` for Adam; `trainer.momentum_buffer` for SGD
/// with momentum) and `trainer.steps`. gang_checkpoint then saves the surrogate with the
/// simulation's fields and gang_restart restores it in place, so that training goes on
/// where it stopped and ends with the model of an uninterrupted run. Register before
/// gang_restart. The trainer cannot be freed while `ck` lives (gang_trainer_free refuses).
#[no_mangle]
pub unsafe extern "C" fn gang_trainer_checkpoint(t: *mut gang_trainer_t, ck: *mut crate::gang_checkpoint_t) -> c_int {
    on_trainer(t, |_, tr| {
        // SAFETY: a non-NULL checkpoint handle comes from gang_checkpoint_new and was not
        // freed (the caller's contract).
        let c = unsafe { ck.as_mut() }.ok_or_else(|| Fail::arg("the checkpoint handle is NULL"))?;
        if c.gang != tr.gang {
            return Err(Fail::arg("the checkpoint handle belongs to another gang than the trainer"));
        }
        let token = tr.token.clone();
        let params = tr.model.params_mut();
        c.register_owned("trainer.params".into(), Dtype::F32, params.as_mut_ptr().cast(), params.len(), &token);
        let (steps, tensors) = tr.opt.state_mut();
        for (name, data) in tensors {
            c.register_owned(format!("trainer.{name}"), Dtype::F32, data.as_mut_ptr().cast(), data.len(), &token);
        }
        c.register_owned("trainer.steps".into(), Dtype::I64, std::ptr::from_mut(steps).cast(), 1, &token);
        Ok(())
    })
}

/// Frees the trainer. NULL is accepted. Refused (GANG_ERR_STATE) while a checkpoint
/// handle holds its state (gang_trainer_checkpoint): free that first.
#[no_mangle]
pub unsafe extern "C" fn gang_trainer_free(t: *mut gang_trainer_t) -> c_int {
    if t.is_null() {
        return GANG_OK;
    }
    let held = on_trainer(t, |_, tr| match std::rc::Rc::strong_count(&tr.token) {
        1 => Ok(()),
        _ => Err(Fail::state(
            "a checkpoint handle holds this trainer's state (gang_trainer_checkpoint): free it first \
             (gang_checkpoint_free)",
        )),
    });
    if held != GANG_OK {
        return held;
    }
    entry(|| {
        // SAFETY: `t` came from gang_trainer_new (Box::into_raw) and is freed once.
        let tr = unsafe { Box::from_raw(t) };
        // SAFETY: the gang outlives its children (gang_finalize refuses while they live).
        if let Some(g) = unsafe { tr.gang.as_ref() } {
            g.release_child();
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::gather_rows;

    #[test]
    fn columns_gather_into_rows_across_block_edges() {
        for rows in [0, 1, 255, 256, 257, 1000] {
            let cols = 3;
            let data: Vec<Vec<f32>> = (0..cols).map(|c| (0..rows).map(|r| (r * 10 + c) as f32).collect()).collect();
            let columns: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
            let mut out = vec![7.0; 5];
            gather_rows(&columns, rows, &mut out);
            let want: Vec<f32> = (0..rows).flat_map(|r| (0..cols).map(move |c| (r * 10 + c) as f32)).collect();
            assert_eq!(out, want, "{rows} rows");
        }
    }
}
