//! A toy training loop in a barrier section with checkpoints: the multi-process tests run
//! it under `gang run` to check checkpoint/restart for real.
//!
//! `ckpt_demo DIR STEPS EVERY [error|panic STEP RANK]`: restores the newest usable
//! checkpoint in DIR (or starts fresh), runs to step STEPS with one allreduce per step,
//! checkpoints every EVERY steps, and prints the final weights' bits on rank 0. With
//! `error`/`panic`, rank RANK fails at step STEP. `GANG_FAULT` injects the checkpoint
//! faults (`crash-during-checkpoint`, `corrupt-latest-checkpoint`).

use gang::checkpoint::{CheckpointStore, Meta, State, Tensor};
use gang::{execute, Config, Error, ReduceOp};

fn main() {
    let (config, args) = Config::from_args(std::env::args().skip(1)).expect("arguments");
    let usage = || -> ! {
        eprintln!("usage: ckpt_demo DIR STEPS EVERY [error|panic STEP RANK]");
        std::process::exit(2)
    };
    if args.len() != 3 && args.len() != 6 {
        usage();
    }
    let num = |s: &str| s.parse::<u64>().unwrap_or_else(|_| usage());
    let (dir, steps, every) = (args[0].clone(), num(&args[1]), num(&args[2]));
    let fail = (args.len() == 6).then(|| (args[3].clone(), num(&args[4]), num(&args[5]) as usize));

    let result = execute(config, |ctx| {
        let store = CheckpointStore::new(&dir, 2)?;
        ctx.barrier_section_with_checkpoints("train", &store, |gang| {
            let rank = gang.rank();
            let (mut w, start) = match gang.restore()? {
                Some(r) => {
                    let w = r.tensor("w").ok_or("checkpoint without w")?.data.clone();
                    assert_eq!(r.meta.data_cursor, r.step, "metadata round trip");
                    assert_eq!(r.sharded[0].data, vec![rank as f32], "this rank's shard");
                    (w, r.step)
                }
                None => (vec![0.0f32; 4], 0),
            };
            if rank == 0 {
                match start {
                    0 => println!("fresh start"),
                    s => println!("restored step {s}"),
                }
            }
            for step in start + 1..=steps {
                gang.set_step(step);
                if let Some((kind, at, who)) = &fail {
                    if *at == step && *who == rank {
                        match kind.as_str() {
                            "panic" => panic!("injected panic on rank {rank}"),
                            _ => return Err(Error::from(format!("injected error on rank {rank}"))),
                        }
                    }
                }
                let mut g: Vec<f32> =
                    (0..w.len()).map(|i| ((rank + 1) as f32) * 0.1 + (step as f32) * 0.01 * i as f32).collect();
                gang.comm().allreduce(&mut g, ReduceOp::Sum)?;
                for (wi, gi) in w.iter_mut().zip(&g) {
                    *wi -= 0.05 * gi;
                }
                if step % every == 0 {
                    let state = State::new()
                        .with_replicated(Tensor::vector("w", w.clone()))
                        .with_sharded(Tensor::vector("rank", vec![rank as f32]))
                        .with_meta(Meta { data_cursor: step, ..Meta::default() });
                    gang.checkpoint(step, &state)?;
                }
            }
            if rank == 0 {
                let bits: Vec<String> = w.iter().map(|v| format!("{:08x}", v.to_bits())).collect();
                println!("final w bits: {}", bits.join(" "));
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        eprintln!("ckpt_demo: {e}");
        std::process::exit(1);
    }
}
