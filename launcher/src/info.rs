//! `gang info`: what a gang started here would get: MPI, launcher, Slurm allocation, cores,
//! GPUs and the rank-to-device plan. Works (and says so) without MPI or Slurm.

use crate::detect::{self, LauncherChoice, MpiInstall, SlurmAllocation};
use anyhow::Result;
use gang_protocol::device::{self, match_visible, plan_node, Device, GpuInfo, VisibleDevices, VisibleGpu};
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
    /// A Spark GPU discovery script (prints `{"name": "gpu", "addresses": ["0", ...]}`):
    /// its addresses are the visible GPUs unless CUDA_VISIBLE_DEVICES is set.
    #[arg(long, value_name = "PATH")]
    pub gpu_discovery_script: Option<std::path::PathBuf>,
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
    /// The GPU's UUID, when NVML named it.
    pub uuid: Option<String>,
    /// The GPU's NUMA node, when known.
    pub numa_node: Option<u32>,
    /// The cores the rank is narrowed to (its GPU's), as a cpulist; `None` when unknown
    /// (the launcher's binding is kept).
    pub cpus: Option<String>,
    /// How the device was chosen.
    pub rule: device::BindRule,
    /// The other ranks of the node on the same GPU (more ranks than GPUs).
    pub shared_with: Vec<usize>,
}

/// Block distribution of `ranks` over `nodes` (ceil(ranks/nodes) per node), each rank's
/// device chosen from the `visible` GPUs by [`plan_node`]: with `per_task_bound` (srun
/// `--gpus-per-task=1`) each task sees only its own GPU, else its local rank picks one.
pub fn placements(ranks: usize, nodes: usize, visible: &[VisibleGpu], per_task_bound: bool) -> Vec<RankPlacement> {
    let per_node = ranks.div_ceil(nodes.max(1)).max(1);
    let mut out = Vec::with_capacity(ranks);
    for first in (0..ranks).step_by(per_node) {
        let node = first / per_node;
        for b in plan_node(per_node.min(ranks - first), visible, per_task_bound) {
            let gpu = b.gpu.as_ref().and_then(|g| g.gpu.as_ref());
            let cpus = gpu.filter(|g| !g.cpus.is_empty()).map(|g| device::format_cpulist(&g.cpus));
            out.push(RankPlacement {
                rank: first + b.local_rank,
                node,
                local_rank: b.local_rank,
                device_name: b.device.to_string(),
                uuid: b.uuid().map(str::to_string),
                numa_node: gpu.and_then(|g| g.numa_node),
                cpus,
                rule: b.rule,
                shared_with: b.shared_with.iter().map(|l| first + l).collect(),
                device: b.device,
            });
        }
    }
    out
}

/// Whether Slurm binds each task to its own GPU: `SLURM_GPUS_PER_TASK` of 1 (`1`, or
/// `h100:1` with a type).
pub fn per_task_bound(gpus_per_task: Option<&str>) -> bool {
    gpus_per_task.is_some_and(|v| v.rsplit(':').next().map(str::trim) == Some("1"))
}

/// What `gang info` says when NVML cannot be used.
fn nvml_note(e: &gang_gpu::Error) -> String {
    match e {
        gang_gpu::Error::LibraryMissing { .. } => {
            format!("no NVIDIA driver ({} not found)", gang_gpu::nvml::NVML_LIBRARY)
        }
        other => other.to_string(),
    }
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
    /// The ids of the visible GPUs, in CUDA ordinal order.
    pub gpus: Vec<String>,
    /// The visible list, where it came from, and what was ignored; `None` when it could
    /// not be read (see `visible_error`).
    pub visible: Option<VisibleDevices>,
    /// Why the visible list could not be read (a failing discovery script, a bad variable).
    pub visible_error: Option<String>,
    /// The visible GPUs with their CUDA ordinals and what NVML knows of them.
    pub visible_gpus: Vec<VisibleGpu>,
    /// Every GPU of the node, as NVML lists them (PCI order).
    pub nvml: Vec<GpuInfo>,
    /// Why NVML gave nothing (`no NVIDIA driver (libnvidia-ml.so.1 not found)`).
    pub nvml_note: Option<String>,
    /// Entries dropped while matching, ordering caveats.
    pub gpu_notes: Vec<String>,
    /// Whether Slurm binds each task to its own GPU (`SLURM_GPUS_PER_TASK=1`).
    pub per_task_bound: bool,
    /// Number of ranks planned for.
    pub ranks: usize,
    /// Number of nodes planned over.
    pub nodes: usize,
    /// Placement of every rank.
    pub plan: Vec<RankPlacement>,
}

/// Gathers the report from this machine and process environment; `mpirun` is the
/// `--mpirun` option, `script` the `--gpu-discovery-script` one.
pub fn gather(ranks: Option<usize>, mpirun: Option<&std::path::Path>, script: Option<&std::path::Path>) -> InfoReport {
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
    let (nvml, nvml_note) = match gang_gpu::nvml::discover() {
        Ok(gpus) => (gpus, None),
        Err(e) => (Vec::new(), Some(nvml_note(&e))),
    };
    let (visible, visible_error) = match VisibleDevices::from_env(script) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let matched = visible.as_ref().map(|v| match_visible(v, &nvml));
    let (visible_gpus, mut gpu_notes) = matched.map(|m| (m.gpus, m.notes)).unwrap_or_default();
    gpu_notes.extend(device::ordering_caveat(&nvml, std::env::var("CUDA_DEVICE_ORDER").ok().as_deref()));
    let gpus = visible_gpus.iter().map(|g| g.id.clone()).collect();
    let per_task_bound = per_task_bound(std::env::var("SLURM_GPUS_PER_TASK").ok().as_deref());
    // The count a CPU job would get (see `ranks::choose`).
    let ranks = crate::ranks::choose(ranks, slurm.as_ref().and_then(|s| s.ntasks), false, 0, cores).ranks;
    let nodes = slurm.as_ref().and_then(|s| s.num_nodes).filter(|&n| n > 1).unwrap_or(1);
    let plan = placements(ranks, nodes, &visible_gpus, per_task_bound);
    InfoReport {
        mpi,
        mpi_note,
        launcher,
        launcher_note,
        slurm,
        cores,
        cuda_visible_devices,
        gpus,
        visible,
        visible_error,
        visible_gpus,
        nvml,
        nvml_note,
        gpu_notes,
        per_task_bound,
        ranks,
        nodes,
        plan,
    }
}

/// The report as a human-readable table.
pub fn render(r: &InfoReport) -> String {
    let mut s = String::new();
    fn line(s: &mut String, k: &str, v: &str) {
        let _ = writeln!(s, "{k:<10} {v}");
    }
    match (&r.mpi, &r.mpi_note) {
        (Some(m), _) => line(
            &mut s,
            "MPI",
            &format!("{} {} ({}: {})", m.flavour.as_str(), m.version, m.mpirun.display(), m.version_line),
        ),
        (None, Some(note)) => line(&mut s, "MPI", note),
        (None, None) => line(&mut s, "MPI", "unknown"),
    }
    line(&mut s, "launcher", r.launcher.as_deref().or(r.launcher_note.as_deref()).unwrap_or("none"));
    match &r.slurm {
        None => line(&mut s, "slurm", "not inside a Slurm allocation"),
        Some(a) => {
            let opt = |v: Option<usize>| v.map_or("?".to_string(), |n| n.to_string());
            line(
                &mut s,
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
    line(&mut s, "cores", &r.cores.to_string());
    match (&r.nvml_note, r.nvml.len()) {
        (Some(note), _) => line(&mut s, "NVML", note),
        (None, 0) => line(&mut s, "NVML", "the NVIDIA driver sees no GPU"),
        (None, n) => line(&mut s, "NVML", &format!("{n} GPU(s), in PCI order:")),
    }
    for g in &r.nvml {
        let numa = g.numa_node.map_or("numa ?".to_string(), |n| format!("numa {n}"));
        let cpus =
            if g.cpus.is_empty() { "cpus ?".to_string() } else { format!("cpus {}", device::format_cpulist(&g.cpus)) };
        let mem = g.memory_bytes as f64 / (1u64 << 30) as f64;
        let _ = writeln!(s, "{:>10} {} {} {} {mem:.0} GiB, {numa}, {cpus}", g.index, g.name, g.uuid, g.pci_bus_id);
    }
    let visible = match (&r.visible, &r.visible_error) {
        (_, Some(e)) => format!("error: {e}"),
        (None, None) => "unknown".to_string(),
        (Some(v), None) => match (&v.source, r.visible_gpus.len()) {
            (device::VisibleSource::AllDevices, 0) if r.cuda_visible_devices.is_none() => {
                "none: CUDA_VISIBLE_DEVICES is unset and NVML lists no GPU (ranks use the CPU)".to_string()
            }
            (_, 0) => format!("none: {} (ranks use the CPU)", v.describe()),
            (_, n) => format!("{n}: {}", v.describe()),
        },
    };
    line(&mut s, "GPUs", &visible);
    for g in &r.visible_gpus {
        let what = match (&g.gpu, g.mig) {
            (Some(gpu), _) => format!("NVML {} {} {}", gpu.index, gpu.name, gpu.uuid),
            (None, true) => "a MIG instance".to_string(),
            (None, false) => "not matched to NVML".to_string(),
        };
        let _ = writeln!(s, "{:>10} cuda:{} = {}: {what}", "", g.ordinal, g.id);
    }
    for note in r.visible.iter().flat_map(|v| &v.notes).chain(&r.gpu_notes) {
        line(&mut s, "note", note);
    }
    if r.per_task_bound {
        line(&mut s, "binding", "SLURM_GPUS_PER_TASK=1: srun gives each task its own GPU");
    }
    let _ = writeln!(s, "\nplan for {} ranks on {} node(s):", r.ranks, r.nodes);
    let _ = writeln!(
        s,
        "{:>6} {:>5} {:>11}  {:<16} {:<6} {:<14} uuid",
        "rank", "node", "local_rank", "device", "numa", "cpus"
    );
    for p in &r.plan {
        let numa = p.numa_node.map_or("-".to_string(), |n| n.to_string());
        let cpus = p.cpus.as_deref().unwrap_or("not narrowed");
        let uuid = p.uuid.as_deref().unwrap_or("-");
        let _ = write!(
            s,
            "{:>6} {:>5} {:>11}  {:<16} {numa:<6} {cpus:<14} {uuid}",
            p.rank, p.node, p.local_rank, p.device_name
        );
        if !p.shared_with.is_empty() {
            let others = p.shared_with.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
            let _ = write!(s, "  SHARED with rank {others}");
        }
        let _ = writeln!(s);
    }
    if r.plan.iter().any(|p| !p.shared_with.is_empty()) {
        let _ = writeln!(
            s,
            "\nmore ranks than GPUs on a node: ranks would share a GPU, which NCCL refuses; the gang's preflight \
             check fails unless sharing is allowed (use -n no larger than the GPUs per node)"
        );
    }
    s
}

/// `gang info`.
///
/// # Errors
/// Only if the JSON cannot be produced.
pub fn info(args: &InfoArgs) -> Result<i32> {
    let report = gather(args.ranks, args.mpirun.as_deref(), args.gpu_discovery_script.as_deref());
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

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn visible(pairs: &[(&str, &str)], nvml: &[GpuInfo]) -> Vec<VisibleGpu> {
        match_visible(&VisibleDevices::detect(env(pairs), None).unwrap(), nvml).gpus
    }

    fn node(n: u32) -> Vec<GpuInfo> {
        (0..n)
            .map(|i| GpuInfo {
                index: i,
                name: "NVIDIA H200".into(),
                uuid: format!("GPU-{i:08x}-0000"),
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x17 + i),
                memory_bytes: 141 << 30,
                minor_number: Some(i),
                numa_node: Some(i / 2),
                cpus: if i < 2 { (0..8).collect() } else { (8..16).collect() },
            })
            .collect()
    }

    fn report(visible_gpus: Vec<VisibleGpu>, ranks: usize, nodes: usize, bound: bool) -> InfoReport {
        InfoReport {
            mpi: None,
            mpi_note: Some("no MPI found".into()),
            launcher: None,
            launcher_note: Some("no mpirun on PATH".into()),
            slurm: None,
            cores: 2,
            cuda_visible_devices: None,
            gpus: visible_gpus.iter().map(|g| g.id.clone()).collect(),
            visible: Some(VisibleDevices::detect(env(&[]), None).unwrap()),
            visible_error: None,
            plan: placements(ranks, nodes, &visible_gpus, bound),
            visible_gpus,
            nvml: vec![],
            nvml_note: Some("no NVIDIA driver (libnvidia-ml.so.1 not found)".into()),
            gpu_notes: vec![],
            per_task_bound: bound,
            ranks,
            nodes,
        }
    }

    #[test]
    fn one_node_local_rank_is_rank_and_devices_alternate() {
        let vis = visible(&[("CUDA_VISIBLE_DEVICES", "0,1")], &[]);
        let p = placements(4, 1, &vis, false);
        assert_eq!(p.iter().map(|p| p.local_rank).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(
            p.iter().map(|p| p.device_name.as_str()).collect::<Vec<_>>(),
            ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
        );
        assert_eq!(p[0].shared_with, [2]);
        assert_eq!(p[3].shared_with, [1]);
    }

    #[test]
    fn block_distribution_over_nodes() {
        let p = placements(5, 2, &[], false);
        assert_eq!(
            p.iter().map(|p| (p.node, p.local_rank)).collect::<Vec<_>>(),
            [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
        );
        assert!(p.iter().all(|p| p.device == Device::Cpu && p.shared_with.is_empty()));
        assert!(placements(0, 3, &[], false).is_empty());
    }

    #[test]
    fn nvml_gives_uuids_numa_nodes_and_cores_to_the_plan() {
        let vis = visible(&[("CUDA_VISIBLE_DEVICES", "3,0")], &node(4));
        let p = placements(4, 2, &vis, false);
        assert_eq!(p[0].uuid.as_deref(), Some("GPU-00000003-0000"));
        assert_eq!((p[0].numa_node, p[0].cpus.as_deref()), (Some(1), Some("8-15")));
        assert_eq!((p[1].device_name.as_str(), p[1].cpus.as_deref()), ("cuda:1 (0)", Some("0-7")));
        // The second node's ranks are numbered from 2, and share nothing.
        assert_eq!((p[2].rank, p[2].node, p[2].local_rank), (2, 1, 0));
        assert!(p.iter().all(|p| p.shared_with.is_empty()));
        let t = render(&report(vis, 4, 2, false));
        assert!(t.contains("cuda:0 = 3: NVML 3 NVIDIA H200 GPU-00000003-0000"), "{t}");
        assert!(!t.contains("SHARED"), "{t}");
    }

    #[test]
    fn sharing_is_flagged_in_the_table() {
        let vis = visible(&[("CUDA_VISIBLE_DEVICES", "0,1")], &node(2));
        let t = render(&report(vis, 3, 1, false));
        assert!(t.contains("SHARED with rank 2"), "{t}");
        assert!(t.contains("more ranks than GPUs"), "{t}");
    }

    #[test]
    fn per_task_binding_gives_each_task_its_gpu_as_cuda_0() {
        assert!(per_task_bound(Some("1")) && per_task_bound(Some("h100:1")));
        assert!(!per_task_bound(Some("2")) && !per_task_bound(None));
        let vis = visible(&[("SLURM_STEP_GPUS", "0-3")], &node(4));
        let p = placements(4, 1, &vis, true);
        assert!(p
            .iter()
            .all(|p| matches!(p.device, Device::Cuda { ordinal: 0, .. }) && p.rule == device::BindRule::Bound));
        assert_eq!(p[2].device_name, "cuda:0 (2)");
        assert_eq!(p[3].uuid.as_deref(), Some("GPU-00000003-0000"));
        assert!(render(&report(vis, 4, 1, true)).contains("SLURM_GPUS_PER_TASK=1"));
    }

    #[test]
    fn table_mentions_missing_gpus_and_the_missing_driver() {
        let t = render(&report(vec![], 2, 1, false));
        assert!(t.contains("CUDA_VISIBLE_DEVICES is unset"), "{t}");
        assert!(t.contains("no NVIDIA driver (libnvidia-ml.so.1 not found)"), "{t}");
        assert!(t.contains("no MPI found"), "{t}");
        assert!(t.contains("not inside a Slurm allocation"), "{t}");
    }

    #[test]
    fn a_failing_discovery_script_is_reported() {
        let mut r = report(vec![], 1, 1, false);
        r.visible = None;
        r.visible_error = Some("GPU discovery script /x/s.sh: exited with code 1".into());
        let t = render(&r);
        assert!(t.contains("GPUs       error: GPU discovery script /x/s.sh"), "{t}");
    }

    #[test]
    fn the_report_is_json() {
        let vis = visible(&[("CUDA_VISIBLE_DEVICES", "1")], &node(2));
        let v = serde_json::to_value(report(vis, 1, 1, false)).unwrap();
        assert_eq!(v["gpus"], serde_json::json!(["1"]));
        assert_eq!(v["visible"]["source"]["kind"], "all_devices");
        assert_eq!(v["visible_gpus"][0]["gpu"]["uuid"], "GPU-00000001-0000");
        assert_eq!(v["plan"][0]["rule"], "bound");
    }
}
