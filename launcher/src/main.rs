//! `gang`: starts, watches and stops gangs of ranks through `mpirun` or `srun`.
//!
//! ```text
//! gang run -n 4 -- ./my-rank-program --its-args     # any program, one per rank
//! gang hello -n 2                                   # a built-in job (runs gang-rank)
//! gang train --help                                 # a job's options and the launch options
//! gang info -n 4                                    # MPI, Slurm, cores, GPUs, device plan
//! gang sbatch --nodes 2 --ntasks 4 --submit -- hello # a Slurm batch job that runs a gang
//! ```
//!
//! The launcher never links or calls MPI. Each rank slot runs `gang __rank-supervisor`,
//! which records the rank's start and exit in the run directory and ties the rank program's
//! life to its own; `gang run` stops the whole gang on a signal or a failed rank, kills any
//! leftovers and names the rank that failed first.

mod chatter;
mod detect;
mod heartbeat;
mod info;
mod jobs;
mod outcome;
mod plan;
mod ranks;
mod run;
mod sbatch;
mod supervise;
mod sys;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// The `gang` command line.
#[derive(Debug, Parser)]
#[command(name = "gang", version, about = "Run MPI gangs: all ranks start together, any failure stops them all")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run PROGRAM as a gang of N ranks through mpirun or srun.
    Run(run::RunArgs),
    /// Show the MPI, launcher, Slurm allocation, cores, GPUs and rank->device plan.
    Info(info::InfoArgs),
    /// Write a Slurm batch script that runs a gang command (`gang sbatch --nodes 2
    /// --ntasks 4 -- train ...`); submit it with --submit.
    Sbatch(sbatch::SbatchArgs),
    /// Inspect checkpoints: `gang ckpt ls DIR`, `gang ckpt verify DIR` (no gang started).
    Ckpt(jobs::CkptArgs),
    #[command(flatten)]
    Job(Box<jobs::JobCommand>),
    /// Runs in each rank slot (started by `gang run`, not by hand).
    #[command(name = "__rank-supervisor", hide = true)]
    RankSupervisor(supervise::SupervisorArgs),
}

/// The whole command line, for errors worded the way clap words them.
pub(crate) fn command() -> clap::Command {
    Cli::command()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (result, who) = match cli.command {
        Command::Run(args) => (run::run(&args.launch, &args.command, false), "gang"),
        Command::Info(args) => (info::info(&args), "gang info"),
        Command::Sbatch(args) => (sbatch::sbatch(&args), "gang sbatch"),
        Command::Ckpt(args) => (jobs::run_local(&args), "gang ckpt"),
        Command::Job(job) => (jobs::run_job(&job), "gang"),
        Command::RankSupervisor(args) => (supervise::supervise(args), "gang __rank-supervisor"),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("{who}: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launch options and every job's options fit together (no clashing names).
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
