//! The command line and environment that start a gang: a pure function from [`PlanInput`]
//! (plain data gathered by `detect` and `run`) to a [`LaunchPlan`].
//!
//! Every rank slot runs the per-rank supervisor (`gang __rank-supervisor -- PROGRAM ...`),
//! never the user program directly, so start and exit of each rank are recorded and the
//! program dies with its supervisor.

use anyhow::{bail, Result};
use gang_protocol::vars;
use serde::Serialize;
use std::ffi::OsString;
use std::path::PathBuf;

/// The program that starts the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LauncherKind {
    /// `mpirun` of Open MPI or MPICH (hydra).
    Mpirun,
    /// Slurm's `srun`, inside an allocation.
    Srun,
}

impl LauncherKind {
    /// The value of `GANG_LAUNCHER` and the program name.
    pub fn as_str(self) -> &'static str {
        match self {
            LauncherKind::Mpirun => "mpirun",
            LauncherKind::Srun => "srun",
        }
    }
}

/// The MPI implementation the ranks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MpiFlavour {
    /// Open MPI.
    #[serde(rename = "openmpi")]
    OpenMpi,
    /// MPICH (and its hydra process manager).
    #[serde(rename = "mpich")]
    Mpich,
}

impl MpiFlavour {
    /// The value of `GANG_MPI`.
    pub fn as_str(self) -> &'static str {
        match self {
            MpiFlavour::OpenMpi => "openmpi",
            MpiFlavour::Mpich => "mpich",
        }
    }
}

/// The `GANG_*` variables every rank gets (see [`gang_protocol::vars`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RankEnv {
    /// `GANG_RUN_ID`.
    pub run_id: String,
    /// `GANG_RUN_DIR`, absolute.
    pub run_dir: PathBuf,
    /// `GANG_WORLD_SIZE`.
    pub world_size: usize,
    /// `GANG_ATTEMPT`.
    pub attempt: u32,
    /// `GANG_LAUNCHER`.
    pub launcher: LauncherKind,
    /// `GANG_MPI`.
    pub flavour: MpiFlavour,
    /// `GANG_HEARTBEAT`: the heartbeat address, empty for none.
    pub heartbeat: String,
    /// `GANG_TOKEN`: the run's heartbeat token.
    pub token: String,
}

impl RankEnv {
    /// The variables as (name, value) pairs, one for each name of [`vars::ALL`].
    pub fn pairs(&self) -> Vec<(String, OsString)> {
        vars::ALL
            .iter()
            .map(|&name| {
                let value: OsString = match name {
                    vars::RUN_ID => self.run_id.clone().into(),
                    vars::RUN_DIR => self.run_dir.clone().into(),
                    vars::WORLD_SIZE => self.world_size.to_string().into(),
                    vars::ATTEMPT => self.attempt.to_string().into(),
                    vars::LAUNCHER => self.launcher.as_str().into(),
                    vars::MPI_FLAVOUR => self.flavour.as_str().into(),
                    vars::HEARTBEAT => self.heartbeat.clone().into(),
                    vars::TOKEN => self.token.clone().into(),
                    other => unreachable!("gang_protocol::vars::ALL gained {other}: set it here"),
                };
                (name.to_string(), value)
            })
            .collect()
    }
}

/// Everything the launch command depends on, gathered beforehand.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// Which launcher.
    pub launcher: LauncherKind,
    /// Its absolute path.
    pub launcher_path: PathBuf,
    /// The MPI flavour (decides Open MPI vs hydra flags and srun's `--mpi`).
    pub flavour: MpiFlavour,
    /// Number of ranks.
    pub ranks: usize,
    /// CPUs available to the gang: the cores of this machine, or of the Slurm allocation.
    pub cpus: usize,
    /// Whether we run as root (Open MPI refuses to without a flag).
    pub is_root: bool,
    /// Hostfile for mpirun (absolute).
    pub hostfile: Option<PathBuf>,
    /// srun `--gpus-per-task`.
    pub gpus_per_task: Option<u32>,
    /// srun `--gpu-bind`.
    pub gpu_bind: Option<String>,
    /// Absolute path of the `gang` executable (it runs the supervisor in each slot).
    pub supervisor: PathBuf,
    /// Prefix each output line of a rank with `[rank R] `.
    pub tag_output: bool,
    /// Open MPI's `odls_base_sigkill_timeout`: seconds mpirun waits before it sends the
    /// ranks SIGTERM when it stops them, and again before SIGKILL.
    pub kill_grace: u32,
    /// Absolute path of the user program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The `GANG_*` variables.
    pub env: RankEnv,
    /// Further variables of the launcher's environment the ranks need on every node: the
    /// `GANG_*` settings the user set (`GANG_KERNELS`, `GANG_KEEP_BYTES`, `GANG_FAULT`, ...).
    /// Open MPI's mpirun passes other nodes only what `-x` names; hydra and srun pass the
    /// whole environment.
    pub forward: Vec<String>,
}

/// The command to spawn.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// `mpirun` or `srun` (absolute path).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables to set in its environment (it passes them on to the ranks).
    pub env: Vec<(String, OsString)>,
    /// The launcher prints its own words on stdout too, among the ranks' output (hydra's
    /// report of a failed rank): stdout must pass through [`crate::chatter::StdoutFilter`].
    pub chatter_on_stdout: bool,
    /// The launcher's exit code after a rank's `MPI_Abort` is the abort's error code (Open
    /// MPI); hydra's is the status of the ranks it then killed (9 for SIGKILL).
    pub exit_is_abort_code: bool,
}

/// Builds the launch command.
///
/// # Errors
/// A hostfile with srun (the Slurm allocation decides the hosts); GPU binding options of
/// srun with mpirun.
pub fn build(input: &PlanInput) -> Result<LaunchPlan> {
    let mut args: Vec<OsString> = Vec::new();
    if input.launcher == LauncherKind::Mpirun {
        if let Some(opt) =
            [input.gpus_per_task.map(|_| "--gpus-per-task"), input.gpu_bind.as_ref().map(|_| "--gpu-bind")]
                .into_iter()
                .flatten()
                .next()
        {
            bail!(
                "{opt} is an srun option: run inside a Slurm allocation (salloc, sbatch) with \
                 --launcher srun, or drop it (under mpirun a rank's GPU is its local rank among \
                 the visible ones)"
            );
        }
    }
    let (mut chatter_on_stdout, mut exit_is_abort_code) = (false, true);
    let oversubscribed = input.ranks > input.cpus;
    match (input.launcher, input.flavour) {
        (LauncherKind::Mpirun, MpiFlavour::OpenMpi) => {
            args.push("-n".into());
            args.push(input.ranks.to_string().into());
            if input.is_root {
                args.push("--allow-run-as-root".into());
            }
            // With a hostfile its slot counts decide; mpirun then says clearly when there
            // are too few, instead of us oversubscribing remote nodes behind the user's back.
            // When a rank dies, mpirun waits this many seconds (Open MPI's default: 1)
            // before it signals the others, and as long again before SIGKILL: a second
            // added to every failure-to-resume. gang's outputs and checkpoints are safe
            // against SIGKILL at any point (nothing is visible before its commit), so the
            // default is no grace (`--kill-grace`).
            args.push("--mca".into());
            args.push("odls_base_sigkill_timeout".into());
            args.push(input.kill_grace.to_string().into());
            if oversubscribed && input.hostfile.is_none() {
                args.push("--oversubscribe".into());
                // Busy-polling ranks sharing a core starve each other without this.
                args.push("--mca".into());
                args.push("mpi_yield_when_idle".into());
                args.push("1".into());
            }
            // Ranks are multi-threaded (prefetch, rayon kernels): with fewer ranks than cores,
            // give each rank its share of cores. Open MPI otherwise binds each of up to two
            // ranks to a single core and the others idle.
            let per_rank = input.cpus / input.ranks.max(1);
            if input.hostfile.is_none() && per_rank >= 2 {
                args.push("--map-by".into());
                args.push(format!("slot:PE={per_rank}").into());
            }
            if let Some(h) = &input.hostfile {
                args.push("--hostfile".into());
                args.push(h.into());
            }
            let extra = input.forward.iter().map(String::as_str).filter(|n| !vars::ALL.contains(n));
            for name in vars::ALL.iter().copied().chain(extra) {
                args.push("-x".into());
                args.push(name.into());
            }
        }
        (LauncherKind::Mpirun, MpiFlavour::Mpich) => {
            // Hydra forwards the whole environment and allows oversubscription by default;
            // it runs as root without a flag. It has nothing like Open MPI's
            // odls_base_sigkill_timeout: it passes a SIGTERM straight on to the ranks and
            // waits for them (gang's stop grace bounds that), and SIGKILLs the survivors of
            // a failed rank at once, exiting with their status (9), not the abort's code. It
            // reports a failed rank on stdout.
            chatter_on_stdout = true;
            exit_is_abort_code = false;
            args.push("-n".into());
            args.push(input.ranks.to_string().into());
            if let Some(h) = &input.hostfile {
                args.push("-f".into());
                args.push(h.into());
            }
        }
        (LauncherKind::Srun, flavour) => {
            if let Some(h) = &input.hostfile {
                bail!(
                    "--hostfile {} cannot be used with srun: the Slurm allocation decides the \
                     hosts; drop --hostfile, or use --launcher mpirun",
                    h.display()
                );
            }
            args.push("-n".into());
            args.push(input.ranks.to_string().into());
            args.push("--kill-on-bad-exit=1".into());
            args.push(
                match flavour {
                    MpiFlavour::OpenMpi => "--mpi=pmix",
                    MpiFlavour::Mpich => "--mpi=pmi2",
                }
                .into(),
            );
            if oversubscribed {
                // Without overcommit srun waits forever for CPUs that never come.
                args.push("-O".into());
            }
            if let Some(g) = input.gpus_per_task {
                args.push(format!("--gpus-per-task={g}").into());
            }
            if let Some(b) = &input.gpu_bind {
                args.push(format!("--gpu-bind={b}").into());
            }
        }
    }
    args.push(input.supervisor.clone().into());
    args.push("__rank-supervisor".into());
    if input.tag_output {
        args.push("--tag-output".into());
    }
    args.push("--".into());
    args.push(input.program.clone().into());
    args.extend(input.args.iter().cloned());
    Ok(LaunchPlan {
        program: input.launcher_path.clone(),
        args,
        env: input.env.pairs(),
        chatter_on_stdout,
        exit_is_abort_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(launcher: LauncherKind, flavour: MpiFlavour) -> PlanInput {
        PlanInput {
            launcher,
            launcher_path: PathBuf::from(format!("/usr/bin/{}", launcher.as_str())),
            flavour,
            ranks: 2,
            cpus: 2,
            is_root: false,
            hostfile: None,
            gpus_per_task: None,
            gpu_bind: None,
            supervisor: "/opt/gang/bin/gang".into(),
            tag_output: true,
            kill_grace: 0,
            program: "/bin/prog".into(),
            args: vec!["a b".into(), "--x".into()],
            env: RankEnv {
                run_id: "100-7".into(),
                run_dir: "/runs/100-7".into(),
                world_size: 2,
                attempt: 0,
                launcher,
                flavour,
                heartbeat: "unix:/runs/100-7/heartbeat.sock".into(),
                token: "t0k".into(),
            },
            forward: Vec::new(),
        }
    }

    fn argv(plan: &LaunchPlan) -> Vec<String> {
        plan.args.iter().map(|a| a.to_str().unwrap().to_string()).collect()
    }

    const TAIL: [&str; 7] =
        ["/opt/gang/bin/gang", "__rank-supervisor", "--tag-output", "--", "/bin/prog", "a b", "--x"];

    fn forward_flags() -> Vec<String> {
        vars::ALL.iter().flat_map(|v| ["-x".to_string(), v.to_string()]).collect()
    }

    #[test]
    fn open_mpi_passes_the_users_gang_settings_to_every_node() {
        let mut i = input(LauncherKind::Mpirun, MpiFlavour::OpenMpi);
        i.forward = vec!["GANG_KERNELS".into(), vars::TOKEN.into(), "GANG_KEEP_BYTES".into()];
        let args = argv(&build(&i).unwrap());
        let named: Vec<&str> = args.windows(2).filter(|w| w[0] == "-x").map(|w| w[1].as_str()).collect();
        let mut want: Vec<&str> = vars::ALL.to_vec();
        want.extend(["GANG_KERNELS", "GANG_KEEP_BYTES"]);
        assert_eq!(named, want, "each variable once, the gang's own first");
        // hydra passes the whole environment: nothing to name.
        let hydra = argv(
            &build(&PlanInput { forward: i.forward.clone(), ..input(LauncherKind::Mpirun, MpiFlavour::Mpich) })
                .unwrap(),
        );
        assert!(!hydra.iter().any(|a| a == "GANG_KERNELS"), "{hydra:?}");
    }

    #[test]
    fn open_mpi_plain() {
        let plan = build(&input(LauncherKind::Mpirun, MpiFlavour::OpenMpi)).unwrap();
        assert_eq!(plan.program, PathBuf::from("/usr/bin/mpirun"));
        let mut want: Vec<String> = ["-n", "2", "--mca", "odls_base_sigkill_timeout", "0"].map(String::from).to_vec();
        want.extend(forward_flags());
        want.extend(TAIL.map(String::from));
        assert_eq!(argv(&plan), want);
    }

    #[test]
    fn open_mpi_as_root_oversubscribed_untagged() {
        let mut i = input(LauncherKind::Mpirun, MpiFlavour::OpenMpi);
        i.is_root = true;
        i.ranks = 5;
        i.tag_output = false;
        let a = argv(&build(&i).unwrap());
        let mut want: Vec<String> = [
            "-n",
            "5",
            "--allow-run-as-root",
            "--mca",
            "odls_base_sigkill_timeout",
            "0",
            "--oversubscribe",
            "--mca",
            "mpi_yield_when_idle",
            "1",
        ]
        .map(String::from)
        .to_vec();
        want.extend(forward_flags());
        want.extend(["/opt/gang/bin/gang", "__rank-supervisor", "--", "/bin/prog", "a b", "--x"].map(String::from));
        assert_eq!(a, want);
    }

    #[test]
    fn open_mpi_with_hostfile_lets_the_hostfile_decide_slots() {
        let mut i = input(LauncherKind::Mpirun, MpiFlavour::OpenMpi);
        i.hostfile = Some("/etc/hosts.mpi".into());
        i.ranks = 8;
        let a = argv(&build(&i).unwrap());
        assert_eq!(&a[..7], ["-n", "8", "--mca", "odls_base_sigkill_timeout", "0", "--hostfile", "/etc/hosts.mpi"]);
        i.kill_grace = 5;
        let a = argv(&build(&i).unwrap());
        assert_eq!(&a[2..5], ["--mca", "odls_base_sigkill_timeout", "5"]);
        assert!(!a.contains(&"--oversubscribe".to_string()));
        assert!(!a.contains(&"--allow-run-as-root".to_string()));
    }

    #[test]
    fn fewer_ranks_than_cores_get_their_share_of_cores() {
        let mut i = input(LauncherKind::Mpirun, MpiFlavour::OpenMpi);
        i.ranks = 2;
        i.cpus = 8;
        let a = argv(&build(&i).unwrap());
        let at = a.iter().position(|x| x == "--map-by").expect("--map-by");
        assert_eq!(a[at + 1], "slot:PE=4");
        i.ranks = 8;
        assert!(!argv(&build(&i).unwrap()).contains(&"--map-by".to_string()));
    }

    #[test]
    fn exact_fit_is_not_oversubscribed() {
        let mut i = input(LauncherKind::Mpirun, MpiFlavour::OpenMpi);
        i.ranks = 2;
        i.cpus = 2;
        assert!(!argv(&build(&i).unwrap()).contains(&"--oversubscribe".to_string()));
    }

    #[test]
    fn mpich_hydra() {
        let mut i = input(LauncherKind::Mpirun, MpiFlavour::Mpich);
        i.is_root = true;
        i.ranks = 4;
        let mut want = vec!["-n".to_string(), "4".into()];
        want.extend(TAIL.map(String::from));
        let plan = build(&i).unwrap();
        assert_eq!(argv(&plan), want);
        assert!(plan.chatter_on_stdout, "hydra's report of a failed rank is on stdout");
        assert!(!plan.exit_is_abort_code, "hydra exits with the status of the ranks it killed");
        let open_mpi = build(&input(LauncherKind::Mpirun, MpiFlavour::OpenMpi)).unwrap();
        assert!(!open_mpi.chatter_on_stdout && open_mpi.exit_is_abort_code);
        i.hostfile = Some("/h".into());
        assert_eq!(&argv(&build(&i).unwrap())[..4], ["-n", "4", "-f", "/h"]);
    }

    #[test]
    fn srun_for_each_flavour_and_overcommit() {
        let i = input(LauncherKind::Srun, MpiFlavour::OpenMpi);
        let plan = build(&i).unwrap();
        assert_eq!(plan.program, PathBuf::from("/usr/bin/srun"));
        let mut want: Vec<String> = ["-n", "2", "--kill-on-bad-exit=1", "--mpi=pmix"].map(String::from).to_vec();
        want.extend(TAIL.map(String::from));
        assert_eq!(argv(&plan), want);

        let mut i = input(LauncherKind::Srun, MpiFlavour::Mpich);
        i.ranks = 4;
        i.is_root = true;
        let a = argv(&build(&i).unwrap());
        assert_eq!(&a[..5], ["-n", "4", "--kill-on-bad-exit=1", "--mpi=pmi2", "-O"]);
    }

    #[test]
    fn gpu_binding_goes_to_srun_and_is_refused_for_mpirun() {
        let mut i = input(LauncherKind::Srun, MpiFlavour::OpenMpi);
        i.gpus_per_task = Some(1);
        i.gpu_bind = Some("closest".into());
        let a = argv(&build(&i).unwrap());
        assert_eq!(
            &a[..6],
            ["-n", "2", "--kill-on-bad-exit=1", "--mpi=pmix", "--gpus-per-task=1", "--gpu-bind=closest"]
        );
        let mut i = input(LauncherKind::Mpirun, MpiFlavour::OpenMpi);
        i.gpus_per_task = Some(1);
        let e = build(&i).unwrap_err().to_string();
        assert!(e.starts_with("--gpus-per-task is an srun option"), "{e}");
    }

    #[test]
    fn srun_refuses_a_hostfile() {
        let mut i = input(LauncherKind::Srun, MpiFlavour::OpenMpi);
        i.hostfile = Some("/h".into());
        let err = build(&i).unwrap_err().to_string();
        assert!(err.contains("cannot be used with srun"), "{err}");
    }

    #[test]
    fn every_protocol_variable_is_set() {
        let plan = build(&input(LauncherKind::Mpirun, MpiFlavour::Mpich)).unwrap();
        let get = |k: &str| plan.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.to_str().unwrap());
        assert_eq!(plan.env.len(), vars::ALL.len());
        assert_eq!(get(vars::RUN_ID), Some("100-7"));
        assert_eq!(get(vars::RUN_DIR), Some("/runs/100-7"));
        assert_eq!(get(vars::WORLD_SIZE), Some("2"));
        assert_eq!(get(vars::ATTEMPT), Some("0"));
        assert_eq!(get(vars::LAUNCHER), Some("mpirun"));
        assert_eq!(get(vars::MPI_FLAVOUR), Some("mpich"));
        assert_eq!(get(vars::HEARTBEAT), Some("unix:/runs/100-7/heartbeat.sock"));
        assert_eq!(get(vars::TOKEN), Some("t0k"));
        // The token travels in the environment, never on a command line.
        assert!(!argv(&plan).iter().any(|a| a.contains("t0k")));
    }
}
