//! `gang sbatch`: a Slurm batch script for a gang job, written (and, with `--submit`,
//! submitted with `sbatch`).
//!
//! The script asks Slurm for the allocation and runs `gang <command>` inside it, where
//! `gang` launches the ranks with `srun` (kill-on-bad-exit, the PMI of its MPI) and restarts
//! a failed gang within the same allocation. The gang command is checked here, with the
//! same parser `gang` itself uses, so a mistyped option fails now rather than in the queue.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Arguments of `gang sbatch`.
#[derive(Debug, clap::Args)]
pub struct SbatchArgs {
    /// Nodes to ask for (`#SBATCH --nodes`).
    #[arg(long, value_name = "N")]
    pub nodes: Option<u32>,
    /// Tasks, one per rank (`#SBATCH --ntasks`); inside the allocation `gang` starts this
    /// many ranks unless the command gives -n.
    #[arg(long, value_name = "N")]
    pub ntasks: Option<u32>,
    /// Tasks per node (`#SBATCH --ntasks-per-node`).
    #[arg(long, value_name = "N")]
    pub ntasks_per_node: Option<u32>,
    /// CPUs per task (`#SBATCH --cpus-per-task`).
    #[arg(long, value_name = "N")]
    pub cpus_per_task: Option<u32>,
    /// GPUs per task (`#SBATCH --gpus-per-task`): each rank is bound to its own GPU.
    #[arg(long, value_name = "N")]
    pub gpus_per_task: Option<u32>,
    /// Time limit, in any form sbatch takes (`#SBATCH --time`, e.g. `1:00:00`).
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// Partition (`#SBATCH --partition`).
    #[arg(long, value_name = "NAME")]
    pub partition: Option<String>,
    /// Account to charge (`#SBATCH --account`).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Job name (`#SBATCH --job-name`) [default: gang-<job>].
    #[arg(long, value_name = "NAME")]
    pub job_name: Option<String>,
    /// The job's output file (`#SBATCH --output`) [default: sbatch's, slurm-<id>.out].
    #[arg(long, value_name = "FILE")]
    pub output: Option<String>,
    /// Any other sbatch option, as one word (`--sbatch-arg=--exclusive`); repeatable.
    #[arg(long, value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
    /// Write the script to FILE [default: standard output, or, with --submit,
    /// `<job name>.sbatch` in the current directory].
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Submit the script with `sbatch` and print the job id.
    #[arg(long)]
    pub submit: bool,
    /// The gang command the job runs, without the leading `gang` (after `--`), e.g.
    /// `-- train --data d/ --model linear` or `-- run -- ./my-program`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Writes (and maybe submits) the script. Returns the exit code.
///
/// # Errors
/// A command `gang` would refuse, a script that cannot be written, no `sbatch`, or
/// `sbatch` refusing the script.
pub fn sbatch(args: &SbatchArgs) -> Result<i32> {
    let words: Vec<String> = args
        .command
        .iter()
        .map(|w| w.to_str().map(str::to_string).context("the command must be valid UTF-8"))
        .collect::<Result<_>>()?;
    check_command(&words)?;
    let gang = std::env::current_exe().context("could not find the gang executable itself")?;
    let text = script(args, &gang, &words);
    let name = job_name(args, &words);
    let path = match (&args.script, args.submit) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(PathBuf::from(format!("{name}.sbatch"))),
        (None, false) => None,
    };
    let Some(path) = path else {
        std::io::stdout().write_all(text.as_bytes())?;
        return Ok(0);
    };
    write_script(&path, &text)?;
    eprintln!("gang: wrote {}", path.display());
    if !args.submit {
        return Ok(0);
    }
    let sbatch = crate::detect::which("sbatch").context(
        "--submit needs sbatch on PATH: run on a Slurm login node (or submit the script later with `sbatch FILE`)",
    )?;
    let out = Command::new(&sbatch)
        .arg("--parsable")
        .arg(&path)
        .output()
        .with_context(|| format!("could not run {}", sbatch.display()))?;
    if !out.status.success() {
        bail!("sbatch refused {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_string();
    println!("{id}");
    eprintln!("gang: submitted batch job {id} ({})", path.display());
    Ok(0)
}

/// Refuses a command that `gang` would refuse (unknown job, bad option), with its message.
fn check_command(words: &[String]) -> Result<()> {
    match words.first().map(String::as_str) {
        Some("sbatch") => bail!("a batch job cannot run `gang sbatch` itself"),
        Some("__rank-supervisor") | None => bail!("give the gang command the job runs after --, e.g. -- train ..."),
        _ => {}
    }
    let argv = std::iter::once("gang".to_string()).chain(words.iter().cloned());
    if let Err(e) = crate::command().try_get_matches_from(argv) {
        bail!("the job's command `gang {}` would fail:\n{e}", words.join(" "));
    }
    Ok(())
}

fn job_name(args: &SbatchArgs, words: &[String]) -> String {
    args.job_name.clone().unwrap_or_else(|| format!("gang-{}", words.first().map_or("job", String::as_str)))
}

/// The batch script's text.
pub fn script(args: &SbatchArgs, gang: &Path, words: &[String]) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let mut directive = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            s.push_str(&format!("#SBATCH --{name}={v}\n"));
        }
    };
    directive("job-name", Some(job_name(args, words)));
    directive("nodes", args.nodes.map(|v| v.to_string()));
    directive("ntasks", args.ntasks.map(|v| v.to_string()));
    directive("ntasks-per-node", args.ntasks_per_node.map(|v| v.to_string()));
    directive("cpus-per-task", args.cpus_per_task.map(|v| v.to_string()));
    directive("gpus-per-task", args.gpus_per_task.map(|v| v.to_string()));
    directive("time", args.time.clone());
    directive("partition", args.partition.clone());
    directive("account", args.account.clone());
    directive("output", args.output.clone());
    for a in &args.sbatch_arg {
        s.push_str(&format!("#SBATCH {a}\n"));
    }
    s.push_str(
        "\n# Written by `gang sbatch`. Inside the allocation gang starts the ranks with srun\n\
         # (--kill-on-bad-exit, the PMI of its MPI), watches their heartbeats, and restarts a\n\
         # failed gang within this allocation when the command asks for restarts\n\
         # (--max-restarts). Its exit code is the failing rank's own.\n\
         set -euo pipefail\n",
    );
    let command: Vec<String> = std::iter::once(gang.display().to_string()).chain(words.iter().cloned()).collect();
    s.push_str(&format!("exec {}\n", command.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")));
    s
}

/// `w` as one word for a POSIX shell.
fn quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+' | '@'));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Written whole or not at all: a half-written script must never reach the queue.
    let path = &std::env::current_dir()?.join(path);
    gang_protocol::durable::write_file(path, text.as_bytes())
        .with_context(|| format!("could not write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("could not make {} executable", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SbatchArgs,
    }

    fn args(argv: &[&str]) -> SbatchArgs {
        Cli::try_parse_from(std::iter::once("sbatch").chain(argv.iter().copied())).unwrap().args
    }

    #[test]
    fn the_script_asks_for_the_allocation_and_execs_gang_with_quoted_words() {
        let a = args(&["--nodes", "2", "--ntasks", "4", "--time", "0:10:00", "--sbatch-arg=--exclusive", "--", "run"]);
        let words: Vec<String> = ["run", "--max-restarts", "2", "--", "./sim", "it's here"].map(String::from).to_vec();
        let s = script(&a, Path::new("/opt/gang/bin/gang"), &words);
        assert_eq!(
            s.lines().filter(|l| l.starts_with("#SBATCH")).collect::<Vec<_>>(),
            [
                "#SBATCH --job-name=gang-run",
                "#SBATCH --nodes=2",
                "#SBATCH --ntasks=4",
                "#SBATCH --time=0:10:00",
                "#SBATCH --exclusive"
            ]
        );
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(s.ends_with("exec /opt/gang/bin/gang run --max-restarts 2 -- ./sim 'it'\\''s here'\n"), "{s}");
    }

    #[test]
    fn commands_gang_would_refuse_are_refused_before_submission() {
        assert!(check_command(&["hello".into()]).is_ok());
        assert!(check_command(&["run".into(), "--".into(), "true".into()]).is_ok());
        let e = check_command(&["run".into(), "--no-such-option".into()]).unwrap_err().to_string();
        assert!(e.contains("would fail") && e.contains("--no-such-option"), "{e}");
        assert!(check_command(&["sbatch".into()]).is_err());
        assert!(check_command(&["frobnicate".into()]).is_err());
    }
}
