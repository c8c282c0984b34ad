//! `gang-rank`: the rank side of gang's built-in jobs.
//!
//! The `gang` launcher starts it through mpirun/srun (`gang stats -n 4 --input data/` runs
//! `gang-rank stats --input=data/` on 4 ranks); it also runs on its own as N threads with
//! `--local N` before the job name. The jobs and their options are defined once, in the
//! `gang-jobs` crate, which the launcher reads too; this program adds what each job does.

mod jobs;

use anyhow::Result;
use clap::{Parser, Subcommand};
use gang::Config;
use gang_protocol::{FailureClass, FailureKind, FailureRecord, RunDir};

/// The jobs every rank of a gang runs.
#[derive(Debug, Parser)]
#[command(name = "gang-rank", about = "The rank side of gang's built-in jobs (started by `gang <job> -n N`)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Job(Box<gang_jobs::Job>),
    /// Inspect a checkpoint directory (one process, no gang).
    #[command(subcommand)]
    Ckpt(jobs::CkptCommand),
}

/// An error found before the job's gang work began, with whether a restart could help: a
/// bad option (usage) or an input that cannot be read as given (input).
#[derive(Debug)]
pub struct Classified {
    /// Usage or input.
    pub class: FailureClass,
    /// What went wrong, for the command line.
    pub error: anyhow::Error,
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Classified {}

/// `error` as a usage failure (no restart can mend it).
pub fn usage(error: impl Into<anyhow::Error>) -> anyhow::Error {
    Classified { class: FailureClass::Usage, error: error.into() }.into()
}

/// `error` as an input failure (no restart can mend it).
pub fn input(error: impl Into<anyhow::Error>) -> anyhow::Error {
    Classified { class: FailureClass::Input, error: error.into() }.into()
}

fn main() {
    gang::keep_freed_memory();
    if let Err(e) = run() {
        report(&e);
        std::process::exit(2);
    }
}

/// Prints `e` and, under a launcher, records it in the run directory with its class. Every
/// rank meets the same error before its gang work begins (the same options, the same
/// files), so only rank 0 prints it; every rank records it.
fn report(e: &anyhow::Error) {
    let env = gang::RankEnv::from_env().ok();
    let rank = env.as_ref().and_then(|v| v.rank);
    if rank.unwrap_or(0) == 0 {
        eprintln!("gang-rank: {e:#}");
    }
    let Some(class) = e.downcast_ref::<Classified>().map(|c| c.class) else { return };
    let (Some(env), Some(rank)) = (env, rank) else { return };
    let Some(dir) = env.run_dir else { return };
    let rec = FailureRecord::now(rank, env.attempt, FailureKind::Error, format!("{e:#}")).with_class(class);
    if let Err(w) = RunDir::open(&dir).with_attempt(env.attempt).write_failure(&rec) {
        eprintln!("gang-rank: rank {rank}: could not record the failure in {}: {w}", dir.display());
    }
}

fn run() -> Result<()> {
    // `--local N` may come first; the rest is the job's command line.
    let (config, args) = Config::from_args(std::env::args().skip(1)).map_err(usage)?;
    let cli = match Cli::try_parse_from(std::iter::once("gang-rank".to_string()).chain(args)) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        // The launcher checks the options before any rank starts: this is a rank program
        // started by other means (`gang run -- gang-rank ...`). Its first line says it all.
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            return Err(usage(anyhow::anyhow!("{first} (see `gang <job> --help`)")));
        }
    };
    use gang_jobs::Job;
    match cli.command {
        Command::Job(job) => match *job {
            Job::Hello(_) => jobs::hello(config),
            Job::Selftest(a) => jobs::selftest(config, &a),
            Job::Gen(a) => jobs::gen(config, &a),
            Job::Stats(a) => jobs::stats(config, &a),
            Job::Standardize(a) => jobs::standardize(config, &a),
            Job::Convert(a) => jobs::convert(config, &a),
            Job::Train(a) => jobs::train(config, &a),
            Job::Predict(a) => jobs::predict(config, &a),
        },
        Command::Ckpt(c) => jobs::ckpt(&c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every job the launcher offers (gang-jobs' list) is one gang-rank runs, and
    /// gang-rank runs no job the launcher does not offer (besides `ckpt`, run without a gang).
    #[test]
    fn jobs_agree_with_the_launchers_list() {
        Cli::command().debug_assert();
        let ours: Vec<String> =
            Cli::command().get_subcommands().map(|s| s.get_name().to_string()).filter(|n| n != "ckpt").collect();
        assert_eq!(ours, gang_jobs::names());
        // Every job parses here as it does in the launcher (the `match` in `run` is
        // exhaustive, so each has its rank-side function).
        for name in gang_jobs::names() {
            let job = gang_jobs::Job::augment_subcommands(clap::Command::new("x"));
            let sub = job.find_subcommand(&name).unwrap();
            let mut args = vec!["gang-rank".to_string(), name.clone()];
            for a in sub.get_arguments().filter(|a| a.is_required_set()) {
                args.push(format!("--{}=1", a.get_long().unwrap()));
            }
            let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(matches!(cli.command, Command::Job(ref j) if j.name() == name));
        }
    }
}
