//! The built-in jobs: `gang <job> [-n N] ...` runs the rank-side program `gang-rank <job>
//! ...` as a gang (the launcher never links MPI; `gang-rank` does).
//!
//! The jobs and their options are defined once, in the `gang-jobs` crate: `gang <job>
//! --help` lists them beside the launch options, which may come in any order with them; a
//! bad or missing option, or an input that does not exist, is refused before any rank
//! starts (no run directory, no mpirun); the ranks get the options given, as
//! `--name=value`. Adding a job is its definition in `gang-jobs` and its rank-side function
//! in `gang-rank`; nothing here.

use crate::detect;
use crate::run::{self, LaunchOptions};
use anyhow::{bail, Result};
use clap::{ArgMatches, Args, FromArgMatches, Subcommand};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A built-in job with its launch options, as `gang <job> ...` was given.
#[derive(Debug)]
pub struct JobCommand {
    /// The job and its options.
    pub job: gang_jobs::Job,
    /// How to launch it.
    pub launch: LaunchOptions,
    /// The job's options as given, for `gang-rank <job>`.
    pub rank_args: Vec<OsString>,
}

/// Heading of the launch options in `gang <job> --help` (the job's own come first).
const LAUNCH_HEADING: &str = "Launch options";

impl FromArgMatches for JobCommand {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let job = gang_jobs::Job::from_arg_matches(m)?;
        let (name, sub) = m.subcommand().ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingSubcommand))?;
        let launch = LaunchOptions::from_arg_matches(sub)?;
        let rank_args = gang_jobs::rank_args(name, sub)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidSubcommand, e))?;
        // What only the file system can tell, before any rank starts.
        let cwd = std::env::current_dir().map_err(|e| clap::Error::raw(clap::error::ErrorKind::Io, e))?;
        if let Err(e) = job.validate(&cwd) {
            let mut cmd = crate::command();
            cmd.build();
            let sub = cmd.find_subcommand_mut(name).expect("a job has its subcommand");
            return Err(sub.error(clap::error::ErrorKind::ValueValidation, e));
        }
        Ok(JobCommand { job, launch, rank_args })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = JobCommand::from_arg_matches(m)?;
        Ok(())
    }
}

impl Subcommand for JobCommand {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        let mut cmd = gang_jobs::Job::augment_subcommands(cmd);
        for name in gang_jobs::names() {
            cmd = cmd.mut_subcommand(name, |sub| {
                // The job's description stays its own (augmenting would put LaunchOptions' there).
                let (about, long_about) = (sub.get_about().cloned(), sub.get_long_about().cloned());
                let mut sub = LaunchOptions::augment_args(sub.next_help_heading(LAUNCH_HEADING));
                if let Some(a) = about {
                    sub = sub.about(a);
                }
                if let Some(a) = long_about {
                    sub = sub.long_about(a);
                }
                sub
            });
        }
        cmd
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        JobCommand::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        gang_jobs::Job::has_subcommand(name)
    }
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
pub fn run_job(job: &JobCommand) -> Result<i32> {
    let rank_program = locate_rank_program()?;
    let mut command: Vec<OsString> = vec![rank_program.into(), job.job.name().into()];
    command.extend(job.rank_args.iter().cloned());
    run::run(&job.launch, &command, job.job.uses_gpus())
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
