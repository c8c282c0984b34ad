//! `gang-rank`: the rank side of gang's built-in jobs.
//!
//! The `gang` launcher starts it through mpirun/srun (`gang hello -n 4` runs
//! `gang-rank hello` on 4 ranks); it also runs on its own with `--local N` threads.
//!
//! Jobs:
//! - `hello`: the ranks meet at a barrier, allreduce, and rank 0 reports what each saw.
//! - `selftest [--max-count N]`: every collective, checked on every rank.

use anyhow::{bail, Context as _, Result};
use gang::{execute, Config, Context, ReduceOp};

const USAGE: &str = "usage: gang-rank [--local N] <hello | selftest [--max-count N]>";

fn main() {
    if let Err(e) = run() {
        eprintln!("gang-rank: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let (mut config, args) = Config::from_args(std::env::args().skip(1))?;
    let Some(job) = args.first() else { bail!("no job given\n{USAGE}") };
    match job.as_str() {
        "hello" => {
            if args.len() > 1 {
                bail!("hello takes no arguments\n{USAGE}");
            }
            execute(config, hello)?;
        }
        "selftest" => {
            match args.get(1..).unwrap_or_default() {
                [] => {}
                [flag, v] if flag == "--max-count" => {
                    let max: usize = v.parse().with_context(|| format!("--max-count {v:?}: expected a positive integer"))?;
                    if max == 0 || max > gang::comm::MPI_MAX_COUNT {
                        bail!("--max-count must be between 1 and {}", gang::comm::MPI_MAX_COUNT);
                    }
                    config = config.with_max_count(max);
                }
                other => bail!("selftest: unexpected arguments {other:?}\n{USAGE}"),
            }
            execute(config, |ctx| {
                let report = gang::selftest::selftest(ctx.comm())?;
                let ok = ctx.comm().allreduce_scalar(true, ReduceOp::And)?;
                if ctx.rank() == 0 && ok {
                    println!(
                        "selftest passed: {} collectives checked on each of {} ranks ({} backend, at most {} elements per call)",
                        report.checks,
                        ctx.world(),
                        ctx.comm().backend_name(),
                        report.max_count
                    );
                }
                Ok(())
            })?;
        }
        "-h" | "--help" | "help" => println!("{USAGE}"),
        other => bail!("unknown job {other:?}\n{USAGE}"),
    }
    Ok(())
}

/// What one rank saw, sent to rank 0 as a line of text.
fn hello(ctx: &Context) -> gang::Result<()> {
    let comm = ctx.comm();
    let (rank, n) = (ctx.rank(), ctx.world());
    comm.barrier()?;
    let sum = comm.allreduce_scalar(rank as u64, ReduceOp::Sum)?;
    let max = comm.allreduce_scalar(rank as u64, ReduceOp::Max)?;
    let mut v = [1.0f64, rank as f64];
    comm.allreduce(&mut v, ReduceOp::Sum)?;
    let expected_sum = (n * (n - 1) / 2) as u64;
    let right = sum == expected_sum && max == (n - 1) as u64 && v[0] == n as f64;
    let all_right = comm.allreduce_scalar(right, ReduceOp::And)?;
    let line = format!(
        "{rank:>4}  {:<16} {:>3}/{:<3} {:>4}  {:<8} {:>12} {:>8} {:>10}  {}",
        ctx.host(),
        ctx.local_rank(),
        ctx.local_size(),
        ctx.node_index(),
        ctx.device().to_string(),
        sum,
        max,
        v[0],
        if right { "yes" } else { "NO" }
    );
    let lines = comm.allgather_bytes(line.as_bytes())?;
    if rank == 0 {
        println!("gang hello: {n} ranks met at a barrier and allreduced ({})", ctx.backend_description());
        if let (Some(id), Some(dir)) = (ctx.run_id(), ctx.run_dir()) {
            println!("run {id} (attempt {}), records in {}", ctx.attempt(), dir.display());
        }
        println!(
            "{:>4}  {:<16} {:>7} {:>4}  {:<8} {:>12} {:>8} {:>10}  right",
            "rank", "host", "local", "node", "device", "sum(rank)", "max", "count"
        );
        for l in lines.iter() {
            println!("{}", String::from_utf8_lossy(l));
        }
        println!(
            "expected: sum(rank) = {expected_sum}, max = {}, count = {n}: {}",
            n - 1,
            if all_right { "every rank saw the right values" } else { "SOME RANK SAW WRONG VALUES" }
        );
    }
    if !all_right {
        return Err(gang::Error::External("a rank saw wrong collective results".into()));
    }
    Ok(())
}
