//! NCCL or host memory for the gradients: `--device-comm nccl|host|auto`.
//!
//! NCCL moves device buffers between GPUs directly; without it (not installed on a rank)
//! or where it cannot work (two ranks on one GPU: NCCL refuses them, "Duplicate GPU
//! detected"), gradients are staged through host memory and go over the host
//! communicator (MPI). The choice must be the same on every rank, so it is made from what
//! every rank found ([`RankDevice`], gathered over the host communicator), by a pure
//! function: [`choose`].
//!
//! ```
//! use gang_gpu::nccl::choice::{choose, DeviceCommBackend, DeviceCommChoice, RankDevice};
//! use gang_gpu::nccl::NcclVersion;
//!
//! let v = NcclVersion::from_code(22803);
//! let ranks = [
//!     RankDevice::with_nccl("node1", "GPU-aa", v, "libnccl.so.2"),
//!     RankDevice::with_nccl("node1", "GPU-aa", v, "libnccl.so.2"),
//! ];
//! let plan = choose(DeviceCommChoice::Auto, &ranks).unwrap();
//! assert_eq!(plan.backend, DeviceCommBackend::Host);
//! assert!(plan.message.contains("ranks 0 and 1 share GPU GPU-aa on node1"));
//! ```
#![forbid(unsafe_code)]

use super::{Nccl, NcclVersion, LIBRARY_ENV, LIBRARY_NAMES};
use crate::error::{Error, Result};

/// What the user asked for (`--device-comm`): one type for the launcher, the rank
/// runtime and this crate.
pub use gang_protocol::device::DeviceComm as DeviceCommChoice;

/// What the gradients go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceCommBackend {
    /// NCCL collectives on device buffers.
    Nccl,
    /// Staged through host memory and the host communicator.
    Host,
}

/// Whether a rank could load NCCL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NcclStatus {
    /// Loaded.
    Found {
        /// Its version.
        version: NcclVersion,
        /// The library as opened.
        library: String,
    },
    /// Not loadable.
    Missing {
        /// What was looked for (`libnccl.so.2`, or `$GANG_NCCL_LIBRARY`).
        looked_for: String,
    },
}

/// What one rank found: its node, its GPU, NCCL. Every rank's is gathered (as
/// [`RankDevice::to_line`]) before [`choose`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankDevice {
    /// The node (host name).
    pub node: String,
    /// The GPU, as an identity that is the same for every process on the node (its UUID
    /// or PCI bus id, not a `CUDA_VISIBLE_DEVICES`-relative ordinal).
    pub gpu: String,
    /// NCCL on this rank.
    pub nccl: NcclStatus,
}

impl RankDevice {
    /// A rank with NCCL `version` from `library`.
    pub fn with_nccl(node: &str, gpu: &str, version: NcclVersion, library: &str) -> Self {
        RankDevice { node: node.into(), gpu: gpu.into(), nccl: NcclStatus::Found { version, library: library.into() } }
    }

    /// A rank without NCCL (it looked for `looked_for`).
    pub fn without_nccl(node: &str, gpu: &str, looked_for: &str) -> Self {
        RankDevice { node: node.into(), gpu: gpu.into(), nccl: NcclStatus::Missing { looked_for: looked_for.into() } }
    }

    /// This rank: loads NCCL ([`Nccl::load`]) to see whether it is there.
    pub fn probe(node: &str, gpu: &str) -> Self {
        match Nccl::load().and_then(|n| Ok((n.version()?, n.library().to_string()))) {
            Ok((version, library)) => RankDevice::with_nccl(node, gpu, version, &library),
            Err(_) => RankDevice::without_nccl(node, gpu, &looked_for()),
        }
    }

    /// One line of text, to gather over the host communicator.
    pub fn to_line(&self) -> String {
        match &self.nccl {
            NcclStatus::Found { version, library } => {
                format!("{}\t{}\tfound\t{version}\t{library}", self.node, self.gpu)
            }
            NcclStatus::Missing { looked_for } => format!("{}\t{}\tmissing\t{looked_for}", self.node, self.gpu),
        }
    }

    /// The rank back from [`RankDevice::to_line`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a line that is not one.
    pub fn from_line(line: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("not a rank's device line: {line:?}"));
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            [node, gpu, "found", version, library] => {
                let v: Vec<u32> =
                    version.split('.').map(str::parse).collect::<std::result::Result<_, _>>().map_err(|_| bad())?;
                let [major, minor, patch] = v[..] else { return Err(bad()) };
                Ok(RankDevice::with_nccl(node, gpu, NcclVersion { major, minor, patch }, library))
            }
            [node, gpu, "missing", looked_for] => Ok(RankDevice::without_nccl(node, gpu, looked_for)),
            _ => Err(bad()),
        }
    }
}

/// What [`Nccl::load`] looks for: `$GANG_NCCL_LIBRARY`, else `libnccl.so.2`.
pub fn looked_for() -> String {
    std::env::var(LIBRARY_ENV).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| LIBRARY_NAMES[0].to_string())
}

/// The decision, and the one line that says it (every rank may print it; rank 0 does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCommPlan {
    /// What the gradients go through.
    pub backend: DeviceCommBackend,
    /// `gang: gradients through ...: why`.
    pub message: String,
}

const HOST_PREFIX: &str = "gang: gradients through host memory and MPI";

/// Why NCCL cannot be used by this gang, if it cannot.
enum Obstacle {
    Missing { ranks: Vec<usize>, looked_for: String, all: bool },
    Versions(String),
    SharedGpu { a: usize, b: usize, gpu: String, node: String },
    NoGpu(usize),
}

impl Obstacle {
    /// The short reason, for auto's message.
    fn reason(&self) -> String {
        match self {
            Obstacle::Missing { ranks, looked_for, all } => {
                let on = if *all { String::new() } else { format!(" on {}", rank_list(ranks)) };
                format!("NCCL not found{on} ({looked_for}; pip install nvidia-nccl-cu13 or set {LIBRARY_ENV})")
            }
            Obstacle::Versions(v) => format!("NCCL versions differ across ranks ({v})"),
            Obstacle::SharedGpu { a, b, gpu, node } => {
                format!("ranks {a} and {b} share GPU {gpu} on {node} (NCCL refuses two ranks on one device)")
            }
            Obstacle::NoGpu(r) => format!("rank {r} has no GPU"),
        }
    }

    /// The error when NCCL was demanded.
    fn into_error(self) -> Error {
        let host = "or use --device-comm host (or auto)";
        match self {
            Obstacle::Missing { ranks, looked_for, all } => {
                let on = if all { String::new() } else { format!(" on {}", rank_list(&ranks)) };
                Error::LibraryMissing {
                    library: "NCCL",
                    hint: format!(
                        "--device-comm nccl, but {looked_for} was not found{on}: install it with `pip install \
                         nvidia-nccl-cu13` and set {LIBRARY_ENV} to its nvidia/nccl/lib/libnccl.so.2, {host}"
                    ),
                }
            }
            Obstacle::Versions(v) => Error::Placement(format!(
                "--device-comm nccl, but the ranks load different NCCL versions ({v}): install one NCCL \
                 everywhere, {host}"
            )),
            Obstacle::SharedGpu { a, b, gpu, node } => Error::Placement(format!(
                "--device-comm nccl, but ranks {a} and {b} share GPU {gpu} on {node}: NCCL refuses two ranks on one \
                 device; give each rank its own GPU, {host}"
            )),
            Obstacle::NoGpu(r) => Error::Placement(format!("--device-comm nccl, but rank {r} has no GPU")),
        }
    }
}

fn rank_list(ranks: &[usize]) -> String {
    let list: Vec<String> = ranks.iter().map(usize::to_string).collect();
    match ranks.len() {
        1 => format!("rank {}", list[0]),
        _ => format!("ranks {}", list.join(", ")),
    }
}

/// The first reason (in rank order) NCCL cannot serve these ranks.
fn obstacle(ranks: &[RankDevice]) -> Option<Obstacle> {
    if let Some(r) = ranks.iter().position(|d| d.gpu.trim().is_empty()) {
        return Some(Obstacle::NoGpu(r));
    }
    let missing: Vec<usize> = ranks
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d.nccl, NcclStatus::Missing { .. }))
        .map(|(i, _)| i)
        .collect();
    if let Some(&first) = missing.first() {
        let NcclStatus::Missing { looked_for } = &ranks[first].nccl else { unreachable!("filtered above") };
        return Some(Obstacle::Missing {
            all: missing.len() == ranks.len(),
            looked_for: looked_for.clone(),
            ranks: missing,
        });
    }
    let versions: Vec<(usize, NcclVersion)> = ranks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match &d.nccl {
            NcclStatus::Found { version, .. } => Some((i, *version)),
            NcclStatus::Missing { .. } => None,
        })
        .collect();
    if let Some(&(other, v)) = versions.iter().find(|(_, v)| *v != versions[0].1) {
        return Some(Obstacle::Versions(format!("{} on rank 0, {v} on rank {other}", versions[0].1)));
    }
    for (b, d) in ranks.iter().enumerate() {
        if let Some(a) = ranks[..b].iter().position(|o| o.node == d.node && o.gpu == d.gpu) {
            return Some(Obstacle::SharedGpu { a, b, gpu: d.gpu.clone(), node: d.node.clone() });
        }
    }
    None
}

/// NCCL or host staging for a gang whose ranks found `ranks` (rank order), as `choice`
/// asks. Every rank calls it with the same gathered facts and gets the same plan.
///
/// # Errors
/// When `choice` is [`DeviceCommChoice::Nccl`] and NCCL cannot be used:
/// [`Error::LibraryMissing`] (not found on some rank) or [`Error::Placement`] (two ranks
/// on one GPU, a rank without a GPU, different NCCL versions). [`Error::InvalidArgument`]
/// for no ranks.
pub fn choose(choice: DeviceCommChoice, ranks: &[RankDevice]) -> Result<DeviceCommPlan> {
    if ranks.is_empty() {
        return Err(Error::InvalidArgument("choosing a device communicator for no ranks".into()));
    }
    let host =
        |why: String| DeviceCommPlan { backend: DeviceCommBackend::Host, message: format!("{HOST_PREFIX}: {why}") };
    if choice == DeviceCommChoice::Host {
        return Ok(host("--device-comm host".into()));
    }
    match (obstacle(ranks), choice) {
        (Some(o), DeviceCommChoice::Nccl) => Err(o.into_error()),
        (Some(o), _) => Ok(host(o.reason())),
        (None, _) => {
            let NcclStatus::Found { version, library } = &ranks[0].nccl else { unreachable!("no obstacle") };
            let why = match choice {
                DeviceCommChoice::Nccl => "--device-comm nccl".to_string(),
                _ => match ranks.len() {
                    1 => "one rank".to_string(),
                    n => format!("{n} ranks, each on its own GPU"),
                },
            };
            Ok(DeviceCommPlan {
                backend: DeviceCommBackend::Nccl,
                message: format!("gang: gradients through NCCL {version} ({library}): {why}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(code: i32) -> NcclVersion {
        NcclVersion::from_code(code)
    }

    fn found(node: &str, gpu: &str) -> RankDevice {
        RankDevice::with_nccl(node, gpu, v(22803), "libnccl.so.2")
    }

    fn missing(node: &str, gpu: &str) -> RankDevice {
        RankDevice::without_nccl(node, gpu, "libnccl.so.2")
    }

    #[test]
    fn choices_parse_and_print() {
        for (s, c) in
            [("auto", DeviceCommChoice::Auto), ("NCCL", DeviceCommChoice::Nccl), (" host", DeviceCommChoice::Host)]
        {
            let parsed: DeviceCommChoice = s.parse().unwrap();
            assert_eq!(parsed, c);
            assert_eq!(parsed.to_string().parse::<DeviceCommChoice>().unwrap(), c);
        }
        assert_eq!(DeviceCommChoice::default(), DeviceCommChoice::Auto);
        let e = "gloo".parse::<DeviceCommChoice>().unwrap_err().to_string();
        assert_eq!(e, "--device-comm \"gloo\": expected one of nccl, host, auto");
    }

    #[test]
    fn auto_picks_nccl_when_every_rank_has_it_and_its_own_gpu() {
        let ranks = [found("a", "GPU-0"), found("a", "GPU-1"), found("b", "GPU-0"), found("b", "GPU-1")];
        let p = choose(DeviceCommChoice::Auto, &ranks).unwrap();
        assert_eq!(p.backend, DeviceCommBackend::Nccl);
        assert_eq!(p.message, "gang: gradients through NCCL 2.28.3 (libnccl.so.2): 4 ranks, each on its own GPU");
        let p = choose(DeviceCommChoice::Nccl, &ranks).unwrap();
        assert_eq!(p.message, "gang: gradients through NCCL 2.28.3 (libnccl.so.2): --device-comm nccl");
        let p = choose(DeviceCommChoice::Auto, &ranks[..1]).unwrap();
        assert_eq!(p.message, "gang: gradients through NCCL 2.28.3 (libnccl.so.2): one rank");
    }

    #[test]
    fn auto_stages_through_host_memory_without_nccl() {
        let p = choose(DeviceCommChoice::Auto, &[missing("a", "GPU-0"), missing("b", "GPU-0")]).unwrap();
        assert_eq!(p.backend, DeviceCommBackend::Host);
        assert_eq!(
            p.message,
            "gang: gradients through host memory and MPI: NCCL not found (libnccl.so.2; pip install \
             nvidia-nccl-cu13 or set GANG_NCCL_LIBRARY)"
        );
        let ranks = [found("a", "GPU-0"), missing("a", "GPU-1"), found("b", "GPU-0"), missing("b", "GPU-1")];
        let p = choose(DeviceCommChoice::Auto, &ranks).unwrap();
        assert_eq!(p.backend, DeviceCommBackend::Host);
        assert!(p.message.contains("NCCL not found on ranks 1, 3 (libnccl.so.2;"), "{}", p.message);
        let p = choose(DeviceCommChoice::Auto, &[found("a", "GPU-0"), missing("b", "GPU-0")]).unwrap();
        assert!(p.message.contains("NCCL not found on rank 1 ("), "{}", p.message);
    }

    #[test]
    fn auto_stages_through_host_memory_when_ranks_share_a_gpu() {
        // The same GPU id on two nodes is two GPUs; on one node it is one.
        let ranks = [found("a", "GPU-0"), found("b", "GPU-0"), found("b", "GPU-1"), found("b", "GPU-0")];
        let p = choose(DeviceCommChoice::Auto, &ranks).unwrap();
        assert_eq!(p.backend, DeviceCommBackend::Host);
        assert_eq!(
            p.message,
            "gang: gradients through host memory and MPI: ranks 1 and 3 share GPU GPU-0 on b (NCCL refuses two \
             ranks on one device)"
        );
    }

    #[test]
    fn host_is_host_whatever_was_found() {
        let p = choose(DeviceCommChoice::Host, &[found("a", "GPU-0"), found("a", "GPU-1")]).unwrap();
        assert_eq!(p.backend, DeviceCommBackend::Host);
        assert_eq!(p.message, "gang: gradients through host memory and MPI: --device-comm host");
    }

    #[test]
    fn nccl_demanded_but_unavailable_is_a_clear_error() {
        let e = choose(DeviceCommChoice::Nccl, &[found("a", "GPU-0"), missing("a", "GPU-1")]).unwrap_err();
        assert!(matches!(e, Error::LibraryMissing { library: "NCCL", .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("NCCL is not available: --device-comm nccl, but libnccl.so.2 was not found on rank 1:"),
            "{text}"
        );
        assert!(text.contains("pip install nvidia-nccl-cu13") && text.contains("--device-comm host"), "{text}");

        let e = choose(DeviceCommChoice::Nccl, &[found("a", "GPU-0"), found("a", "GPU-0")]).unwrap_err();
        assert!(matches!(e, Error::Placement(_)), "{e:?}");
        assert!(e.to_string().contains("ranks 0 and 1 share GPU GPU-0 on a: NCCL refuses two ranks on one device"));

        let e = choose(DeviceCommChoice::Nccl, &[found("a", "GPU-0"), found("a", "")]).unwrap_err();
        assert_eq!(e.to_string(), "--device-comm nccl, but rank 1 has no GPU");
    }

    #[test]
    fn different_nccl_versions_are_not_mixed() {
        let ranks = [found("a", "GPU-0"), RankDevice::with_nccl("b", "GPU-0", v(22703), "libnccl.so.2")];
        let p = choose(DeviceCommChoice::Auto, &ranks).unwrap();
        assert_eq!(p.backend, DeviceCommBackend::Host);
        assert!(p.message.ends_with("NCCL versions differ across ranks (2.28.3 on rank 0, 2.27.3 on rank 1)"));
        assert!(matches!(choose(DeviceCommChoice::Nccl, &ranks), Err(Error::Placement(_))));
    }

    #[test]
    fn no_ranks_is_an_invalid_argument() {
        assert!(matches!(choose(DeviceCommChoice::Auto, &[]), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn rank_devices_round_trip_through_lines() {
        for d in [found("node-7", "GPU-1234"), missing("node-7", "GPU-1234"), found("n", "")] {
            assert_eq!(RankDevice::from_line(&d.to_line()).unwrap(), d);
        }
        assert_eq!(found("n", "g").to_line(), "n\tg\tfound\t2.28.3\tlibnccl.so.2");
        for bad in ["", "n\tg\tfound\t2.x.3\tlib", "n\tg\tfound\t2.28\tlib", "n\tg\tmaybe\tlib"] {
            assert!(RankDevice::from_line(bad).is_err(), "{bad:?}");
        }
    }
}
