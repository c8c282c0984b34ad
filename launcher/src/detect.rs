//! What this machine offers: which launcher to use, which MPI is installed, how many cores,
//! the Slurm allocation. Parsers are pure and take their inputs as arguments; the thin
//! `*_from_env` wrappers read the process environment.

use crate::plan::{LauncherKind, MpiFlavour};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `--launcher` choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LauncherChoice {
    /// `srun` inside a Slurm allocation, else `mpirun`.
    Auto,
    /// `mpirun` (Open MPI or MPICH).
    Mpirun,
    /// Slurm's `srun`.
    Srun,
}

/// The error for a machine without `mpirun`.
pub const NO_MPIRUN: &str = "no mpirun on PATH: install Open MPI (Debian/Ubuntu: apt-get install \
     openmpi-bin libopenmpi-dev) or MPICH (apt-get install mpich libmpich-dev), or load your \
     cluster's MPI module";

/// Whether `path` is a regular file with an execute bit set.
pub fn is_executable_file(path: &Path) -> bool {
    match path.metadata() {
        Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

/// Looks `name` up in the directories of `path_var` (a `PATH` value), as a shell would.
pub fn find_on_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| is_executable_file(p))
}

/// Looks `name` up in this process's `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    find_on_path(name, std::env::var_os("PATH").as_deref())
}

/// Picks the launcher from the choice, whether we are inside a Slurm allocation, and where
/// `srun` and `mpirun` are (if anywhere). Returns the launcher and its path.
///
/// # Errors
/// The chosen (or, for `auto`, any) launcher is not installed.
pub fn choose_launcher(
    choice: LauncherChoice,
    in_slurm_job: bool,
    srun: Option<PathBuf>,
    mpirun: Option<PathBuf>,
) -> Result<(LauncherKind, PathBuf)> {
    match choice {
        LauncherChoice::Auto => match (in_slurm_job, srun, mpirun) {
            (true, Some(srun), _) => Ok((LauncherKind::Srun, srun)),
            (_, _, Some(mpirun)) => Ok((LauncherKind::Mpirun, mpirun)),
            _ => bail!("{NO_MPIRUN}"),
        },
        LauncherChoice::Mpirun => match mpirun {
            Some(m) => Ok((LauncherKind::Mpirun, m)),
            None => bail!("{NO_MPIRUN}"),
        },
        LauncherChoice::Srun => match srun {
            Some(s) => Ok((LauncherKind::Srun, s)),
            None => bail!(
                "--launcher srun was asked for but there is no srun on PATH: run on a node with \
                 Slurm installed (inside salloc/sbatch), or use --launcher mpirun"
            ),
        },
    }
}

/// An installed MPI, as `mpirun --version` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MpiInstall {
    /// Open MPI or MPICH.
    pub flavour: MpiFlavour,
    /// The version number, e.g. `4.1.4`.
    pub version: String,
    /// The line it came from, e.g. `mpirun (Open MPI) 4.1.4`.
    pub version_line: String,
    /// The `mpirun` that was asked.
    pub mpirun: PathBuf,
}

/// Tells the MPI flavour and version from the output of `mpirun --version`.
///
/// Open MPI prints `mpirun (Open MPI) 4.1.4`; MPICH's hydra prints `HYDRA build details:`
/// followed by an indented `Version:  4.0.2` line.
pub fn parse_mpi_version(output: &str) -> Option<(MpiFlavour, String, String)> {
    let lines = || output.lines().map(str::trim).filter(|l| !l.is_empty());
    if let Some(line) = lines().find(|l| l.contains("Open MPI") || l.contains("OpenRTE")) {
        let version = line.rsplit(' ').next().unwrap_or("").to_string();
        return Some((MpiFlavour::OpenMpi, version, line.to_string()));
    }
    if output.contains("HYDRA") || output.contains("MPICH") {
        let line = lines().find(|l| l.starts_with("Version:")).or_else(|| lines().next())?;
        let version = line.strip_prefix("Version:").unwrap_or("").trim().to_string();
        let version_line =
            if line.starts_with("Version:") { format!("MPICH (hydra) {version}") } else { line.to_string() };
        return Some((MpiFlavour::Mpich, version, version_line));
    }
    None
}

/// Runs `mpirun --version` and parses it.
///
/// # Errors
/// mpirun cannot be run, or prints something that is neither Open MPI nor MPICH.
pub fn probe_mpi(mpirun: &Path) -> Result<MpiInstall> {
    let out = Command::new(mpirun)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{} --version`", mpirun.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    match parse_mpi_version(&text) {
        Some((flavour, version, version_line)) => {
            Ok(MpiInstall { flavour, version, version_line, mpirun: mpirun.to_path_buf() })
        }
        None => bail!(
            "could not tell which MPI `{} --version` belongs to (it printed: {:?}); gang \
             supports Open MPI and MPICH: put one of their mpirun first on PATH",
            mpirun.display(),
            text.lines().next().unwrap_or("")
        ),
    }
}

/// Number of cores to plan for: `SLURM_CPUS_ON_NODE` inside an allocation, else what this
/// process may use.
pub fn cores(slurm_cpus_on_node: Option<&str>) -> usize {
    slurm_cpus_on_node
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Total CPUs of `SLURM_JOB_CPUS_PER_NODE`, a list like `2(x3),1` (three nodes with 2 CPUs,
/// one with 1).
pub fn parse_cpus_per_node(value: &str) -> Option<usize> {
    let mut total = 0usize;
    for item in value.split(',') {
        let item = item.trim();
        let (cpus, times) = match item.split_once("(x") {
            Some((c, rest)) => (c, rest.strip_suffix(')')?),
            None => (item, "1"),
        };
        total += cpus.trim().parse::<usize>().ok()? * times.trim().parse::<usize>().ok()?;
    }
    Some(total)
}

/// The Slurm allocation this process runs in, from the `SLURM_*` variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlurmAllocation {
    /// `SLURM_JOB_ID`.
    pub job_id: String,
    /// `SLURM_NTASKS`.
    pub ntasks: Option<usize>,
    /// `SLURM_JOB_NUM_NODES`.
    pub num_nodes: Option<usize>,
    /// `SLURM_JOB_NODELIST`.
    pub nodelist: Option<String>,
    /// `SLURM_CPUS_ON_NODE`.
    pub cpus_on_node: Option<usize>,
    /// `SLURM_JOB_CPUS_PER_NODE`, raw.
    pub cpus_per_node: Option<String>,
}

impl SlurmAllocation {
    /// Reads the allocation through `get` (a variable lookup); `None` outside a Slurm job.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<SlurmAllocation> {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse().ok());
        Some(SlurmAllocation {
            job_id: get("SLURM_JOB_ID").filter(|v| !v.is_empty())?,
            ntasks: num("SLURM_NTASKS"),
            num_nodes: num("SLURM_JOB_NUM_NODES"),
            nodelist: get("SLURM_JOB_NODELIST"),
            cpus_on_node: num("SLURM_CPUS_ON_NODE"),
            cpus_per_node: get("SLURM_JOB_CPUS_PER_NODE"),
        })
    }

    /// Reads the allocation from this process's environment.
    pub fn from_env() -> Option<SlurmAllocation> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// CPUs of the whole allocation: `SLURM_JOB_CPUS_PER_NODE` summed, else CPUs on this
    /// node times the node count.
    pub fn cpus(&self) -> Option<usize> {
        self.cpus_per_node
            .as_deref()
            .and_then(parse_cpus_per_node)
            .or_else(|| Some(self.cpus_on_node? * self.num_nodes.unwrap_or(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const OPEN_MPI: &str = "mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n";
    const HYDRA: &str = "HYDRA build details:\n    Version:                                 4.0.2\n    \
         Release Date:                            Thu Apr  2 17:04:20 CDT 2020\n    CC: gcc\n";

    #[test]
    fn reads_open_mpi_version() {
        let (f, v, line) = parse_mpi_version(OPEN_MPI).unwrap();
        assert_eq!(f, MpiFlavour::OpenMpi);
        assert_eq!(v, "4.1.4");
        assert_eq!(line, "mpirun (Open MPI) 4.1.4");
    }

    #[test]
    fn reads_mpich_hydra_version() {
        let (f, v, line) = parse_mpi_version(HYDRA).unwrap();
        assert_eq!(f, MpiFlavour::Mpich);
        assert_eq!(v, "4.0.2");
        assert_eq!(line, "MPICH (hydra) 4.0.2");
    }

    #[test]
    fn unknown_mpirun_is_not_guessed() {
        assert_eq!(parse_mpi_version("Intel(R) MPI Library for Linux* OS, Version 2021.6"), None);
        assert_eq!(parse_mpi_version(""), None);
    }

    #[test]
    fn auto_prefers_srun_inside_an_allocation_only() {
        let srun = Some(PathBuf::from("/s/srun"));
        let mpirun = Some(PathBuf::from("/m/mpirun"));
        let pick = |in_job, s: &Option<PathBuf>, m: &Option<PathBuf>| {
            choose_launcher(LauncherChoice::Auto, in_job, s.clone(), m.clone()).map(|(k, _)| k).ok()
        };
        assert_eq!(pick(true, &srun, &mpirun), Some(LauncherKind::Srun));
        assert_eq!(pick(false, &srun, &mpirun), Some(LauncherKind::Mpirun));
        assert_eq!(pick(true, &None, &mpirun), Some(LauncherKind::Mpirun));
        let err = choose_launcher(LauncherChoice::Auto, false, srun, None).unwrap_err().to_string();
        assert!(err.starts_with("no mpirun on PATH: install Open MPI"), "{err}");
        let err = choose_launcher(LauncherChoice::Srun, true, None, mpirun).unwrap_err().to_string();
        assert!(err.contains("no srun on PATH"), "{err}");
    }

    #[test]
    fn path_lookup_skips_non_executables() {
        let dir = std::env::temp_dir().join(format!("gang-detect-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("tool");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([dir.as_path(), Path::new("/bin")]).unwrap();
        assert_eq!(find_on_path("tool", Some(&path)), None);
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_on_path("tool", Some(&path)), Some(plain));
        assert_eq!(find_on_path("tool", None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cores_prefer_the_allocation() {
        assert_eq!(cores(Some("3")), 3);
        assert!(cores(None) >= 1);
        assert_eq!(cores(Some("bogus")), cores(None));
    }

    #[test]
    fn slurm_cpu_lists() {
        assert_eq!(parse_cpus_per_node("2(x3),1"), Some(7));
        assert_eq!(parse_cpus_per_node("4"), Some(4));
        assert_eq!(parse_cpus_per_node("x"), None);
    }

    #[test]
    fn slurm_allocation_from_variables() {
        let vars: HashMap<&str, &str> =
            [("SLURM_JOB_ID", "42"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_NUM_NODES", "2"), ("SLURM_CPUS_ON_NODE", "2")]
                .into();
        let get = |k: &str| vars.get(k).map(|v| v.to_string());
        let a = SlurmAllocation::from_lookup(get).unwrap();
        assert_eq!((a.job_id.as_str(), a.ntasks, a.num_nodes), ("42", Some(4), Some(2)));
        assert_eq!(a.cpus(), Some(4));
        assert_eq!(SlurmAllocation::from_lookup(|_| None), None);
    }
}
