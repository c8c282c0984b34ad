//! Training benchmarks (issue 4), each beside its limit, run under `gang run -n N` by
//! `bench/train.sh`:
//!
//! - `probe OUT.json`: memory bandwidth as the ranks see it: a STREAM-like read and triad
//!   over buffers far larger than the caches, every rank and every core it may use at
//!   once, and the cores the gang may use (mpirun binds each of 1 or 2 ranks to one core).
//!   Peak FLOP/s comes from `bench/c/fma_peak.c` (safe Rust cannot reach the FMA units
//!   of a baseline x86-64 build, and LLVM did not keep a register-only mul-add loop in
//!   registers).
//! - `epoch MODEL DATA EPOCHS BATCH OUT.json`: `gang::train::train` (Adam, no checkpoints)
//!   on the shards `load_shard` reads from DATA; one figure per epoch with the slowest
//!   rank's seconds and its allreduce seconds (`EpochStats::allreduce_seconds`).
//! - `ckpt DIR MB REPS OUT.json`: `CheckpointStore::save` of MB megabytes (a quarter
//!   replicated, three quarters sharded over the ranks), beside the limit: every rank
//!   writing the same number of bytes as its shard files sequentially (1 MiB writes) and
//!   fsyncing them (file and directory) in the same directory, once as one stream and once
//!   starting write-back every 32 MiB as the checkpoint writer does; then
//!   `CheckpointStore::restore` of that checkpoint on its own (the checkpoint read time).
//! - `restore DIR REPS OUT.json`: `CheckpointStore::restore` of the newest checkpoint in
//!   DIR on its own, in a fresh gang: the checkpoint read time of the resume figure.
//! - `resume DIR MB STEPS EVERY TIMES.json`: a rank program for the failure-to-resume
//!   latency: steps of a simulated training (an allreduce of a 1 MiB gradient and an update
//!   of the state), a checkpoint of MB megabytes every EVERY steps. Under
//!   `GANG_FAULT=rank=R,step=S,kind=kill` rank R appends the time it kills itself to
//!   TIMES.json; after the launcher's restart rank 0 appends the times the new process
//!   started, had its gang, had restored the checkpoint and had taken its first step.
//!
//! Figures are JSON lines appended to OUT.json by rank 0; seconds are the slowest rank's.

use anyhow::{bail, Context as _, Result};
use gang::checkpoint::{CheckpointStore, Meta, State, Tensor};
use gang::data::{Input, PartitionPlan, PlanOptions};
use gang::internal::fault::{FaultKind, FaultPlan};
use gang::train::{self, data, TrainConfig};
use gang::{Context, ReduceOp};
use gang_kernels::Optimizer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn main() -> Result<()> {
    // Before anything else: when this process started (the resume figure needs it).
    let started_ns = unix_ns();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let ctx = gang::init()?;
    let num = |s: &str| s.parse::<u64>().with_context(|| format!("{s:?} is not a number"));
    match a.as_slice() {
        ["probe", out] => probe(&ctx, out),
        ["epoch", model, data, epochs, batch, out] => epoch(&ctx, model, data, num(epochs)?, num(batch)? as usize, out),
        ["ckpt", dir, mb, reps, out] => ckpt(&ctx, Path::new(dir), num(mb)? as usize, num(reps)? as usize, out),
        ["restore", dir, reps, out] => restore(&ctx, Path::new(dir), num(reps)? as usize, out),
        ["resume", dir, mb, steps, every, times] => {
            resume(&ctx, started_ns, Path::new(dir), num(mb)? as usize, num(steps)?, num(every)?, times)
        }
        _ => bail!(
            "usage: train-bench probe OUT | epoch MODEL DATA EPOCHS BATCH OUT | ckpt DIR MB REPS OUT | \
             restore DIR REPS OUT | resume DIR MB STEPS EVERY TIMES"
        ),
    }
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Appends one JSON line to `out` (rank 0 only).
fn append(ctx: &Context, out: &str, line: serde_json::Value) -> Result<()> {
    if ctx.rank() == 0 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("opening {out}"))?;
        writeln!(f, "{line}")?;
        println!("{line}");
    }
    Ok(())
}

/// The cores this process may run on (its affinity mask: mpirun binds each of 1 or 2
/// ranks to one core, and rayon's pool takes this many threads).
fn my_cores() -> usize {
    std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(1)
}

/// The cores the gang uses: the sum over ranks, at most the machine's.
fn gang_cores(ctx: &Context) -> Result<usize> {
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1);
    let sum = ctx.comm().allreduce_scalar(my_cores() as u64, ReduceOp::Sum)? as usize;
    Ok(sum.min(machine.max(1)))
}

// ---------------------------------------------------------------------------------------
// probe

/// Lanes of the independent partial sums of the read loop (vectorises into a few
/// registers; the loop is bound by memory, not by the adds).
const LANES: usize = 16;

fn read_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for c in x.chunks_exact(LANES) {
        for k in 0..LANES {
            acc[k] += c[k];
        }
    }
    acc.iter().sum()
}

fn triad(a: &mut [f32], b: &[f32], c: &[f32], s: f32) {
    for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
        *a = b + s * c;
    }
}

/// Runs `f(thread)` on `threads` threads at once (after a barrier of the gang), returns the
/// slowest thread's seconds over the gang.
fn timed_threads(ctx: &Context, threads: usize, f: impl Fn(usize) + Sync) -> Result<f64> {
    ctx.comm().barrier()?;
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            let f = &f;
            s.spawn(move || f(i));
        }
    });
    let mine = t.elapsed().as_secs_f64();
    Ok(ctx.comm().allreduce_scalar(mine, ReduceOp::Max)?)
}

fn probe(ctx: &Context, out: &str) -> Result<()> {
    let threads = my_cores();
    let cores = gang_cores(ctx)?;
    // 256 MiB to read per rank, 3 x 128 MiB for the triad: far beyond any cache.
    let n_read = 64 << 20;
    let n_triad = 32 << 20;
    let x = vec![1.0f32; n_read];
    let (mut a, b, c) = (vec![0f32; n_triad], vec![1.0f32; n_triad], vec![2.0f32; n_triad]);
    let world = ctx.world() as f64;
    let (mut read_best, mut triad_best) = (0f64, 0f64);
    for _ in 0..5 {
        let per = n_read / threads;
        let s = timed_threads(ctx, threads, |i| {
            std::hint::black_box(read_sum(&x[i * per..(i + 1) * per]));
        })?;
        read_best = read_best.max(world * (n_read * 4) as f64 / s / 1e9);
        let per = n_triad / threads;
        // Each thread takes one chunk of `a` (and the same rows of `b` and `c`).
        let chunks = std::sync::Mutex::new(a.chunks_mut(per).enumerate().collect::<Vec<_>>());
        let s = timed_threads(ctx, threads, |_| {
            let (j, mine) = chunks.lock().expect("not poisoned").pop().expect("one chunk per thread");
            triad(mine, &b[j * per..(j + 1) * per], &c[j * per..(j + 1) * per], 3.0);
        })?;
        triad_best = triad_best.max(world * (3 * n_triad * 4) as f64 / s / 1e9);
        std::hint::black_box(&a);
    }
    // The same bytes in the order `train` reads them: blocks of 128 KiB (its default
    // shuffle block) in a random order, every thread of the rank on its share of them.
    drop((a, b, c));
    let block = gang::train::SHUFFLE_BLOCK_BYTES / 4;
    let mut order: Vec<usize> = (0..n_read / block).collect();
    gang_kernels::SplitMix64::new(ctx.rank() as u64 + 1).shuffle(&mut order);
    let mut blocks_best = 0f64;
    for _ in 0..3 {
        let per = order.len() / threads;
        let s = timed_threads(ctx, threads, |i| {
            for &b in &order[i * per..(i + 1) * per] {
                std::hint::black_box(read_sum(&x[b * block..(b + 1) * block]));
            }
        })?;
        blocks_best = blocks_best.max(world * (per * threads * block * 4) as f64 / s / 1e9);
    }
    append(
        ctx,
        out,
        serde_json::json!({
            "bench": "probe", "ranks": ctx.world(), "cores": cores, "threads_per_rank": threads,
            "read_gbs": read_best, "triad_gbs": triad_best, "blocks_gbs": blocks_best,
        }),
    )
}

// ---------------------------------------------------------------------------------------
// epoch

/// FLOPs per row of one training step (forward, loss gradient, backward), counting a
/// multiply and an add as two, as gang's kernels compute them:
///
/// - logistic on `f` features: `z = b + w.x` (2f), `gw += g x` (2f), `gb += g` (1), plus
///   the loss and its derivative (~10 with `exp`/`log1p` counted as a few each):
///   `4f + 11`.
/// - MLP with one hidden layer of `h` ReLU units and one output: forward `2fh` (the
///   bias is the accumulator's start), ReLU `h` (compares, counted), output `2h + 1`;
///   loss ~10; backward: output weights `gw1 += d a` (2h), `gb1` (1), `da = d w1` (2h: the
///   kernel adds to a zero start), ReLU mask (h), first layer `gW0 += delta^T x` (2fh) and
///   `gb0` (h), no input gradient for the first layer. `4fh + 9h + 12`; the `4fh` of the
///   first layer is 95% of it for f = 32, h = 64 (8,780 FLOPs per row).
fn flops_per_row(model: &str, f: usize) -> Result<f64> {
    let f = f as f64;
    Ok(match model {
        "logistic" => 4.0 * f + 11.0,
        m => match m.strip_prefix("mlp:").and_then(|h| h.parse::<usize>().ok()) {
            Some(h) => {
                let h = h as f64;
                4.0 * f * h + 9.0 * h + 12.0
            }
            None => bail!("the floor is worked out for logistic and mlp:H only, not {m}"),
        },
    })
}

fn epoch(ctx: &Context, model: &str, dir: &str, epochs: u64, batch: usize, out: &str) -> Result<()> {
    let opts = PlanOptions::default();
    let plan = PartitionPlan::discover_on_root(ctx.comm(), &[Input::parse(dir)?], &opts)?;
    let features = data::feature_columns(&plan.schema, "y", None)?;
    let (mut shard, classes) = data::load_shard(ctx, &plan, &opts, "y", &features)?;
    // As `gang train` does: rows shuffled once after loading, blocks of rows every epoch.
    shard.shuffle_rows(1);
    let kind = train::parse_model(model, classes)?;
    let cfg = TrainConfig::try_new(kind, epochs, batch)?.with_optimizer(Optimizer::adam(0.01))?.with_seed(1);
    let cores = gang_cores(ctx)?;
    ctx.comm().barrier()?;
    let report = train::train(ctx, &shard, &cfg, |_| {})?;
    let rows = report.steps_per_epoch * (batch / ctx.world() * ctx.world()) as u64;
    let fpr = flops_per_row(model, shard.features)?;
    for e in &report.epochs {
        let seconds = ctx.comm().allreduce_scalar(e.seconds, ReduceOp::Max)?;
        let share = e.allreduce_seconds / e.seconds.max(1e-12);
        let share_max = ctx.comm().allreduce_scalar(share, ReduceOp::Max)?;
        let share_mean = ctx.comm().allreduce_scalar(share, ReduceOp::Sum)? / ctx.world() as f64;
        append(
            ctx,
            out,
            serde_json::json!({
                "bench": "epoch", "model": model, "ranks": ctx.world(), "cores": cores, "epoch": e.epoch,
                "batch": batch, "steps": report.steps_per_epoch, "rows": rows, "features": shard.features,
                "x_bytes": rows * shard.features as u64 * 4, "flops": fpr * rows as f64, "flops_per_row": fpr,
                "params": report.model.num_params(), "seconds": seconds,
                "allreduce_share_max": share_max, "allreduce_share_mean": share_mean, "loss": e.loss,
            }),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ckpt

/// A state of `mb` megabytes over the gang: a quarter replicated (stored once, by rank
/// 0), three quarters sharded evenly over the ranks.
fn bench_state(ctx: &Context, mb: usize, step: u64) -> State {
    let total = mb * 1_000_000 / 4;
    let replicated = total / 4;
    let sharded = (total - replicated) / ctx.world();
    let fill = |n: usize, salt: usize| (0..n).map(|i| ((i * 31 + salt) % 1000) as f32 * 1e-3).collect::<Vec<f32>>();
    State::new()
        .with_replicated(Tensor::vector("params", fill(replicated, 0)))
        .with_sharded(Tensor::vector("optimizer.m", fill(sharded, ctx.rank() + 1)))
        .with_meta(Meta { epoch: 0, rng_state: vec![step], data_cursor: step, extra: serde_json::Value::Null })
}

/// Bytes of the files this rank saved in `step_dir`.
fn my_files_bytes(step_dir: &Path, rank: usize) -> Result<u64> {
    let mut n = 0;
    for f in [format!("rank-{rank}.safetensors"), format!("rank-{rank}.meta.json")] {
        n += std::fs::metadata(step_dir.join(&f)).with_context(|| format!("{}/{f}", step_dir.display()))?.len();
    }
    Ok(n)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Flushes the machine's dirty pages (`sync`, rank 0) before a timed write, so that neither
/// side pays for write-back (or ext4's discards of deleted files, this disk is mounted
/// with `discard`) left by the other. Nothing is deleted between the timed writes.
fn quiet_disk(ctx: &Context) -> Result<()> {
    if ctx.rank() == 0 {
        std::process::Command::new("sync").status().context("running sync")?;
    }
    ctx.comm().barrier()?;
    Ok(())
}

fn ckpt(ctx: &Context, dir: &Path, mb: usize, reps: usize, out: &str) -> Result<()> {
    let (rank, world) = (ctx.rank(), ctx.world());
    let state = bench_state(ctx, mb, 1);
    let root = dir.join(format!("n{world}"));
    if rank == 0 {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
    }
    ctx.comm().barrier()?;
    let (mut save_best, mut plain_best, mut ahead_best) = (f64::MAX, f64::MAX, f64::MAX);
    let mut bytes = 0u64;
    let mut store_dir = PathBuf::new();
    for rep in 0..reps {
        // Alternate which goes first, so that neither always meets a disk busy with the
        // other's write-back.
        let mut order = ["save", "plain", "plain-ahead"];
        order.rotate_left(rep % 3);
        for which in order {
            if which == "save" {
                store_dir = root.join(format!("store-{rep}"));
                let store = CheckpointStore::new(&store_dir, 2)?;
                quiet_disk(ctx)?;
                let t = Instant::now();
                store.save(ctx, 1, &state)?;
                let s = ctx.comm().allreduce_scalar(t.elapsed().as_secs_f64(), ReduceOp::Max)?;
                save_best = save_best.min(s);
                let mine = my_files_bytes(&store_dir.join("step-00000001"), rank)?;
                bytes = ctx.comm().allreduce_scalar(mine, ReduceOp::Sum)?;
            } else {
                // The limit: the same bytes as this rank's shard files, one sequential
                // write and an fsync (file and directory), in the same directory.
                let mine = if bytes > 0 {
                    my_files_bytes(&store_dir.join("step-00000001"), rank)?
                } else {
                    // First round: the size save will write (tensor bytes).
                    (state
                        .replicated
                        .iter()
                        .filter(|_| rank == 0)
                        .chain(&state.sharded)
                        .map(|t| 4 * t.data.len())
                        .sum::<usize>()) as u64
                };
                let buf: Vec<u8> = (0..mine as usize).map(|i| (i % 251) as u8).collect();
                let pdir = root.join(format!("plain-{rep}"));
                std::fs::create_dir_all(&pdir)?;
                let path = pdir.join(format!("rank-{rank}.bin"));
                quiet_disk(ctx)?;
                let ahead = which == "plain-ahead";
                let t = Instant::now();
                let mut f = std::fs::File::create(&path)?;
                let mut written = 0u64;
                for chunk in buf.chunks(1 << 20) {
                    f.write_all(chunk)?;
                    written += chunk.len() as u64;
                    // The same write-back started every 32 MiB as the checkpoint's.
                    if ahead && written.is_multiple_of(32 << 20) {
                        gang::internal::start_writeback(&f, written - (32 << 20), 32 << 20);
                    }
                }
                f.sync_all()?;
                fsync_dir(&pdir)?;
                let s = ctx.comm().allreduce_scalar(t.elapsed().as_secs_f64(), ReduceOp::Max)?;
                if ahead {
                    ahead_best = ahead_best.min(s);
                } else {
                    plain_best = plain_best.min(s);
                }
            }
        }
    }
    // The checkpoint read time: restore of the last checkpoint on its own (warm: the
    // files were just written, as after a restart on the same node).
    let store = CheckpointStore::new(&store_dir, 2)?;
    let mut restore_best = f64::MAX;
    for _ in 0..reps {
        ctx.comm().barrier()?;
        let t = Instant::now();
        let r = store.restore(ctx)?.context("no checkpoint to restore")?;
        let s = ctx.comm().allreduce_scalar(t.elapsed().as_secs_f64(), ReduceOp::Max)?;
        restore_best = restore_best.min(s);
        std::hint::black_box(r);
    }
    ctx.comm().barrier()?;
    if rank == 0 {
        let _ = std::fs::remove_dir_all(&root);
    }
    append(
        ctx,
        out,
        serde_json::json!({
            "bench": "ckpt", "ranks": world, "bytes": bytes, "save_seconds": save_best,
            "plain_seconds": plain_best, "plain_ahead_seconds": ahead_best, "restore_seconds": restore_best, "reps": reps,
        }),
    )
}

/// `CheckpointStore::restore` of the newest checkpoint in `dir` on its own, in a fresh
/// gang (the first restore of the process, as after a restart, and the best of `reps`).
fn restore(ctx: &Context, dir: &Path, reps: usize, out: &str) -> Result<()> {
    let store = CheckpointStore::new(dir, 2)?;
    let (mut first, mut best, mut bytes) = (0f64, f64::MAX, 0u64);
    for rep in 0..reps.max(1) {
        ctx.comm().barrier()?;
        let t = Instant::now();
        let r = store.restore(ctx)?.context("no checkpoint to restore")?;
        let s = ctx.comm().allreduce_scalar(t.elapsed().as_secs_f64(), ReduceOp::Max)?;
        if rep == 0 {
            first = s;
            let mine = my_files_bytes(&r.dir, ctx.rank())?;
            bytes = ctx.comm().allreduce_scalar(mine, ReduceOp::Sum)?;
        }
        best = best.min(s);
    }
    append(
        ctx,
        out,
        serde_json::json!({ "bench": "restore", "ranks": ctx.world(), "bytes": bytes, "first_seconds": first, "best_seconds": best }),
    )
}

// ---------------------------------------------------------------------------------------
// resume

fn append_line(path: &str, line: &serde_json::Value) -> Result<()> {
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {path}"))?;
    writeln!(f, "{line}")?;
    Ok(())
}

fn resume(ctx: &Context, started_ns: u64, dir: &Path, mb: usize, steps: u64, every: u64, times: &str) -> Result<()> {
    let init_ns = unix_ns();
    let (rank, attempt) = (ctx.rank(), ctx.attempt());
    let faults = FaultPlan::from_env()?;
    let store = CheckpointStore::new(dir, 2)?;
    let t_restore = Instant::now();
    let restored = store.restore(ctx)?;
    let restore_s = t_restore.elapsed().as_secs_f64();
    let restored_ns = unix_ns();
    let resumed_from = restored.as_ref().map(|r| r.step);
    // The state: the checkpoint's tensors, or (first attempt) a fresh one, built after the
    // restore so that building it is not counted in the resume figure.
    let (mut state, mut step) = match restored {
        Some(r) => {
            let state = State { meta: r.meta, replicated: r.replicated, sharded: r.sharded };
            (state, r.step)
        }
        None => (bench_state(ctx, mb, 0), 0),
    };
    let mut grad = vec![0f32; 1 << 18];
    let mut first = true;
    while step < steps {
        if faults.due(rank, step, attempt) == Some(FaultKind::Kill) {
            append_line(
                times,
                &serde_json::json!({ "event": "kill", "rank": rank, "attempt": attempt, "step": step, "t_ns": unix_ns() }),
            )?;
        }
        faults.check(rank, step, attempt);
        // One simulated step: a gradient from the state, summed over the gang, applied.
        let params = &mut state.replicated[0].data;
        for (g, p) in grad.iter_mut().zip(params.iter()) {
            *g = *p * 1e-3 + rank as f32;
        }
        ctx.comm().allreduce(&mut grad, ReduceOp::Sum)?;
        for (p, g) in params.iter_mut().zip(&grad) {
            *p -= 1e-4 * g;
        }
        step += 1;
        ctx.progress(step, steps, "bench step");
        if first {
            first = false;
            let first_step_ns = unix_ns();
            let restore_s = ctx.comm().allreduce_scalar(restore_s, ReduceOp::Max)?;
            if rank == 0 {
                append_line(
                    times,
                    &serde_json::json!({
                        "event": "start", "attempt": attempt, "ranks": ctx.world(), "resumed_from": resumed_from,
                        "t_process_ns": started_ns, "t_init_ns": init_ns, "t_restored_ns": restored_ns,
                        "t_first_step_ns": first_step_ns, "restore_seconds": restore_s,
                        "run_dir": ctx.run_dir().map(|p| p.display().to_string()),
                    }),
                )?;
            }
        }
        if step % every == 0 {
            state.meta.data_cursor = step;
            store.save(ctx, step, &state)?;
        }
    }
    Ok(())
}
