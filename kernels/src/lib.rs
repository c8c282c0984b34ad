//! Training kernels of gang on plain slices: models, losses, gradients, optimizers.
//!
//! No MPI, no files: the rank runtime reads a shard of rows, calls
//! [`Model::loss_and_grad`] for the gradient **sum** over its rows, allreduces the one flat
//! gradient buffer (sum), and every rank applies the same [`OptimizerState::step_scaled`]
//! with `1 / global_rows`. Data are row-major `f32` (`x` is `[n, features]`).
//!
//! Everything is deterministic: fixed seeds ([`SplitMix64`]) and a fixed reduction order
//! (chunks of [`CHUNK_ROWS`] rows, summed in chunk order; within a chunk every gradient sum
//! runs in row order, the loss in four interleaved lanes of rows), so the same inputs give a
//! bitwise-identical gradient and loss whatever the number of
//! rayon threads, and whether a batch comes as one matrix or as row ranges of a larger one
//! ([`Model::loss_and_grad_rows`]). The kernels are built twice ([`Kernels`]): AVX2 + FMA,
//! chosen at run time where the CPU has it, and a portable build (multiply and add never
//! fused); `GANG_KERNELS=portable` forces the latter, which gives the same bits on every
//! CPU. `exp` and `log1p` are polynomials of this crate, not the C library's.
//!
//! ```
//! use gang_kernels::{Model, ModelKind, Optimizer, OptimizerState, Targets};
//!
//! // y = 1 when x0 + x1 > 0.
//! let x: Vec<f32> = vec![1.0, 0.5, -1.0, -0.2, 0.3, 0.4, -0.7, 0.1];
//! let y: Vec<i64> = vec![1, 0, 1, 0];
//! let mut model = Model::new(ModelKind::Logistic, 2, 42)?;
//! let mut opt = OptimizerState::new(Optimizer::sgd(0.5), model.num_params())?;
//! let mut grad = model.grad_buffer();
//! let first = model.loss(&x, Targets::Class(&y))?.mean_loss();
//! for _ in 0..100 {
//!     grad.fill(0.0);
//!     let stats = model.loss_and_grad(&x, Targets::Class(&y), &mut grad)?;
//!     // (allreduce `grad` and the stats across ranks here)
//!     opt.step_scaled(model.params_mut(), &grad, 1.0 / stats.n as f32)?;
//! }
//! let last = model.loss(&x, Targets::Class(&y))?;
//! assert!(last.mean_loss() < first / 2.0);
//! assert_eq!(model.predict_class(&x)?, y);
//! # Ok::<(), gang_kernels::Error>(())
//! ```
//!
//! Parameters are laid out as PyTorch's `nn.Linear` layers (`layer{i}.weight` is
//! `[out, in]`), see [`Model::tensors`].
#![deny(unsafe_code)]

mod arith;
mod dense;
mod error;
mod model;
mod optim;
mod rng;

pub use arith::Kernels;
pub use error::{Error, Result};
pub use model::{BatchStats, Model, ModelKind, Output, Targets, TensorView, CHUNK_ROWS};
pub use optim::{Optimizer, OptimizerState};
pub use rng::SplitMix64;

/// Makes the calling thread one of the kernels' threads: builds rayon's global pool with
/// this thread as its worker 0 (and as many threads in all as rayon would start,
/// `RAYON_NUM_THREADS` or the CPUs this process may run on). A rank's main thread that
/// calls the kernels then works on its own batch while the other threads steal chunks,
/// instead of handing the batch to the pool and sleeping until it is done: one thread
/// wake-up less on the critical path of every step.
///
/// Call it once, early, from the thread that will call the kernels for the life of the
/// process (a rank's main thread). Rayon work started by other threads runs on the pool's
/// other threads (this one joins in only when it calls rayon itself), so the pool is built
/// this way only when it has at least two threads; with one, the kernels run sequentially
/// on the calling thread anyway. Returns whether the pool was built; `false`, changing
/// nothing, also when the global pool already exists (rayon was used before, or another
/// thread called this first).
pub fn adopt_current_thread() -> bool {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    threads >= 2 && rayon::ThreadPoolBuilder::new().num_threads(threads).use_current_thread().build_global().is_ok()
}
