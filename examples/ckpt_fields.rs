//! A simulation's own buffers checkpointed in place: the multi-process tests run it under
//! `gang run` to check `save_refs`/`restore_into` for real.
//!
//! `ckpt_fields DIR save STEP`: saves a replicated f64 field `t` and a sharded f64 field
//! `u` (this rank's part) as the checkpoint of STEP, straight from their buffers.
//! `ckpt_fields DIR restore STEP`: restores the newest checkpoint into buffers of the same
//! shapes, checks that it is STEP and that every value is the saved one, bit for bit, and
//! prints `rank R restored step S: N values ok`.

use gang::checkpoint::{CheckpointStore, Meta, TensorMut, TensorRef};
use gang::{execute, Config, Error};

/// Rank `rank`'s part of `u` at `step`: rank + 2 values, some of them special.
fn u(rank: usize, step: u64) -> Vec<f64> {
    let mut v: Vec<f64> = (0..rank + 2).map(|i| rank as f64 * 1e3 + i as f64 / 7.0 + step as f64).collect();
    v[0] = if rank.is_multiple_of(2) { -0.0 } else { f64::from_bits(0x7ff8_0000_0000_beef) };
    v
}

fn t(step: u64) -> Vec<f64> {
    (0..6).map(|i| (step * 10 + i) as f64 * 0.1).collect()
}

fn main() {
    let (config, args) = Config::from_args(std::env::args().skip(1)).expect("arguments");
    let usage = || -> ! {
        eprintln!("usage: ckpt_fields DIR save|restore STEP");
        std::process::exit(2)
    };
    if args.len() != 3 {
        usage();
    }
    let step: u64 = args[2].parse().unwrap_or_else(|_| usage());
    let (dir, mode) = (args[0].clone(), args[1].clone());
    let result = execute(config, |ctx| {
        let store = CheckpointStore::new(&dir, 2)?;
        let rank = ctx.rank();
        match mode.as_str() {
            "save" => {
                let (t, u) = (t(step), u(rank, step));
                let replicated = [TensorRef::from_slice("t", vec![2, 3], &t)?];
                let sharded = [TensorRef::vector("u", &u)?];
                store.save_refs(ctx, step, &Meta { data_cursor: step, ..Meta::default() }, &replicated, &sharded)
            }
            "restore" => {
                let (mut tb, mut ub) = (vec![f64::NAN; 6], vec![f64::NAN; rank + 2]);
                let r = {
                    let mut targets =
                        [TensorMut::vector("u", &mut ub)?, TensorMut::from_slice("t", vec![2, 3], &mut tb)?];
                    store.restore_into(ctx, &mut targets)?.ok_or("no checkpoint")?
                };
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                if r.step != step || r.meta.data_cursor != step {
                    return Err(Error::from(format!(
                        "restored step {} (cursor {}), expected {step}",
                        r.step, r.meta.data_cursor
                    )));
                }
                if bits(&tb) != bits(&t(step)) || bits(&ub) != bits(&u(rank, step)) {
                    return Err(Error::from(format!("rank {rank}: restored values differ: t {tb:?} u {ub:?}")));
                }
                println!("rank {rank} restored step {}: {} values ok", r.step, tb.len() + ub.len());
                Ok(())
            }
            _ => usage(),
        }
    });
    if let Err(e) = result {
        eprintln!("ckpt_fields: {e}");
        std::process::exit(1);
    }
}
