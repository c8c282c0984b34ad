//! The built-in jobs: `gang <job> -n N ...` runs the rank-side program `gang-rank <job> ...`
//! as a gang (the launcher never links MPI; `gang-rank` does).
//!
//! Adding a job is one line in the [`builtin_jobs!`] list below (plus its doc line).

use crate::detect;
use crate::run::{self, LaunchOptions};
use anyhow::{bail, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Arguments shared by every built-in job.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// How to launch.
    #[command(flatten)]
    pub launch: LaunchOptions,
    /// The job's own options, passed to `gang-rank <job>` in every rank (launch options
    /// such as -n come first; `--` may separate them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., value_name = "JOB OPTIONS")]
    pub extra: Vec<OsString>,
}

/// Declares the [`Job`] subcommands: `Variant => "name"`, one per line.
macro_rules! builtin_jobs {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// A built-in job, run as `gang-rank <name> EXTRA...` in every rank.
        #[derive(Debug, clap::Subcommand)]
        pub enum Job {
            $($(#[$doc])* #[command(name = $name)] $variant(JobArgs),)+
        }

        impl Job {
            /// The job's name: its subcommand, and the first argument of `gang-rank`.
            pub fn name(&self) -> &'static str {
                match self { $(Job::$variant(_) => $name,)+ }
            }

            /// The job's arguments.
            pub fn args(&self) -> &JobArgs {
                match self { $(Job::$variant(a) => a,)+ }
            }
        }
    };
}

builtin_jobs! {
    /// Every rank says hello (rank, host, device): a check of the whole stack.
    Hello => "hello",
    /// Checks every collective on every rank (`--max-count N` splits buffers into N-element calls).
    Selftest => "selftest",
    /// A synthetic classification or regression dataset with a known true model (`--output DIR`).
    Gen => "gen",
    /// Count, mean, std, min, max and nulls of every numeric column (`--input SPEC`).
    Stats => "stats",
    /// Standardize the feature columns with the dataset's statistics (a map stage).
    Standardize => "standardize",
    /// Convert between Parquet, Arrow IPC and HDF5, re-partitioned into K files.
    Convert => "convert",
    /// Data-parallel training (`--input DATA --label y --model logistic --output model.safetensors`).
    Train => "train",
    /// Apply a trained model to a dataset (`--model M --input DATA --output DIR`).
    Predict => "predict",
}

/// Arguments of `gang ckpt`: passed to `gang-rank ckpt` as they are.
#[derive(Debug, clap::Args)]
pub struct CkptArgs {
    /// `ls DIR [--json]` or `verify DIR`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1.., value_name = "ls|verify DIR")]
    pub args: Vec<OsString>,
}

/// Runs `gang-rank ckpt ARGS` as one plain process (no launcher, no MPI world): inspecting
/// checkpoints needs no gang. Returns its exit code.
///
/// # Errors
/// `gang-rank` is missing or cannot be started.
pub fn run_local(a: &CkptArgs) -> Result<i32> {
    let rank_program = locate_rank_program()?;
    let status = std::process::Command::new(&rank_program)
        .arg("ckpt")
        .args(&a.args)
        .status()
        .map_err(|e| anyhow::anyhow!("could not start {}: {e}", rank_program.display()))?;
    Ok(status.code().unwrap_or(1))
}

/// Launch options come before the job's own (everything after the first job option is
/// the job's): a launch option found among the job's is a mistake worth a clear word before
/// any gang starts.
fn misplaced_launch_option(job: &str, extra: &[OsString]) -> Result<()> {
    use clap::Args;
    let launch = LaunchOptions::augment_args(clap::Command::new("launch"));
    let names: Vec<String> = launch
        .get_arguments()
        .flat_map(|a| a.get_long().map(|l| format!("--{l}")).into_iter().chain(a.get_short().map(|c| format!("-{c}"))))
        .collect();
    for (i, a) in extra.iter().enumerate() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        let flag = a.split('=').next().unwrap_or(&a);
        if i > 0 && names.iter().any(|n| n == flag) {
            bail!(
                "{flag} is an option of the launcher, not of the {job} job: put it before the job's options, \
                 e.g. `gang {job} -n 4 {flag} ... --input ...`"
            );
        }
    }
    Ok(())
}

/// Name of the rank-side program.
pub const RANK_PROGRAM: &str = "gang-rank";

/// Finds `gang-rank`: next to `exe`, else on `PATH`, else at `$GANG_RANK_BIN`.
///
/// # Errors
/// It is in none of these places.
pub fn find_rank_program(exe: &Path, from_path: Option<PathBuf>, from_env: Option<PathBuf>) -> Result<PathBuf> {
    let beside = exe.parent().map(|d| d.join(RANK_PROGRAM)).filter(|p| detect::is_executable_file(p));
    let env = from_env.filter(|p| detect::is_executable_file(p));
    match beside.or(from_path).or(env) {
        Some(p) => Ok(p),
        None => bail!(
            "the rank-side program {RANK_PROGRAM} was not found next to {} or on PATH; build it \
             with `cargo build --release` (it is part of the gang package), or point \
             GANG_RANK_BIN at it",
            exe.display()
        ),
    }
}

/// [`find_rank_program`] for this `gang` executable, `PATH` and `$GANG_RANK_BIN`.
fn locate_rank_program() -> Result<PathBuf> {
    find_rank_program(
        &std::env::current_exe()?,
        detect::which(RANK_PROGRAM),
        std::env::var_os("GANG_RANK_BIN").filter(|v| !v.is_empty()).map(PathBuf::from),
    )
}

/// Runs a built-in job as a gang; returns the exit code.
///
/// # Errors
/// `gang-rank` is missing, or the gang cannot start (see [`run::run`]).
pub fn run_job(job: &Job) -> Result<i32> {
    let rank_program = locate_rank_program()?;
    let args = job.args();
    misplaced_launch_option(job.name(), &args.extra)?;
    let mut command: Vec<OsString> = vec![rank_program.into(), job.name().into()];
    command.extend(args.extra.iter().cloned());
    run::run(&args.launch, &command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_rank_program_says_how_to_build_it() {
        let err = find_rank_program(Path::new("/nonexistent/bin/gang"), None, Some("/nonexistent/x".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gang-rank was not found next to /nonexistent/bin/gang or on PATH"), "{err}");
        assert!(err.contains("cargo build --release"), "{err}");
    }

    #[test]
    fn rank_program_from_path_or_env() {
        let sh = PathBuf::from("/bin/sh");
        let exe = Path::new("/nonexistent/gang");
        assert_eq!(find_rank_program(exe, Some(sh.clone()), None).unwrap(), sh);
        assert_eq!(find_rank_program(exe, None, Some(sh.clone())).unwrap(), sh);
    }
}
