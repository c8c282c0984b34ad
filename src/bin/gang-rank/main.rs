//! `gang-rank`: the rank side of gang's built-in jobs.
//!
//! The `gang` launcher starts it through mpirun/srun (`gang stats -n 4 --input data/` runs
//! `gang-rank stats --input data/` on 4 ranks); it also runs on its own as N threads with
//! `--local N` before the job name.

mod jobs;

use anyhow::Result;
use clap::{Parser, Subcommand};
use gang::Config;

/// The jobs every rank of a gang runs.
#[derive(Debug, Parser)]
#[command(name = "gang-rank", about = "The rank side of gang's built-in jobs (started by `gang <job> -n N`)")]
struct Cli {
    #[command(subcommand)]
    job: Job,
}

#[derive(Debug, Subcommand)]
enum Job {
    /// The ranks meet at a barrier, allreduce, and rank 0 reports what each saw.
    Hello,
    /// Every collective, checked on every rank.
    Selftest(jobs::SelftestArgs),
    /// A synthetic classification or regression dataset with a known true model.
    Gen(jobs::GenArgs),
    /// Count, mean, std, min, max and nulls of every numeric column.
    Stats(jobs::StatsArgs),
    /// Standardize the feature columns with the dataset's statistics (a map stage).
    Standardize(jobs::StandardizeArgs),
    /// Convert between Parquet, Arrow IPC and HDF5, re-partitioned into K files.
    Convert(jobs::ConvertArgs),
    /// Data-parallel training with allreduce, checkpoints and resume.
    Train(jobs::TrainArgs),
    /// Apply a trained model to a dataset (a map stage, exactly-once output).
    Predict(jobs::PredictArgs),
    /// Inspect a checkpoint directory (one process, no gang).
    #[command(subcommand)]
    Ckpt(jobs::CkptCommand),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("gang-rank: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    // `--local N` may come first; the rest is the job's command line.
    let (config, args) = Config::from_args(std::env::args().skip(1))?;
    let cli = Cli::parse_from(std::iter::once("gang-rank".to_string()).chain(args));
    match cli.job {
        Job::Hello => jobs::hello(config),
        Job::Selftest(a) => jobs::selftest(config, &a),
        Job::Gen(a) => jobs::gen(config, &a),
        Job::Stats(a) => jobs::stats(config, &a),
        Job::Standardize(a) => jobs::standardize(config, &a),
        Job::Convert(a) => jobs::convert(config, &a),
        Job::Train(a) => jobs::train(config, &a),
        Job::Predict(a) => jobs::predict(config, &a),
        Job::Ckpt(c) => jobs::ckpt(&c),
    }
}
