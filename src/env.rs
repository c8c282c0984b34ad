//! What the launcher told this process: [`RankEnv`], read from the environment variables
//! of Open MPI, MPICH/Hydra, PMIx, Slurm, torchrun and the `gang` launcher.

use crate::error::{Error, Result};
use gang_protocol::device;
use gang_protocol::vars;
use std::path::PathBuf;

/// Which launcher's variables gave the rank and world size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LauncherKind {
    /// Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`).
    OpenMpi,
    /// A PMIx launcher such as `srun --mpi=pmix` (`PMIX_RANK`, sizes from Slurm).
    Pmix,
    /// MPICH's Hydra `mpiexec` (`PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`).
    Hydra,
    /// Slurm's `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NODEID`).
    Slurm,
    /// torchrun-style (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`).
    Torchrun,
    /// No launcher: a single process started by hand.
    None,
}

/// A rank's view of its launch, before MPI is asked. Plain data; see
/// [`RankEnv::from_vars`] for the precedence between launchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    /// Which launcher's variables were used.
    pub launcher: LauncherKind,
    /// World rank, if the launcher gave one.
    pub rank: Option<usize>,
    /// World size, if the launcher gave one.
    pub world_size: Option<usize>,
    /// Rank among the ranks on this node.
    pub local_rank: Option<usize>,
    /// Number of ranks on this node.
    pub local_size: Option<usize>,
    /// Index of this node in the job.
    pub node_index: Option<usize>,
    /// Batch job id (`SLURM_JOB_ID`).
    pub job_id: Option<String>,
    /// The variables `rank` and `world_size` came from, for error messages.
    pub source: (&'static str, &'static str),
    /// World size the `gang` launcher intended (`GANG_WORLD_SIZE`).
    pub intended_world_size: Option<usize>,
    /// The MPI the `gang` launcher started the ranks for (`GANG_MPI`: `openmpi`, `mpich`).
    pub intended_mpi: Option<String>,
    /// Run id from the `gang` launcher.
    pub run_id: Option<String>,
    /// Run directory from the `gang` launcher.
    pub run_dir: Option<PathBuf>,
    /// Attempt number (0 for the first launch).
    pub attempt: u32,
    /// Entries of `CUDA_VISIBLE_DEVICES`.
    pub visible_devices: Vec<String>,
}

struct Source {
    kind: LauncherKind,
    rank: &'static str,
    size: &'static str,
    local_rank: Option<&'static str>,
    local_size: Option<&'static str>,
    node: Option<&'static str>,
    /// Present only when this launcher really started the process.
    marker: &'static str,
}

/// In order of precedence: the launcher that started the process sets its own variables,
/// while Slurm's may be inherited from an allocation (mpirun inside sbatch), so MPI
/// launchers come first and Slurm counts only inside a job step.
const SOURCES: [Source; 5] = [
    Source {
        kind: LauncherKind::OpenMpi,
        rank: "OMPI_COMM_WORLD_RANK",
        size: "OMPI_COMM_WORLD_SIZE",
        local_rank: Some("OMPI_COMM_WORLD_LOCAL_RANK"),
        local_size: Some("OMPI_COMM_WORLD_LOCAL_SIZE"),
        node: None,
        marker: "OMPI_COMM_WORLD_RANK",
    },
    Source {
        kind: LauncherKind::Hydra,
        rank: "PMI_RANK",
        size: "PMI_SIZE",
        local_rank: Some("MPI_LOCALRANKID"),
        local_size: Some("MPI_LOCALNRANKS"),
        node: None,
        marker: "PMI_RANK",
    },
    Source {
        kind: LauncherKind::Slurm,
        rank: "SLURM_PROCID",
        size: "SLURM_NTASKS",
        local_rank: Some("SLURM_LOCALID"),
        local_size: None,
        node: Some("SLURM_NODEID"),
        marker: "SLURM_STEP_ID",
    },
    Source {
        kind: LauncherKind::Pmix,
        rank: "PMIX_RANK",
        size: "PMIX_SIZE",
        local_rank: None,
        local_size: None,
        node: None,
        marker: "PMIX_RANK",
    },
    Source {
        kind: LauncherKind::Torchrun,
        rank: "RANK",
        size: "WORLD_SIZE",
        local_rank: Some("LOCAL_RANK"),
        local_size: Some("LOCAL_WORLD_SIZE"),
        node: Some("GROUP_RANK"),
        marker: "RANK",
    },
];

impl RankEnv {
    /// Reads the process environment.
    ///
    /// # Errors
    /// As [`RankEnv::from_vars`].
    pub fn from_env() -> Result<RankEnv> {
        RankEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (tests pass a map).
    ///
    /// Precedence: Open MPI, Hydra, Slurm (inside a job step: `SLURM_STEP_ID` set), PMIx,
    /// torchrun. Within the chosen launcher the values must be consistent.
    ///
    /// # Errors
    /// [`Error::Environment`], naming the variables, when a value does not parse, a rank is
    /// not below its size, or the gang launcher's intended size is malformed.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<RankEnv> {
        let parse = |name: &'static str| -> Result<Option<usize>> {
            match get(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| Error::Environment(format!("{name}={v:?} is not a non-negative integer"))),
            }
        };
        let mut env = RankEnv {
            launcher: LauncherKind::None,
            rank: None,
            world_size: None,
            local_rank: None,
            local_size: None,
            node_index: None,
            job_id: get("SLURM_JOB_ID"),
            source: ("", ""),
            intended_world_size: parse(vars::WORLD_SIZE)?,
            intended_mpi: get(vars::MPI_FLAVOUR).filter(|v| !v.is_empty()),
            run_id: get(vars::RUN_ID),
            run_dir: get(vars::RUN_DIR).map(PathBuf::from),
            attempt: match get(vars::ATTEMPT) {
                None => 0,
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| Error::Environment(format!("{}={v:?} is not an attempt number", vars::ATTEMPT)))?,
            },
            visible_devices: device::parse_cuda_visible_devices(get("CUDA_VISIBLE_DEVICES").as_deref()),
        };
        if let Some(src) = SOURCES.iter().find(|s| get(s.marker).is_some()) {
            env.launcher = src.kind;
            env.source = (src.rank, src.size);
            env.rank = parse(src.rank)?;
            env.world_size = parse(src.size)?;
            if src.kind == LauncherKind::Pmix && env.world_size.is_none() {
                // srun --mpi=pmix: the size is Slurm's.
                env.world_size = parse("SLURM_NTASKS")?;
                env.source.1 = "SLURM_NTASKS";
            }
            env.local_rank = src.local_rank.map(parse).transpose()?.flatten();
            env.local_size = src.local_size.map(parse).transpose()?.flatten();
            env.node_index = src.node.map(parse).transpose()?.flatten();
            if let (Some(r), Some(n)) = (env.rank, env.world_size) {
                if r >= n {
                    return Err(Error::Environment(format!(
                        "{}={r} is not below {}={n}: the launcher's variables disagree",
                        src.rank, env.source.1
                    )));
                }
            }
            if let (Some(l), Some(n)) = (env.local_rank, env.local_size) {
                if l >= n {
                    return Err(Error::Environment(format!(
                        "{}={l} is not below {}={n}: the launcher's variables disagree",
                        src.local_rank.unwrap_or("local rank"),
                        src.local_size.unwrap_or("local size")
                    )));
                }
            }
            if let (Some(n), Some(intended)) = (env.world_size, env.intended_world_size) {
                if n != intended {
                    return Err(Error::Environment(format!(
                        "{}={n} but the gang launcher started {intended} ranks ({}={intended})",
                        env.source.1,
                        vars::WORLD_SIZE
                    )));
                }
            }
        }
        Ok(env)
    }

    /// Whether some launcher started this process as part of a gang (as opposed to a
    /// program started by hand).
    pub fn launched(&self) -> bool {
        self.launcher != LauncherKind::None || self.intended_world_size.is_some()
    }

    /// Checks the launcher's view against MPI's own rank and size; `library` is the MPI
    /// library's version (`MPI_Get_library_version`), named in the errors.
    ///
    /// # Errors
    /// [`Error::WorldSizeMismatch`] when MPI's size differs from the size the `gang`
    /// launcher started; [`Error::Environment`], naming the variables, for any other
    /// disagreement.
    pub fn check_against_mpi(&self, mpi_rank: usize, mpi_size: usize, library: &str) -> Result<()> {
        let (rank_var, size_var) = self.source;
        if let Some(intended) = self.intended_world_size {
            if intended != mpi_size {
                return Err(Error::WorldSizeMismatch {
                    mpi: mpi_size,
                    intended,
                    variable: vars::WORLD_SIZE,
                    library: library.to_string(),
                    launcher_mpi: self.launcher_mpi(),
                });
            }
        }
        if let Some(n) = self.world_size {
            if n != mpi_size {
                let mut msg = format!("MPI reports a world of {mpi_size} rank(s) but {size_var}={n}: ");
                let _ = write_mpi_mismatch(&mut msg, library, self.launcher_mpi().as_deref());
                return Err(Error::Environment(msg));
            }
        }
        if let Some(r) = self.rank {
            if r != mpi_rank {
                return Err(Error::Environment(format!(
                    "MPI says this is rank {mpi_rank} but {rank_var}={r}: the launcher and MPI \
                     disagree about rank order"
                )));
            }
        }
        Ok(())
    }

    /// The MPI the launcher's variables belong to, for messages: `GANG_MPI` where the
    /// `gang` launcher set it, else what the launcher's own variables show.
    fn launcher_mpi(&self) -> Option<String> {
        let size_var = self.source.1;
        let size = self.world_size.map_or(String::new(), |n| n.to_string());
        match (self.intended_mpi.as_deref(), self.launcher) {
            (Some("openmpi"), _) => Some(format!("gang's launcher for Open MPI ({}=openmpi)", vars::MPI_FLAVOUR)),
            (Some("mpich"), _) => Some(format!("gang's launcher for MPICH ({}=mpich)", vars::MPI_FLAVOUR)),
            (Some(other), _) => Some(format!("gang's launcher for {}={other}", vars::MPI_FLAVOUR)),
            (None, LauncherKind::OpenMpi) => Some(format!("Open MPI's mpirun ({size_var}={size})")),
            (None, LauncherKind::Hydra) => Some(format!("MPICH's mpiexec or another PMI launcher ({size_var}={size})")),
            (None, _) => None,
        }
    }
}

/// The second half of a world-size mismatch: which MPI the program runs with, which the
/// launcher was for, and what to do. `library` is `MPI_Get_library_version`'s first line.
pub(crate) fn write_mpi_mismatch(
    f: &mut impl std::fmt::Write,
    library: &str,
    launcher_mpi: Option<&str>,
) -> std::fmt::Result {
    // Open MPI's line goes on with its package and build: its name and version come first.
    let library = library.split(',').next().unwrap_or(library).trim();
    match launcher_mpi {
        Some(launcher) => write!(
            f,
            "this program runs with {library} but was started by {launcher}; \
             under another MPI's launcher every process is a world of its own"
        )?,
        None => write!(
            f,
            "this program runs with {library}, most likely not the MPI of the mpirun/srun that \
             started it (under another MPI's launcher every process is a world of its own)"
        )?,
    }
    write!(
        f,
        ". Start it with its own MPI's launcher (gang run --mpirun PATH, or GANG_MPIRUN=PATH) or \
         rebuild it against the launcher's MPI"
    )
}

/// Local rank, local size and node index of `rank`, derived from every rank's host name
/// (nodes numbered in order of their lowest rank).
pub(crate) fn placement_from_hosts(hosts: &[String], rank: usize) -> (usize, usize, usize) {
    let me = &hosts[rank];
    let local_rank = hosts[..rank].iter().filter(|h| *h == me).count();
    let local_size = hosts.iter().filter(|h| *h == me).count();
    let mut seen: Vec<&String> = Vec::new();
    for h in hosts {
        if !seen.contains(&h) {
            seen.push(h);
        }
    }
    let node_index = seen.iter().position(|h| *h == me).expect("own host is listed");
    (local_rank, local_size, node_index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<RankEnv> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RankEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn open_mpi_variables() {
        let e = env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("GANG_WORLD_SIZE", "4"),
            ("GANG_ATTEMPT", "2"),
            ("GANG_RUN_DIR", "/tmp/r"),
        ])
        .unwrap();
        assert_eq!(e.launcher, LauncherKind::OpenMpi);
        assert_eq!((e.rank, e.world_size, e.local_rank, e.local_size), (Some(3), Some(4), Some(1), Some(2)));
        assert_eq!(e.attempt, 2);
        assert_eq!(e.run_dir, Some(PathBuf::from("/tmp/r")));
        assert!(e.launched());
        e.check_against_mpi(3, 4, "Open MPI v4.1.4, package: x").unwrap();
    }

    #[test]
    fn hydra_variables() {
        let e =
            env(&[("PMI_RANK", "1"), ("PMI_SIZE", "2"), ("MPI_LOCALRANKID", "1"), ("MPI_LOCALNRANKS", "2")]).unwrap();
        assert_eq!(e.launcher, LauncherKind::Hydra);
        assert_eq!((e.rank, e.world_size, e.local_rank, e.local_size), (Some(1), Some(2), Some(1), Some(2)));
    }

    #[test]
    fn slurm_step_variables_and_job_id() {
        let e = env(&[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_ID", "1234"),
        ])
        .unwrap();
        assert_eq!(e.launcher, LauncherKind::Slurm);
        assert_eq!((e.rank, e.world_size, e.local_rank, e.node_index), (Some(5), Some(8), Some(1), Some(2)));
        assert_eq!(e.job_id.as_deref(), Some("1234"));
    }

    #[test]
    fn mpirun_inside_an_allocation_prefers_open_mpi_over_inherited_slurm_variables() {
        let e = env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_JOB_ID", "77"),
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
        ])
        .unwrap();
        assert_eq!(e.launcher, LauncherKind::OpenMpi);
        assert_eq!(e.world_size, Some(4));
        assert_eq!(e.job_id.as_deref(), Some("77"));
    }

    #[test]
    fn slurm_batch_script_without_a_step_is_not_a_launch() {
        let e = env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_ID", "9")]).unwrap();
        assert_eq!(e.launcher, LauncherKind::None);
        assert!(!e.launched());
        e.check_against_mpi(0, 1, "MPICH Version: 4.0.2").unwrap();
    }

    #[test]
    fn pmix_takes_its_size_from_slurm() {
        let e = env(&[("PMIX_RANK", "1"), ("SLURM_NTASKS", "2")]).unwrap();
        assert_eq!(e.launcher, LauncherKind::Pmix);
        assert_eq!((e.rank, e.world_size), (Some(1), Some(2)));
        assert_eq!(e.source, ("PMIX_RANK", "SLURM_NTASKS"));
    }

    #[test]
    fn torchrun_variables() {
        let e = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")]).unwrap();
        assert_eq!(e.launcher, LauncherKind::Torchrun);
        assert_eq!((e.rank, e.world_size, e.local_rank), (Some(1), Some(2), Some(1)));
    }

    #[test]
    fn no_launcher() {
        let e = env(&[]).unwrap();
        assert_eq!(e.launcher, LauncherKind::None);
        assert!(!e.launched());
        assert!(e.visible_devices.is_empty());
    }

    #[test]
    fn malformed_and_inconsistent_values_name_the_variables() {
        let e = env(&[("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("OMPI_COMM_WORLD_RANK=\"x\""), "{e}");
        let e = env(&[("PMI_RANK", "4"), ("PMI_SIZE", "4")]).unwrap_err().to_string();
        assert!(e.contains("PMI_RANK=4") && e.contains("PMI_SIZE=4"), "{e}");
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "2"), ("LOCAL_WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("LOCAL_RANK=2") && e.contains("LOCAL_WORLD_SIZE=2"), "{e}");
        let e = env(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2"), ("GANG_WORLD_SIZE", "4")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("OMPI_COMM_WORLD_SIZE=2") && e.contains("GANG_WORLD_SIZE=4"), "{e}");
    }

    const MPICH: &str = "MPICH Version: 4.0.2";
    const OPEN_MPI: &str = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022";

    #[test]
    fn disagreement_with_mpi_is_an_error_naming_the_variables() {
        // An MPICH build under Open MPI's mpirun: every process is a world of one.
        let e = env(&[("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "4")]).unwrap();
        let msg = e.check_against_mpi(0, 1, MPICH).unwrap_err().to_string();
        assert!(msg.contains("OMPI_COMM_WORLD_SIZE=4") && msg.contains("world of 1"), "{msg}");
        assert!(
            msg.contains("this program runs with MPICH Version: 4.0.2 but was started by Open MPI's mpirun (OMPI_COMM_WORLD_SIZE=4)"),
            "{msg}"
        );
        let msg = e.check_against_mpi(1, 4, MPICH).unwrap_err().to_string();
        assert!(msg.contains("OMPI_COMM_WORLD_RANK=2") && msg.contains("rank 1"), "{msg}");
        let g = env(&[("GANG_WORLD_SIZE", "4")]).unwrap();
        assert!(matches!(
            g.check_against_mpi(0, 1, MPICH),
            Err(Error::WorldSizeMismatch { mpi: 1, intended: 4, launcher_mpi: None, .. })
        ));
    }

    #[test]
    fn a_world_size_mismatch_names_both_mpis() {
        // An Open MPI build under hydra, started by `gang run`.
        let e = env(&[("PMI_RANK", "1"), ("PMI_SIZE", "2"), ("GANG_WORLD_SIZE", "2"), ("GANG_MPI", "mpich")]).unwrap();
        let msg = e.check_against_mpi(0, 1, OPEN_MPI).unwrap_err().to_string();
        assert!(
            msg.starts_with("MPI reports a world of 1 rank(s) but the launcher started 2 (GANG_WORLD_SIZE=2): "),
            "{msg}"
        );
        assert!(
            msg.contains(
                "this program runs with Open MPI v4.1.4 but was started by gang's launcher for MPICH (GANG_MPI=mpich)"
            ),
            "{msg}"
        );
        assert!(msg.contains("gang run --mpirun PATH"), "{msg}");
        // Without the gang launcher: hydra's own variables.
        let e = env(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")]).unwrap();
        let msg = e.check_against_mpi(0, 1, OPEN_MPI).unwrap_err().to_string();
        assert!(
            msg.contains("Open MPI v4.1.4 but was started by MPICH's mpiexec or another PMI launcher (PMI_SIZE=2)"),
            "{msg}"
        );
    }

    #[test]
    fn cuda_visible_devices_is_read() {
        // Which of them a rank uses: crate::gpu_bind::rank_device.
        let e = env(&[("CUDA_VISIBLE_DEVICES", "0,GPU-ab,x,3")]).unwrap();
        assert_eq!(e.visible_devices, vec!["0", "GPU-ab"]);
    }

    #[test]
    fn placement_from_host_names() {
        let hosts: Vec<String> = ["b", "a", "b", "a", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(placement_from_hosts(&hosts, 0), (0, 2, 0));
        assert_eq!(placement_from_hosts(&hosts, 2), (1, 2, 0));
        assert_eq!(placement_from_hosts(&hosts, 3), (1, 2, 1));
        assert_eq!(placement_from_hosts(&hosts, 4), (0, 1, 2));
    }
}
