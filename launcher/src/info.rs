//! `gang info`: what a gang started here would get: MPI, launcher, Slurm allocation, cores,
//! GPUs and the rank-to-device plan. Works (and says so) without MPI or Slurm.

use crate::detect::{self, LauncherChoice, MpiInstall, SlurmAllocation};
use anyhow::Result;
use gang_protocol::device::{device_for, parse_cuda_visible_devices, Device};
use serde::Serialize;
use std::fmt::Write as _;

/// Arguments of `gang info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Plan for this many ranks [default: what a CPU job gets: SLURM_NTASKS, else one per
    /// core].
    #[arg(short = 'n', long = "ranks", value_name = "N")]
    pub ranks: Option<usize>,
    /// The mpirun (or mpiexec) to report on, a path or a name on PATH [default:
    /// $GANG_MPIRUN, else mpirun on PATH].
    #[arg(long, value_name = "PATH")]
    pub mpirun: Option<std::path::PathBuf>,
}

/// Where one rank runs and which device it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankPlacement {
    /// World rank.
    pub rank: usize,
    /// Index of its node in the allocation (block distribution).
    pub node: usize,
    /// Rank among the ranks of its node.
    pub local_rank: usize,
    /// Its device.
    pub device: Device,
    /// The device as text, e.g. `cuda:1` or `cpu`.
    pub device_name: String,
}

/// Block distribution of `ranks` over `nodes` (ceil(ranks/nodes) per node), each rank's
/// device chosen from the `visible` devices by its local rank.
pub fn placements(ranks: usize, nodes: usize, visible: &[String]) -> Vec<RankPlacement> {
    let per_node = ranks.div_ceil(nodes.max(1)).max(1);
    (0..ranks)
        .map(|rank| {
            let (node, local_rank) = (rank / per_node, rank % per_node);
            let device = device_for(local_rank, visible);
            RankPlacement { rank, node, local_rank, device_name: device.to_string(), device }
        })
        .collect()
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct InfoReport {
    /// The MPI behind `mpirun` on PATH, if any.
    pub mpi: Option<MpiInstall>,
    /// Why there is no `mpi`, or other trouble with it.
    pub mpi_note: Option<String>,
    /// The launcher `--launcher auto` would pick (`mpirun`/`srun`), if any.
    pub launcher: Option<String>,
    /// Why there is no launcher.
    pub launcher_note: Option<String>,
    /// The Slurm allocation we are in, if any.
    pub slurm: Option<SlurmAllocation>,
    /// Cores available (this machine, or this node of the allocation).
    pub cores: usize,
    /// `CUDA_VISIBLE_DEVICES` as set, or `None` when unset.
    pub cuda_visible_devices: Option<String>,
    /// The visible GPUs parsed from it.
    pub gpus: Vec<String>,
    /// Number of ranks planned for.
    pub ranks: usize,
    /// Number of nodes planned over.
    pub nodes: usize,
    /// Placement of every rank.
    pub plan: Vec<RankPlacement>,
}

/// Gathers the report from this machine and process environment; `mpirun` is the
/// `--mpirun` option.
pub fn gather(ranks: Option<usize>, mpirun: Option<&std::path::Path>) -> InfoReport {
    let slurm = SlurmAllocation::from_env();
    let mpirun = detect::resolve_mpirun(
        mpirun.map(|p| p.as_os_str()),
        std::env::var_os(detect::MPIRUN_VAR),
        std::env::var_os("PATH").as_deref(),
    );
    let (mpi, mpi_note) = match &mpirun {
        Err(e) => (None, Some(format!("{e:#}"))),
        Ok(None) => (None, Some(format!("no MPI found: {}", detect::NO_MPIRUN))),
        Ok(Some(m)) => match detect::probe_mpi(m) {
            Ok(install) => (Some(install), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        },
    };
    let mpirun = mpirun.ok().flatten();
    let (launcher, launcher_note) =
        match detect::choose_launcher(LauncherChoice::Auto, slurm.is_some(), detect::which("srun"), mpirun) {
            Ok((kind, path)) => (Some(format!("{} ({})", kind.as_str(), path.display())), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
    let cores = detect::cores(slurm.as_ref().and_then(|s| s.cpus_on_node).map(|n| n.to_string()).as_deref());
    let cuda_visible_devices = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let gpus = parse_cuda_visible_devices(cuda_visible_devices.as_deref());
    // The count a CPU job would get (see `ranks::choose`).
    let ranks = crate::ranks::choose(ranks, slurm.as_ref().and_then(|s| s.ntasks), false, 0, cores).ranks;
    let nodes = slurm.as_ref().and_then(|s| s.num_nodes).filter(|&n| n > 1).unwrap_or(1);
    let plan = placements(ranks, nodes, &gpus);
    InfoReport { mpi, mpi_note, launcher, launcher_note, slurm, cores, cuda_visible_devices, gpus, ranks, nodes, plan }
}

/// The report as a human-readable table.
pub fn render(r: &InfoReport) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(s, "{k:<10} {v}");
    };
    match (&r.mpi, &r.mpi_note) {
        (Some(m), _) => {
            line("MPI", &format!("{} {} ({}: {})", m.flavour.as_str(), m.version, m.mpirun.display(), m.version_line))
        }
        (None, Some(note)) => line("MPI", note),
        (None, None) => line("MPI", "unknown"),
    }
    line("launcher", r.launcher.as_deref().or(r.launcher_note.as_deref()).unwrap_or("none"));
    match &r.slurm {
        None => line("slurm", "not inside a Slurm allocation"),
        Some(a) => {
            let opt = |v: Option<usize>| v.map_or("?".to_string(), |n| n.to_string());
            line(
                "slurm",
                &format!(
                    "job {}: {} tasks on {} nodes ({}), {} CPUs on this node",
                    a.job_id,
                    opt(a.ntasks),
                    opt(a.num_nodes),
                    a.nodelist.as_deref().unwrap_or("?"),
                    opt(a.cpus_on_node)
                ),
            )
        }
    }
    line("cores", &r.cores.to_string());
    let gpus = match (&r.cuda_visible_devices, r.gpus.is_empty()) {
        (None, _) => "none: CUDA_VISIBLE_DEVICES is unset (ranks use the CPU)".to_string(),
        (Some(v), true) => format!("none: CUDA_VISIBLE_DEVICES={v:?} (ranks use the CPU)"),
        (Some(v), false) => format!("{} ({})", r.gpus.len(), v),
    };
    line("GPUs", &gpus);
    let _ = writeln!(s, "\nplan for {} ranks on {} node(s):", r.ranks, r.nodes);
    let _ = writeln!(s, "{:>6} {:>5} {:>11}  device", "rank", "node", "local_rank");
    for p in &r.plan {
        let _ = writeln!(s, "{:>6} {:>5} {:>11}  {}", p.rank, p.node, p.local_rank, p.device_name);
    }
    s
}

/// `gang info`.
///
/// # Errors
/// Only if the JSON cannot be produced.
pub fn info(args: &InfoArgs) -> Result<i32> {
    let report = gather(args.ranks, args.mpirun.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_local_rank_is_rank_and_devices_alternate() {
        let vis = parse_cuda_visible_devices(Some("0,1"));
        let p = placements(4, 1, &vis);
        assert_eq!(p.iter().map(|p| p.local_rank).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(
            p.iter().map(|p| p.device_name.as_str()).collect::<Vec<_>>(),
            ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
        );
    }

    #[test]
    fn block_distribution_over_nodes() {
        let p = placements(5, 2, &[]);
        assert_eq!(
            p.iter().map(|p| (p.node, p.local_rank)).collect::<Vec<_>>(),
            [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
        );
        assert!(p.iter().all(|p| p.device == Device::Cpu));
        assert!(placements(0, 3, &[]).is_empty());
    }

    #[test]
    fn table_mentions_missing_gpus() {
        let r = InfoReport {
            mpi: None,
            mpi_note: Some("no MPI found".into()),
            launcher: None,
            launcher_note: Some("no mpirun on PATH".into()),
            slurm: None,
            cores: 2,
            cuda_visible_devices: None,
            gpus: vec![],
            ranks: 2,
            nodes: 1,
            plan: placements(2, 1, &[]),
        };
        let t = render(&r);
        assert!(t.contains("CUDA_VISIBLE_DEVICES is unset"), "{t}");
        assert!(t.contains("no MPI found"), "{t}");
        assert!(t.contains("not inside a Slurm allocation"), "{t}");
    }
}
