//! GPUs and the rank-to-device plan: which GPUs a rank can see and where that list came
//! from, what NVML says about each one, which one a rank uses, which cores it is narrowed
//! to, and the preflight check that no two ranks of a node share a GPU.
//!
//! Everything here is pure logic over strings, files and plain records (no CUDA, no NVML,
//! no MPI), so that the launcher (`gang info`) and the ranks apply the same plan, and every
//! rule is unit-tested on a machine without a GPU.
//!
//! # Which GPUs are visible
//!
//! [`VisibleDevices::detect`] takes the first of these sources that is set:
//!
//! 1. `CUDA_VISIBLE_DEVICES`: what CUDA will actually enumerate, so it always wins, even
//!    when empty (every GPU hidden). Its entries are indices, `GPU-<uuid>` UUIDs (or
//!    unique prefixes of them) or `MIG-...` ids; CUDA stops at the first invalid entry
//!    and so does [`parse_cuda_visible_devices`]. CUDA ordinal `k` is entry `k`. Slurm sets
//!    it itself for jobs with `--gres=gpu`/`--gpus*`, so inside Slurm it is normally set.
//! 2. A Spark discovery script (`--gpu-discovery-script`), when one was given: an explicit
//!    request beats what the environment happens to hold. It prints
//!    `{"name": "gpu", "addresses": ["0", "1"]}`; the addresses are ids of the node's GPUs
//!    (Spark's own example script prints `nvidia-smi` indices).
//! 3. `SLURM_STEP_GPUS`, then `SLURM_JOB_GPUS` (the step's GPUs are a subset of the
//!    job's), then `GPU_DEVICE_ORDINAL`: ids of the node's GPUs, not relative to any
//!    device cgroup.
//! 4. Nothing: every GPU of the node, as NVML lists them.
//!
//! For sources 2-4 CUDA sees every GPU of the node, so the CUDA ordinal of an id is the
//! GPU's place in the node's enumeration; [`match_visible`] finds it through NVML (by
//! index, minor number, UUID or PCI bus id). NVML numbers GPUs in PCI bus order and ignores
//! `CUDA_VISIBLE_DEVICES`; CUDA numbers them fastest first unless
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID`, which is the same order on a node of identical GPUs
//! ([`ordering_caveat`] says when it may not be).
//!
//! # Binding
//!
//! A rank that sees exactly one GPU (srun `--gpus-per-task=1` or `--gpu-bind` bound it)
//! uses that one; otherwise it uses visible GPU `local_rank % visible` ([`bind_rank`]).
//! Its CPU affinity is then narrowed to the cores of the GPU's NUMA node ([`narrow`]),
//! never widened. Before the first collective the ranks gather their (host, GPU UUID) and
//! [`preflight`] fails the gang, with a table of the plan, when two ranks of one host hold
//! the same GPU (unless sharing was allowed) or a rank has no GPU when one was demanded.
//!
//! ```
//! use gang_protocol::device::{bind_rank, match_visible, VisibleDevices, Device};
//!
//! let env = |k: &str| (k == "CUDA_VISIBLE_DEVICES").then(|| "2,3".to_string());
//! let visible = VisibleDevices::detect(env, None).unwrap();
//! let gpus = match_visible(&visible, &[]).gpus; // no NVML here: matched by position only
//! let b = bind_rank(1, 2, &gpus);
//! assert_eq!(b.device, Device::Cuda { ordinal: 1, visible_id: "3".into() });
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

/// The compute device of one rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Device {
    /// No GPU: the CPU kernels run on the rank's cores.
    Cpu,
    /// A CUDA device.
    Cuda {
        /// Ordinal among the devices visible to the process (what CUDA calls device `n`).
        ordinal: usize,
        /// The entry of the visible list it came from (an index, a `GPU-...` UUID or a
        /// `MIG-...` id).
        visible_id: String,
    },
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda { ordinal, visible_id } if visible_id == &ordinal.to_string() => {
                write!(f, "cuda:{ordinal}")
            }
            Device::Cuda { ordinal, visible_id } => write!(f, "cuda:{ordinal} ({visible_id})"),
        }
    }
}

/// One entry of a visible-device list, as CUDA reads `CUDA_VISIBLE_DEVICES`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum DeviceId {
    /// A device index (`3`).
    Index(u32),
    /// A GPU UUID or a unique prefix of one, with its `GPU-` prefix (`GPU-8d2f`).
    Uuid(String),
    /// A MIG instance (`MIG-<uuid>`, or the older `MIG-GPU-<uuid>/<gi>/<ci>`).
    Mig(String),
}

impl DeviceId {
    /// Parses one entry; `None` for what CUDA treats as invalid (empty, negative, other
    /// text). UUIDs are matched case-insensitively, so they are kept lower-case.
    pub fn parse(s: &str) -> Option<DeviceId> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().ok().map(DeviceId::Index);
        }
        let upper = s.to_ascii_uppercase();
        if upper.starts_with("MIG-") && s.len() > 4 {
            return Some(DeviceId::Mig(s.to_string()));
        }
        if upper.starts_with("GPU-") && s.len() > 4 {
            let rest = &s[4..];
            if rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                return Some(DeviceId::Uuid(format!("GPU-{}", rest.to_ascii_lowercase())));
            }
        }
        None
    }
}

/// Parses `CUDA_VISIBLE_DEVICES` into the list of visible device ids.
///
/// Unset, empty, `NoDevFiles` and anything from the first invalid entry on (CUDA stops at
/// the first invalid entry: a negative index, an empty item, text that is neither an index
/// nor a `GPU-`/`MIG-` id) mean fewer or no devices.
pub fn parse_cuda_visible_devices(value: Option<&str>) -> Vec<String> {
    let Some(value) = value else { return Vec::new() };
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim) {
        if DeviceId::parse(item).is_none() {
            break;
        }
        out.push(item.to_string());
    }
    out
}

/// Parses a Slurm GPU list (`SLURM_STEP_GPUS`, `SLURM_JOB_GPUS`, `GPU_DEVICE_ORDINAL`):
/// comma-separated indices, ranges (`0-3`) allowed. `Err` names what is wrong.
pub fn parse_slurm_gpus(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("NoDevFiles") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim) {
        if DeviceId::parse(item).is_some() {
            out.push(item.to_string());
            continue;
        }
        let range = item.split_once('-').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        match range {
            Some((a, b)) if a <= b => out.extend((a..=b).map(|i| i.to_string())),
            _ => return Err(format!("{item:?} is not a GPU index, range or UUID")),
        }
    }
    Ok(out)
}

/// The device of the rank with local rank `local_rank`, given the visible devices as
/// CUDA enumerates them (`local_rank % visible`, or the CPU when there are none).
pub fn device_for(local_rank: usize, visible: &[String]) -> Device {
    if visible.is_empty() {
        return Device::Cpu;
    }
    let ordinal = local_rank % visible.len();
    Device::Cuda { ordinal, visible_id: visible[ordinal].clone() }
}

/// Where a list of visible GPUs came from (see the [module docs](self) for the order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum VisibleSource {
    /// `CUDA_VISIBLE_DEVICES`: exactly what CUDA enumerates, in that order.
    CudaVisibleDevices,
    /// A Spark discovery script's `addresses`.
    DiscoveryScript {
        /// The script.
        script: PathBuf,
    },
    /// Slurm's `SLURM_STEP_GPUS`.
    SlurmStepGpus,
    /// Slurm's `SLURM_JOB_GPUS`.
    SlurmJobGpus,
    /// `GPU_DEVICE_ORDINAL` (set by Slurm beside `CUDA_VISIBLE_DEVICES`).
    GpuDeviceOrdinal,
    /// Nothing restricts the process: every GPU of the node.
    AllDevices,
}

impl VisibleSource {
    /// The environment variable of this source, if it is one.
    pub fn variable(&self) -> Option<&'static str> {
        match self {
            VisibleSource::CudaVisibleDevices => Some("CUDA_VISIBLE_DEVICES"),
            VisibleSource::SlurmStepGpus => Some("SLURM_STEP_GPUS"),
            VisibleSource::SlurmJobGpus => Some("SLURM_JOB_GPUS"),
            VisibleSource::GpuDeviceOrdinal => Some("GPU_DEVICE_ORDINAL"),
            VisibleSource::DiscoveryScript { .. } | VisibleSource::AllDevices => None,
        }
    }

    /// Whether the list is CUDA's own enumeration (entry `k` is CUDA ordinal `k`); for the
    /// other sources CUDA sees every GPU of the node and the entries are ids among them.
    pub fn is_cuda_enumeration(&self) -> bool {
        matches!(self, VisibleSource::CudaVisibleDevices)
    }
}

impl fmt::Display for VisibleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VisibleSource::DiscoveryScript { script } => write!(f, "discovery script {}", script.display()),
            VisibleSource::AllDevices => {
                f.write_str("every GPU of the node (no CUDA_VISIBLE_DEVICES or Slurm GPU list)")
            }
            other => f.write_str(other.variable().unwrap_or("?")),
        }
    }
}

/// The environment variables [`VisibleDevices::detect`] reads, in precedence order (the
/// discovery script sits between the first and the others).
pub const VISIBLE_VARIABLES: [&str; 4] =
    ["CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL"];

/// The GPUs a process may use, as ids, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisibleDevices {
    /// Where the list came from.
    pub source: VisibleSource,
    /// The variable's value or the script's output, as read (`None` for
    /// [`VisibleSource::AllDevices`]).
    pub raw: Option<String>,
    /// The ids, in order. For [`VisibleSource::AllDevices`] this is empty until matched
    /// against NVML's list ([`match_visible`]).
    pub ids: Vec<String>,
    /// Sources that were set but lost to a higher one, and entries that were dropped.
    pub notes: Vec<String>,
}

impl VisibleDevices {
    /// Reads the visible list from the environment (`get` looks a variable up) and, when
    /// `script` is given and `CUDA_VISIBLE_DEVICES` is unset, from the output of that Spark
    /// discovery script. The order of precedence is in the [module docs](self).
    ///
    /// # Errors
    /// The script cannot be run, fails, or prints something other than Spark's format; a
    /// Slurm variable holds something other than GPU ids. The error names the script or
    /// the variable.
    pub fn detect(
        get: impl Fn(&str) -> Option<String>,
        script: Option<&Path>,
    ) -> Result<VisibleDevices, DiscoveryError> {
        let set: Vec<(&'static str, String)> =
            VISIBLE_VARIABLES.iter().filter_map(|&k| get(k).map(|v| (k, v))).collect();
        let mut notes = Vec::new();
        let lost = |winner: &str, skip: usize, notes: &mut Vec<String>| {
            for (k, v) in set.iter().skip(skip) {
                notes.push(format!("{k}={v:?} ignored: {winner} takes precedence"));
            }
        };
        if let Some((_, v)) = set.iter().find(|(k, _)| *k == "CUDA_VISIBLE_DEVICES") {
            let ids = parse_cuda_visible_devices(Some(v));
            let entries = v.split(',').filter(|s| !s.trim().is_empty()).count();
            if ids.len() < entries {
                notes.push(format!(
                    "CUDA_VISIBLE_DEVICES={v:?}: CUDA stops at the first invalid entry, so only {} device(s) are visible",
                    ids.len()
                ));
            }
            if let Some(script) = script {
                notes.push(format!(
                    "discovery script {} not run: CUDA_VISIBLE_DEVICES is set and is what CUDA enumerates",
                    script.display()
                ));
            }
            lost("CUDA_VISIBLE_DEVICES", 1, &mut notes);
            return Ok(VisibleDevices { source: VisibleSource::CudaVisibleDevices, raw: Some(v.clone()), ids, notes });
        }
        if let Some(script) = script {
            let out = run_discovery_script(script)?;
            let ids = parse_discovery_output(&out).map_err(|detail| DiscoveryError::script(script, detail))?;
            lost("the discovery script", 0, &mut notes);
            let source = VisibleSource::DiscoveryScript { script: script.to_path_buf() };
            return Ok(VisibleDevices { source, raw: Some(out.trim().to_string()), ids, notes });
        }
        let sources = [
            ("SLURM_STEP_GPUS", VisibleSource::SlurmStepGpus),
            ("SLURM_JOB_GPUS", VisibleSource::SlurmJobGpus),
            ("GPU_DEVICE_ORDINAL", VisibleSource::GpuDeviceOrdinal),
        ];
        for (i, (k, v)) in set.iter().enumerate() {
            let Some((_, source)) = sources.iter().find(|(name, _)| name == k) else { continue };
            let ids = parse_slurm_gpus(v).map_err(|detail| DiscoveryError::variable(k, v, detail))?;
            lost(k, i + 1, &mut notes);
            return Ok(VisibleDevices { source: source.clone(), raw: Some(v.clone()), ids, notes });
        }
        Ok(VisibleDevices { source: VisibleSource::AllDevices, raw: None, ids: Vec::new(), notes })
    }

    /// The process environment and a discovery script: `script`, else the one the
    /// launcher passed in [`GANG_GPU_DISCOVERY_SCRIPT`](crate::vars::GPU_DISCOVERY_SCRIPT).
    ///
    /// # Errors
    /// As [`VisibleDevices::detect`].
    pub fn from_env(script: Option<&Path>) -> Result<VisibleDevices, DiscoveryError> {
        let passed = std::env::var_os(crate::vars::GPU_DISCOVERY_SCRIPT).filter(|s| !s.is_empty()).map(PathBuf::from);
        VisibleDevices::detect(|k| std::env::var(k).ok(), script.or(passed.as_deref()))
    }

    /// `CUDA_VISIBLE_DEVICES="0,1"`, `discovery script s.sh: ["0"]`, `every GPU of the node ...`.
    pub fn describe(&self) -> String {
        match (&self.source, &self.raw) {
            (VisibleSource::DiscoveryScript { script }, _) => {
                format!("discovery script {}: {:?}", script.display(), self.ids)
            }
            (source, Some(raw)) => format!("{source}={raw:?}"),
            (source, None) => source.to_string(),
        }
    }
}

/// A visible-device source that cannot be read. Names the script or variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryError {
    /// The script or the variable (`SLURM_JOB_GPUS="x"`).
    pub what: String,
    /// What went wrong.
    pub detail: String,
}

impl DiscoveryError {
    fn script(script: &Path, detail: impl Into<String>) -> DiscoveryError {
        DiscoveryError { what: format!("GPU discovery script {}", script.display()), detail: detail.into() }
    }

    fn variable(name: &str, value: &str, detail: impl Into<String>) -> DiscoveryError {
        DiscoveryError { what: format!("{name}={value:?}"), detail: detail.into() }
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.detail)
    }
}

impl std::error::Error for DiscoveryError {}

/// Spark's resource-discovery output (`ResourceInformation` as JSON).
#[derive(Debug, Deserialize)]
struct SparkResource {
    name: String,
    addresses: Vec<String>,
}

/// Parses what a Spark GPU discovery script prints: `{"name": "gpu", "addresses": ["0",
/// "1"]}`. Spark takes the whole output as one JSON object; so does this.
///
/// # Errors
/// Not that JSON, a name other than `gpu`, an address that is neither an index nor a
/// UUID; the message quotes the output.
pub fn parse_discovery_output(output: &str) -> Result<Vec<String>, String> {
    let text = output.trim();
    let shown: String = if text.chars().count() > 200 {
        text.chars().take(200).chain("...".chars()).collect()
    } else {
        text.to_string()
    };
    let res: SparkResource = serde_json::from_str(text).map_err(|e| {
        format!("printed {shown:?}, not Spark's resource JSON {{\"name\": \"gpu\", \"addresses\": [\"0\", ...]}} ({e})")
    })?;
    if res.name != "gpu" {
        return Err(format!("printed a resource named {:?}; gang asks for \"gpu\"", res.name));
    }
    for a in &res.addresses {
        if DeviceId::parse(a).is_none() {
            return Err(format!("address {a:?} is neither a GPU index nor a GPU-/MIG- UUID"));
        }
    }
    Ok(res.addresses.into_iter().map(|a| a.trim().to_string()).collect())
}

/// Runs a Spark GPU discovery script (no arguments, as Spark runs it) and returns what it
/// printed on stdout.
///
/// # Errors
/// The script cannot be started, exits with a failure (its stderr is quoted), or prints
/// something that is not UTF-8; each error names the script.
pub fn run_discovery_script(script: &Path) -> Result<String, DiscoveryError> {
    let out = std::process::Command::new(script)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| DiscoveryError::script(script, format!("cannot be run: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let status = match out.status.code() {
            Some(c) => format!("exited with code {c}"),
            None => "was killed by a signal".to_string(),
        };
        return Err(DiscoveryError::script(
            script,
            if stderr.is_empty() { status } else { format!("{status}: {stderr}") },
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| DiscoveryError::script(script, "printed something that is not UTF-8"))
}

/// One GPU of the node, as NVML describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML's index: the GPU's place in PCI bus order, not CUDA's ordinal.
    pub index: u32,
    /// The product name (`NVIDIA H200`).
    pub name: String,
    /// `GPU-` and the UUID, lower-case, as `CUDA_VISIBLE_DEVICES` and `nvidia-smi -L` write it.
    pub uuid: String,
    /// NVML's PCI bus id, `00000000:17:00.0` (8 hex digits of domain).
    pub pci_bus_id: String,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// The minor number of its `/dev/nvidiaN` device file, which Slurm's GPU ids follow.
    pub minor_number: Option<u32>,
    /// Its NUMA node, if the machine has more than one and says which.
    pub numa_node: Option<u32>,
    /// The cores close to it (sysfs `local_cpulist` or NVML's affinity); empty if unknown.
    pub cpus: Vec<usize>,
}

/// A GPU a process can use: its CUDA ordinal, the id it was named by, and what NVML knows
/// of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisibleGpu {
    /// What CUDA calls this device in this process (`cuda:N`).
    pub ordinal: usize,
    /// The entry of the visible list (an index, a UUID, a MIG id).
    pub id: String,
    /// The NVML device it is, when NVML answered and the id matched one.
    pub gpu: Option<GpuInfo>,
    /// A MIG instance: `gpu` is not filled (a MIG id names an instance, not a whole GPU).
    pub mig: bool,
}

impl VisibleGpu {
    /// The UUID of the device: the GPU's, or the MIG id itself.
    pub fn uuid(&self) -> Option<&str> {
        match &self.gpu {
            Some(g) => Some(&g.uuid),
            None if self.mig => Some(&self.id),
            None => None,
        }
    }

    /// The device of a rank that uses this GPU.
    pub fn device(&self) -> Device {
        Device::Cuda { ordinal: self.ordinal, visible_id: self.id.clone() }
    }
}

/// The visible GPUs matched to NVML's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matched {
    /// The GPUs the process can use, in CUDA ordinal order.
    pub gpus: Vec<VisibleGpu>,
    /// Entries that were dropped, and why.
    pub notes: Vec<String>,
}

/// Normalises a PCI bus id to the kernel's form, `0000:17:00.0` (4 hex digits of domain,
/// lower-case): NVML writes `00000000:17:00.0`. `None` if it is not a bus id.
pub fn sysfs_bus_id(bus_id: &str) -> Option<String> {
    let bus_id = bus_id.trim().to_ascii_lowercase();
    let mut parts = bus_id.rsplitn(3, ':');
    let (devfn, bus, domain) = (parts.next()?, parts.next()?, parts.next().unwrap_or("0"));
    let (dev, func) = devfn.split_once('.')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !(hex(domain) && hex(bus) && hex(dev) && hex(func)) {
        return None;
    }
    let domain = u32::from_str_radix(domain, 16).ok()?;
    let (bus, dev, func) =
        (u32::from_str_radix(bus, 16).ok()?, u32::from_str_radix(dev, 16).ok()?, u32::from_str_radix(func, 16).ok()?);
    Some(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

/// The GPU among `gpus` that `id` names, or why none.
///
/// An index names NVML index `i` (for CUDA's enumeration; see [`ordering_caveat`]) or,
/// with `by_minor` (Slurm's ids), the GPU whose `/dev/nvidiaN` minor number is `i` when
/// NVML gave minor numbers. A UUID or a prefix of one must name exactly one GPU, as CUDA
/// demands. A PCI bus id in either form names the GPU on that bus.
pub fn find_gpu<'a>(id: &str, gpus: &'a [GpuInfo], by_minor: bool) -> Result<&'a GpuInfo, String> {
    match DeviceId::parse(id) {
        Some(DeviceId::Index(i)) => {
            let minor = by_minor && gpus.iter().all(|g| g.minor_number.is_some());
            let found = if minor {
                gpus.iter().find(|g| g.minor_number == Some(i))
            } else {
                gpus.iter().find(|g| g.index == i)
            };
            found.ok_or_else(|| {
                format!("{id}: the node has no GPU {}{i}", if minor { "/dev/nvidia" } else { "with index " })
            })
        }
        Some(DeviceId::Uuid(prefix)) => {
            let prefix = prefix.to_ascii_lowercase();
            let hits: Vec<&GpuInfo> =
                gpus.iter().filter(|g| g.uuid.to_ascii_lowercase().starts_with(&prefix)).collect();
            match hits[..] {
                [one] => Ok(one),
                [] => Err(format!("{id}: no GPU of the node has this UUID")),
                _ => Err(format!("{id}: the prefix matches {} GPUs; CUDA needs it to be unique", hits.len())),
            }
        }
        Some(DeviceId::Mig(_)) => Err(format!("{id}: a MIG instance is not a whole GPU")),
        None => {
            let bus = sysfs_bus_id(id).ok_or_else(|| format!("{id:?} is not a GPU index, UUID or PCI bus id"))?;
            gpus.iter()
                .find(|g| sysfs_bus_id(&g.pci_bus_id).as_deref() == Some(bus.as_str()))
                .ok_or_else(|| format!("{id}: no GPU of the node is on PCI bus {bus}"))
        }
    }
}

/// Matches the visible list to NVML's devices and gives each GPU its CUDA ordinal.
///
/// `gpus` empty means NVML did not answer: the ids are kept as they are (ordinals by
/// position for `CUDA_VISIBLE_DEVICES`, the index itself for the other sources), without
/// UUIDs. With NVML's list, an entry of `CUDA_VISIBLE_DEVICES` that names no GPU ends the
/// list there, as it ends CUDA's enumeration; an id of the other sources that names no
/// GPU is left out, with a note.
pub fn match_visible(visible: &VisibleDevices, gpus: &[GpuInfo]) -> Matched {
    let mut notes = Vec::new();
    let mut out = Vec::new();
    if visible.source == VisibleSource::AllDevices {
        let gpus = gpus.iter().enumerate().map(|(ordinal, g)| VisibleGpu {
            ordinal,
            id: g.index.to_string(),
            gpu: Some(g.clone()),
            mig: false,
        });
        return Matched { gpus: gpus.collect(), notes };
    }
    let cuda = visible.source.is_cuda_enumeration();
    for (k, id) in visible.ids.iter().enumerate() {
        let mig = matches!(DeviceId::parse(id), Some(DeviceId::Mig(_)));
        if mig || gpus.is_empty() {
            let ordinal = match (cuda, DeviceId::parse(id)) {
                (true, _) => Some(k),
                (false, Some(DeviceId::Index(i))) => Some(i as usize),
                (false, _) => None,
            };
            match ordinal {
                Some(ordinal) => out.push(VisibleGpu { ordinal, id: id.clone(), gpu: None, mig }),
                None => notes.push(format!("{id} left out: without NVML its CUDA ordinal is unknown")),
            }
            continue;
        }
        match find_gpu(id, gpus, !cuda) {
            Ok(g) => {
                let ordinal = if cuda { k } else { gpus.iter().position(|x| x.index == g.index).unwrap_or(k) };
                out.push(VisibleGpu { ordinal, id: id.clone(), gpu: Some(g.clone()), mig: false });
            }
            Err(why) if cuda => {
                notes.push(format!(
                    "{why}; CUDA stops at this entry of CUDA_VISIBLE_DEVICES, so the {} after it are not visible either",
                    visible.ids.len() - k - 1
                ));
                break;
            }
            Err(why) => notes.push(format!("{why}; left out")),
        }
    }
    Matched { gpus: out, notes }
}

/// The NVIDIA device files `nvidiaN` in `dev` (normally `/dev`): the node's GPUs as the
/// driver offers them to this process (a container or a Slurm job with device cgroups may
/// see only its own). `nvidiactl`, `nvidia-uvm` and the like are not GPUs.
pub fn device_files(dev: &Path) -> usize {
    std::fs::read_dir(dev)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("nvidia").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The GPUs a process can use, known without NVML or CUDA: the visible list matched by
/// position (`CUDA_VISIBLE_DEVICES`) or taken as ordinals (a discovery script's addresses,
/// Slurm's ids: right where CUDA numbers the node's GPUs as the driver does, see
/// [`ordering_caveat`]), or, when nothing names them, one GPU per device file
/// (`device_files`, from [`device_files`]) as CUDA ordinals `0..n`. This is how a rank
/// program's [`Device`] is planned; `gang train` matches through NVML instead
/// ([`match_visible`]).
pub fn visible_without_nvml(visible: &VisibleDevices, device_files: usize) -> Matched {
    if visible.source == VisibleSource::AllDevices {
        let gpus = (0..device_files).map(|i| VisibleGpu { ordinal: i, id: i.to_string(), gpu: None, mig: false });
        return Matched { gpus: gpus.collect(), notes: Vec::new() };
    }
    match_visible(visible, &[])
}

/// Why CUDA's ordinals may differ from NVML's indices, if they may: CUDA enumerates fastest
/// first unless `CUDA_DEVICE_ORDER=PCI_BUS_ID`, NVML in PCI order; the two agree on a node
/// of identical GPUs.
pub fn ordering_caveat(gpus: &[GpuInfo], cuda_device_order: Option<&str>) -> Option<String> {
    let mixed = gpus.iter().any(|g| g.name != gpus[0].name);
    (mixed && cuda_device_order != Some("PCI_BUS_ID")).then(|| {
        "the node has GPUs of different models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA numbers them \
         fastest first, NVML in PCI order, so indices may name different GPUs; set CUDA_DEVICE_ORDER=PCI_BUS_ID \
         or use UUIDs"
            .to_string()
    })
}

/// How a rank's device was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindRule {
    /// The rank sees exactly one GPU (srun `--gpus-per-task`/`--gpu-bind` bound it).
    Bound,
    /// Visible GPU `local_rank % visible`.
    LocalRank,
    /// No GPU is visible: the CPU.
    NoGpu,
}

impl fmt::Display for BindRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindRule::Bound => "the only GPU it sees",
            BindRule::LocalRank => "local rank among the visible GPUs",
            BindRule::NoGpu => "no GPU visible",
        })
    }
}

/// The device of one rank and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankBinding {
    /// Rank among the ranks of its node.
    pub local_rank: usize,
    /// Its device.
    pub device: Device,
    /// The visible GPU, with what NVML knows of it.
    pub gpu: Option<VisibleGpu>,
    /// How the device was chosen.
    pub rule: BindRule,
    /// The other local ranks on the same GPU (more ranks than GPUs on the node).
    pub shared_with: Vec<usize>,
}

impl RankBinding {
    /// The GPU's UUID (or MIG id), when known.
    pub fn uuid(&self) -> Option<&str> {
        self.gpu.as_ref().and_then(VisibleGpu::uuid)
    }
}

/// The device of the rank with local rank `local_rank` of `local_size`, given the GPUs it
/// sees: the only one if it sees exactly one, else `local_rank % visible`, else the CPU.
/// `shared_with` lists the local ranks that this rule puts on the same GPU.
pub fn bind_rank(local_rank: usize, local_size: usize, visible: &[VisibleGpu]) -> RankBinding {
    let n = visible.len();
    let (gpu, rule) = match n {
        0 => (None, BindRule::NoGpu),
        1 => (Some(&visible[0]), BindRule::Bound),
        _ => (Some(&visible[local_rank % n]), BindRule::LocalRank),
    };
    let shared_with = match rule {
        BindRule::LocalRank => {
            (0..local_size.max(local_rank + 1)).filter(|&r| r != local_rank && r % n == local_rank % n).collect()
        }
        // Every rank of the node sees the same single GPU unless srun bound each to its own;
        // the rank cannot tell, so the plan ([`plan_node`]) and the preflight decide.
        _ => Vec::new(),
    };
    RankBinding {
        local_rank,
        device: gpu.map_or(Device::Cpu, VisibleGpu::device),
        gpu: gpu.cloned(),
        rule,
        shared_with,
    }
}

/// The devices of the `local_size` ranks of one node. With `per_task_bound` (srun
/// `--gpus-per-task=1` or `--gpu-bind`), each task sees only its own GPU, the `i`-th of
/// `visible` (the node's allocation), as its `cuda:0`; otherwise every rank sees all of
/// `visible` and [`bind_rank`] picks. Ranks put on one GPU list each other in
/// `shared_with`.
pub fn plan_node(local_size: usize, visible: &[VisibleGpu], per_task_bound: bool) -> Vec<RankBinding> {
    let mut plan: Vec<RankBinding> = (0..local_size)
        .map(|r| {
            if per_task_bound && !visible.is_empty() {
                let mut gpu = visible[r % visible.len()].clone();
                gpu.ordinal = 0;
                RankBinding {
                    local_rank: r,
                    device: gpu.device(),
                    gpu: Some(gpu),
                    rule: BindRule::Bound,
                    shared_with: vec![],
                }
            } else {
                bind_rank(r, local_size, visible)
            }
        })
        .collect();
    let key = |b: &RankBinding| b.gpu.as_ref().map(|g| g.uuid().map_or_else(|| format!("id {}", g.id), str::to_string));
    let keys: Vec<Option<String>> = plan.iter().map(key).collect();
    for (r, b) in plan.iter_mut().enumerate() {
        b.shared_with = (0..local_size).filter(|&o| o != r && keys[r].is_some() && keys[o] == keys[r]).collect();
    }
    plan
}

/// Parses a Linux cpulist (`0-3,8-11`, `0,2,4`, `0-15:2` strides, or empty) into sorted,
/// distinct CPU numbers.
///
/// # Errors
/// Text that is not a cpulist; the message quotes it.
pub fn parse_cpulist(s: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("{:?} is not a CPU list (like 0-3,8-11)", s.trim());
    let mut cpus = Vec::new();
    for item in s.trim().split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (range, stride) = match item.split_once(':') {
            Some((r, st)) => (r, st.parse::<usize>().ok().filter(|&x| x > 0).ok_or_else(bad)?),
            None => (item, 1),
        };
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().map_err(|_| bad())?, b.parse::<usize>().map_err(|_| bad())?),
            None => {
                let a = range.parse::<usize>().map_err(|_| bad())?;
                (a, a)
            }
        };
        if a > b {
            return Err(bad());
        }
        cpus.extend((a..=b).step_by(stride));
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Writes CPU numbers as a Linux cpulist, runs collapsed (`0-3,8-11`).
pub fn format_cpulist(cpus: &[usize]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut s = String::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        let sep = if s.is_empty() { "" } else { "," };
        let _ = if j == i { write!(s, "{sep}{}", v[i]) } else { write!(s, "{sep}{}-{}", v[i], v[j]) };
        i = j + 1;
    }
    s
}

/// What sysfs says about where a PCI device sits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciTopology {
    /// `numa_node`; `None` when the file says -1 (one node, or the firmware did not say).
    pub numa_node: Option<u32>,
    /// `local_cpulist`, or the NUMA node's `cpulist`; empty when neither is readable.
    pub cpus: Vec<usize>,
}

/// Reads a GPU's NUMA node and nearby cores under a sysfs root (`/sys` on a real
/// machine): `<root>/bus/pci/devices/<0000:17:00.0>/numa_node` and `local_cpulist`, else
/// `<root>/devices/system/node/node<N>/cpulist`. `bus_id` may be in NVML's form.
///
/// # Errors
/// A bus id that is not one, or no such device under the root (the message names the
/// path).
pub fn read_pci_topology(sysfs_root: &Path, bus_id: &str) -> Result<PciTopology, String> {
    let id = sysfs_bus_id(bus_id).ok_or_else(|| format!("{bus_id:?} is not a PCI bus id"))?;
    let dir = sysfs_root.join("bus/pci/devices").join(&id);
    if !dir.is_dir() {
        return Err(format!("{} does not exist", dir.display()));
    }
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let numa_node =
        read(dir.join("numa_node")).and_then(|s| s.trim().parse::<i64>().ok()).and_then(|n| u32::try_from(n).ok());
    let mut cpus = read(dir.join("local_cpulist")).and_then(|s| parse_cpulist(&s).ok()).unwrap_or_default();
    if cpus.is_empty() {
        if let Some(n) = numa_node {
            let node = sysfs_root.join(format!("devices/system/node/node{n}/cpulist"));
            cpus = read(node).and_then(|s| parse_cpulist(&s).ok()).unwrap_or_default();
        }
    }
    Ok(PciTopology { numa_node, cpus })
}

/// The outcome of narrowing a rank's CPU affinity to its GPU's cores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Narrowing {
    /// The CPUs the rank should run on: a subset of the current ones, never more.
    pub cpus: Vec<usize>,
    /// Whether that differs from the current set.
    pub changed: bool,
    /// Why the current set was kept, when it was.
    pub note: Option<String>,
}

/// Narrows `current` (what Slurm, mpirun or the user already bound the rank to) to the
/// cores near its GPU (`gpu_cpus`): their intersection, never a CPU outside `current`. An
/// unknown GPU locality (`gpu_cpus` empty) or an empty intersection keeps `current`, and
/// says why.
pub fn narrow(current: &[usize], gpu_cpus: &[usize]) -> Narrowing {
    let mut cur = current.to_vec();
    cur.sort_unstable();
    cur.dedup();
    if gpu_cpus.is_empty() {
        let note = "the GPU's cores are unknown (no NUMA information): affinity left as it is";
        return Narrowing { cpus: cur, changed: false, note: Some(note.to_string()) };
    }
    let cpus: Vec<usize> = cur.iter().copied().filter(|c| gpu_cpus.contains(c)).collect();
    if cpus.is_empty() {
        let note = format!(
            "the rank is bound to CPUs {} and its GPU is near CPUs {}: no overlap, affinity left as it is \
             (the launcher's binding puts this rank far from its GPU)",
            format_cpulist(&cur),
            format_cpulist(gpu_cpus)
        );
        return Narrowing { cpus: cur, changed: false, note: Some(note) };
    }
    let changed = cpus.len() != cur.len();
    Narrowing { cpus, changed, note: None }
}

/// What one rank brings to the preflight check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightEntry {
    /// World rank.
    pub rank: usize,
    /// Host name.
    pub host: String,
    /// Its device.
    pub device: Device,
    /// The GPU's UUID (or MIG id), when known; without it a GPU cannot be told apart from
    /// another and is not checked for sharing.
    pub uuid: Option<String>,
}

/// What the preflight check demands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightPolicy {
    /// Several ranks may share one GPU (asked for explicitly).
    pub allow_sharing: bool,
    /// Every rank must have a GPU (`--device cuda`).
    pub require_gpu: bool,
}

/// A placement that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Conflict {
    /// Several ranks of one host on one GPU.
    SharedGpu {
        /// The host.
        host: String,
        /// The GPU's UUID.
        uuid: String,
        /// The ranks, ascending.
        ranks: Vec<usize>,
    },
    /// A rank without a GPU when one was demanded.
    NoGpu {
        /// The rank.
        rank: usize,
        /// Its host.
        host: String,
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::SharedGpu { host, uuid, ranks } => {
                let list = ranks.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
                write!(f, "ranks {list} on {host} all use GPU {uuid}")
            }
            Conflict::NoGpu { rank, host } => {
                write!(f, "rank {rank} on {host} sees no GPU but --device cuda demands one")
            }
        }
    }
}

/// The preflight check failed: the conflicts and the plan that has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightError {
    /// What is wrong.
    pub conflicts: Vec<Conflict>,
    /// The plan: one line per rank (rank, host, device, UUID).
    pub table: String,
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "GPU placement check failed before the first collective:")?;
        for c in &self.conflicts {
            writeln!(f, "  - {c}")?;
        }
        let shared = self.conflicts.iter().any(|c| matches!(c, Conflict::SharedGpu { .. }));
        let missing = self.conflicts.iter().any(|c| matches!(c, Conflict::NoGpu { .. }));
        if shared {
            writeln!(
                f,
                "two ranks on one GPU make NCCL fail (\"Duplicate GPU detected\") or hang: start one rank per GPU \
                 (srun --gpus-per-task=1, or -n no larger than the GPUs per node), or allow sharing explicitly"
            )?;
        }
        if missing {
            writeln!(
                f,
                "a rank sees no GPU: check CUDA_VISIBLE_DEVICES and the allocation (srun --gpus-per-task, \
                 --gres=gpu:N), or run with --device cpu"
            )?;
        }
        write!(f, "the plan:\n{}", self.table.trim_end())
    }
}

impl std::error::Error for PreflightError {}

/// The plan as a table: rank, host, device, UUID.
pub fn preflight_table(entries: &[PreflightEntry]) -> String {
    let host_w = entries.iter().map(|e| e.host.len()).max().unwrap_or(0).max(4);
    let dev_w = entries.iter().map(|e| e.device.to_string().len()).max().unwrap_or(0).max(6);
    let mut s = String::new();
    let _ = writeln!(s, "{:>6}  {:<host_w$}  {:<dev_w$}  uuid", "rank", "host", "device");
    let mut sorted: Vec<&PreflightEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.rank);
    for e in sorted {
        let uuid = e.uuid.as_deref().unwrap_or(if e.device == Device::Cpu { "-" } else { "unknown" });
        let _ = writeln!(s, "{:>6}  {:<host_w$}  {:<dev_w$}  {uuid}", e.rank, e.host, e.device.to_string());
    }
    s
}

/// Checks the ranks' placements: no two ranks of one host on one GPU (unless
/// `allow_sharing`), and a GPU for every rank when `require_gpu`. Every rank runs it on the
/// same gathered entries, so every rank fails with the same message.
///
/// # Errors
/// The conflicts and a table of the plan.
pub fn preflight(entries: &[PreflightEntry], policy: PreflightPolicy) -> Result<(), PreflightError> {
    let mut conflicts = Vec::new();
    let mut sorted: Vec<&PreflightEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.rank);
    if policy.require_gpu {
        for e in sorted.iter().filter(|e| e.device == Device::Cpu) {
            conflicts.push(Conflict::NoGpu { rank: e.rank, host: e.host.clone() });
        }
    }
    if !policy.allow_sharing {
        let mut by_gpu: BTreeMap<(&str, String), Vec<usize>> = BTreeMap::new();
        for e in &sorted {
            if let (Device::Cuda { .. }, Some(uuid)) = (&e.device, &e.uuid) {
                by_gpu.entry((e.host.as_str(), uuid.to_ascii_lowercase())).or_default().push(e.rank);
            }
        }
        let mut shared: Vec<Conflict> = by_gpu
            .into_iter()
            .filter(|(_, ranks)| ranks.len() > 1)
            .map(|((host, uuid), ranks)| Conflict::SharedGpu { host: host.to_string(), uuid, ranks })
            .collect();
        shared.sort_by_key(|c| match c {
            Conflict::SharedGpu { ranks, .. } => ranks[0],
            Conflict::NoGpu { rank, .. } => *rank,
        });
        conflicts.extend(shared);
    }
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(PreflightError { conflicts, table: preflight_table(entries) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn gpu(index: u32, uuid: &str, bus: &str) -> GpuInfo {
        GpuInfo {
            index,
            name: "NVIDIA H100".into(),
            uuid: uuid.into(),
            pci_bus_id: bus.into(),
            memory_bytes: 80 << 30,
            minor_number: Some(index),
            numa_node: Some(index / 2),
            cpus: vec![],
        }
    }

    /// Four GPUs in PCI order; their /dev minor numbers run backwards on purpose.
    fn node4() -> Vec<GpuInfo> {
        let mut g = vec![
            gpu(0, "GPU-aaaa0000-1111", "00000000:17:00.0"),
            gpu(1, "GPU-aaaa0001-2222", "00000000:2A:00.0"),
            gpu(2, "GPU-bbbb0002-3333", "00000000:9B:00.0"),
            gpu(3, "GPU-cccc0003-4444", "00000000:C1:00.0"),
        ];
        for (i, x) in g.iter_mut().enumerate() {
            x.minor_number = Some(3 - i as u32);
        }
        g
    }

    fn temp(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("gang-device-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn without_nvml_gpus_come_from_the_visible_list_or_the_device_files() {
        let dev = temp("devfiles");
        for f in ["nvidia0", "nvidia1", "nvidia3", "nvidiactl", "nvidia-uvm", "nvidia-caps", "null"] {
            std::fs::write(dev.join(f), b"").unwrap();
        }
        assert_eq!(device_files(&dev), 3);
        assert_eq!(device_files(&dev.join("absent")), 0);
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        // Nothing names the GPUs: one per device file, ordinals 0..n; rank 4 of 4 wraps.
        let all = VisibleDevices::detect(env(&[]), None).unwrap();
        let gpus = visible_without_nvml(&all, 3).gpus;
        assert_eq!(gpus.iter().map(|g| g.ordinal).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(bind_rank(3, 4, &gpus).device, Device::Cuda { ordinal: 0, visible_id: "0".into() });
        assert_eq!(bind_rank(0, 1, &visible_without_nvml(&all, 0).gpus).device, Device::Cpu);
        // CUDA_VISIBLE_DEVICES: by position, whatever the device files.
        let cvd = VisibleDevices::detect(env(&[("CUDA_VISIBLE_DEVICES", "GPU-ab12,5")]), None).unwrap();
        let gpus = visible_without_nvml(&cvd, 8).gpus;
        assert_eq!(bind_rank(1, 2, &gpus).device, Device::Cuda { ordinal: 1, visible_id: "5".into() });
        // Slurm's ids (no CUDA_VISIBLE_DEVICES): the ids are the ordinals; one id: bound to it.
        let slurm = VisibleDevices::detect(env(&[("SLURM_STEP_GPUS", "2")]), None).unwrap();
        let b = bind_rank(0, 1, &visible_without_nvml(&slurm, 4).gpus);
        assert_eq!((b.device, b.rule), (Device::Cuda { ordinal: 2, visible_id: "2".into() }, BindRule::Bound));
        std::fs::remove_dir_all(&dev).unwrap();
    }

    #[test]
    fn parses_indices_uuids_and_stops_at_invalid_entries() {
        assert!(parse_cuda_visible_devices(None).is_empty());
        assert!(parse_cuda_visible_devices(Some("")).is_empty());
        assert!(parse_cuda_visible_devices(Some("NoDevFiles")).is_empty());
        assert_eq!(parse_cuda_visible_devices(Some("0, 2,3")), vec!["0", "2", "3"]);
        assert_eq!(parse_cuda_visible_devices(Some("1,-1,2")), vec!["1"]);
        assert_eq!(parse_cuda_visible_devices(Some("1,foo,2")), vec!["1"]);
        assert_eq!(parse_cuda_visible_devices(Some("0,,1")), vec!["0"]);
        assert_eq!(parse_cuda_visible_devices(Some("GPU-abc,GPU-def")), vec!["GPU-abc", "GPU-def"]);
        assert_eq!(parse_cuda_visible_devices(Some("GPU-xyz")), Vec::<String>::new());
        let mig = "MIG-4f7b5c4d-1e2a-5b8c-9a0d-123456789abc";
        assert_eq!(parse_cuda_visible_devices(Some(mig)), vec![mig]);
        assert_eq!(DeviceId::parse(mig), Some(DeviceId::Mig(mig.into())));
        assert_eq!(DeviceId::parse("MIG-GPU-abcd/1/0"), Some(DeviceId::Mig("MIG-GPU-abcd/1/0".into())));
        assert_eq!(DeviceId::parse(" 7 "), Some(DeviceId::Index(7)));
        assert_eq!(DeviceId::parse("GPU-ABCD"), Some(DeviceId::Uuid("GPU-abcd".into())));
        assert_eq!(DeviceId::parse("GPU-"), None);
    }

    #[test]
    fn slurm_lists_take_indices_and_ranges() {
        assert_eq!(parse_slurm_gpus("0,1").unwrap(), ["0", "1"]);
        assert_eq!(parse_slurm_gpus("0-2,5").unwrap(), ["0", "1", "2", "5"]);
        assert!(parse_slurm_gpus("").unwrap().is_empty());
        assert!(parse_slurm_gpus("gpu:2").unwrap_err().contains("gpu:2"));
    }

    #[test]
    fn local_rank_wraps_around_the_visible_devices() {
        let vis = parse_cuda_visible_devices(Some("4,5"));
        assert_eq!(device_for(0, &vis), Device::Cuda { ordinal: 0, visible_id: "4".into() });
        assert_eq!(device_for(3, &vis), Device::Cuda { ordinal: 1, visible_id: "5".into() });
        assert_eq!(device_for(3, &[]), Device::Cpu);
        assert_eq!(device_for(1, &vis).to_string(), "cuda:1 (5)");
        assert_eq!(device_for(1, &parse_cuda_visible_devices(Some("0,1"))).to_string(), "cuda:1");
    }

    #[test]
    fn cuda_visible_devices_wins_over_slurm_and_the_script() {
        let e = [("CUDA_VISIBLE_DEVICES", "1,0"), ("SLURM_JOB_GPUS", "2,3"), ("SLURM_STEP_GPUS", "2")];
        let v = VisibleDevices::detect(env(&e), Some(Path::new("/nonexistent/script.sh"))).unwrap();
        assert_eq!(v.source, VisibleSource::CudaVisibleDevices);
        assert_eq!(v.ids, ["1", "0"]);
        assert_eq!(v.notes.len(), 3, "{:?}", v.notes);
        assert!(v.notes.iter().any(|n| n.contains("script.sh not run")));
        assert!(v.notes.iter().any(|n| n.starts_with("SLURM_JOB_GPUS=\"2,3\" ignored")));
        assert_eq!(v.describe(), "CUDA_VISIBLE_DEVICES=\"1,0\"");
        // Empty hides everything, and still wins.
        let v = VisibleDevices::detect(env(&[("CUDA_VISIBLE_DEVICES", ""), ("SLURM_JOB_GPUS", "0")]), None).unwrap();
        assert_eq!((v.source, v.ids.len()), (VisibleSource::CudaVisibleDevices, 0));
        // An invalid entry is reported.
        let v = VisibleDevices::detect(env(&[("CUDA_VISIBLE_DEVICES", "0,x,1")]), None).unwrap();
        assert!(v.notes[0].contains("first invalid entry"), "{:?}", v.notes);
    }

    #[test]
    fn slurm_step_then_job_then_gpu_device_ordinal_then_everything() {
        let e = [("SLURM_JOB_GPUS", "0-3"), ("SLURM_STEP_GPUS", "2,3"), ("GPU_DEVICE_ORDINAL", "0")];
        let v = VisibleDevices::detect(env(&e), None).unwrap();
        assert_eq!((v.source.clone(), v.ids.clone()), (VisibleSource::SlurmStepGpus, vec!["2".into(), "3".into()]));
        assert_eq!(v.notes.len(), 2);
        let v = VisibleDevices::detect(env(&e[..1]), None).unwrap();
        assert_eq!((v.source, v.ids.len()), (VisibleSource::SlurmJobGpus, 4));
        let v = VisibleDevices::detect(env(&e[2..]), None).unwrap();
        assert_eq!(v.source, VisibleSource::GpuDeviceOrdinal);
        let v = VisibleDevices::detect(env(&[]), None).unwrap();
        assert_eq!(v.source, VisibleSource::AllDevices);
        let err = VisibleDevices::detect(env(&[("SLURM_JOB_GPUS", "(null)")]), None).unwrap_err();
        assert!(err.to_string().starts_with("SLURM_JOB_GPUS=\"(null)\""), "{err}");
    }

    #[test]
    fn spark_discovery_output_is_parsed_and_garbage_is_named() {
        assert_eq!(parse_discovery_output(r#"{"name": "gpu", "addresses": ["0", "1"]}"#).unwrap(), ["0", "1"]);
        assert!(parse_discovery_output(r#"{"name":"gpu","addresses":[]}"#).unwrap().is_empty());
        let e = parse_discovery_output(r#"{"name": "fpga", "addresses": ["0"]}"#).unwrap_err();
        assert!(e.contains("\"fpga\""), "{e}");
        let e = parse_discovery_output("GPU 0: NVIDIA H100").unwrap_err();
        assert!(e.contains("GPU 0: NVIDIA H100") && e.contains("addresses"), "{e}");
        let e = parse_discovery_output(r#"{"name": "gpu", "addresses": ["zero"]}"#).unwrap_err();
        assert!(e.contains("\"zero\""), "{e}");
    }

    #[cfg(unix)]
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[cfg(unix)]
    #[test]
    fn a_discovery_script_is_run_unless_cuda_visible_devices_is_set() {
        let dir = temp("script");
        let good = script(&dir, "good.sh", r#"echo '{"name": "gpu", "addresses": ["1", "3"]}'"#);
        let v = VisibleDevices::detect(env(&[("SLURM_JOB_GPUS", "0")]), Some(&good)).unwrap();
        assert_eq!(v.source, VisibleSource::DiscoveryScript { script: good.clone() });
        assert_eq!(v.ids, ["1", "3"]);
        assert!(v.notes[0].contains("SLURM_JOB_GPUS"), "{:?}", v.notes);
        assert!(v.describe().contains("good.sh"));

        let failing = script(&dir, "failing.sh", "echo 'nvidia-smi: not found' >&2; exit 3");
        let e = VisibleDevices::detect(env(&[]), Some(&failing)).unwrap_err().to_string();
        assert!(e.contains("failing.sh") && e.contains("code 3") && e.contains("nvidia-smi: not found"), "{e}");

        let garbage = script(&dir, "garbage.sh", "echo hello");
        let e = VisibleDevices::detect(env(&[]), Some(&garbage)).unwrap_err().to_string();
        assert!(e.contains("garbage.sh") && e.contains("hello"), "{e}");

        let e = VisibleDevices::detect(env(&[]), Some(&dir.join("missing.sh"))).unwrap_err().to_string();
        assert!(e.contains("missing.sh") && e.contains("cannot be run"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bus_ids_are_normalised_to_the_kernels_form() {
        assert_eq!(sysfs_bus_id("00000000:17:00.0").as_deref(), Some("0000:17:00.0"));
        assert_eq!(sysfs_bus_id("00000000:C1:00.0").as_deref(), Some("0000:c1:00.0"));
        assert_eq!(sysfs_bus_id("0000:c1:00.0").as_deref(), Some("0000:c1:00.0"));
        assert_eq!(sysfs_bus_id("1b:00.0").as_deref(), Some("0000:1b:00.0"));
        assert_eq!(sysfs_bus_id("GPU-abc"), None);
        assert_eq!(sysfs_bus_id("0:zz:00.0"), None);
    }

    #[test]
    fn ids_are_found_by_index_minor_uuid_prefix_and_bus_id() {
        let g = node4();
        assert_eq!(find_gpu("1", &g, false).unwrap().index, 1);
        // Slurm's ids follow /dev/nvidiaN: minor 1 is NVML index 2 here.
        assert_eq!(find_gpu("1", &g, true).unwrap().index, 2);
        assert_eq!(find_gpu("GPU-bbbb", &g, false).unwrap().index, 2);
        assert_eq!(find_gpu("GPU-CCCC0003-4444", &g, false).unwrap().index, 3);
        assert!(find_gpu("GPU-aaaa", &g, false).unwrap_err().contains("matches 2 GPUs"));
        assert!(find_gpu("GPU-dddd", &g, false).unwrap_err().contains("no GPU"));
        assert_eq!(find_gpu("0000:9b:00.0", &g, false).unwrap().index, 2);
        assert_eq!(find_gpu("00000000:2A:00.0", &g, false).unwrap().index, 1);
        assert!(find_gpu("7", &g, false).unwrap_err().contains("no GPU with index 7"));
        assert!(find_gpu("MIG-x", &g, false).is_err());
    }

    #[test]
    fn cuda_visible_devices_are_matched_by_position_and_stop_where_cuda_stops() {
        let g = node4();
        let v = VisibleDevices::detect(env(&[("CUDA_VISIBLE_DEVICES", "GPU-cccc,1")]), None).unwrap();
        let m = match_visible(&v, &g);
        assert_eq!(
            m.gpus.iter().map(|x| (x.ordinal, x.gpu.as_ref().unwrap().index)).collect::<Vec<_>>(),
            [(0, 3), (1, 1)]
        );
        assert_eq!(m.gpus[0].uuid(), Some("GPU-cccc0003-4444"));
        let v = VisibleDevices::detect(env(&[("CUDA_VISIBLE_DEVICES", "0,9,1")]), None).unwrap();
        let m = match_visible(&v, &g);
        assert_eq!(m.gpus.len(), 1);
        assert!(m.notes[0].contains("no GPU with index 9") && m.notes[0].contains("1 after it"), "{:?}", m.notes);
        // Without NVML: by position, no UUIDs.
        let m = match_visible(&v, &[]);
        assert_eq!(m.gpus.iter().map(|x| x.ordinal).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(m.gpus.iter().all(|x| x.uuid().is_none()));
    }

    #[test]
    fn slurm_ids_are_node_gpus_and_keep_their_ordinal() {
        let g = node4();
        let v = VisibleDevices::detect(env(&[("SLURM_STEP_GPUS", "0,1")]), None).unwrap();
        let m = match_visible(&v, &g);
        // Minor 0 is NVML index 3, minor 1 is index 2; CUDA (seeing all four) numbers them so.
        assert_eq!(m.gpus.iter().map(|x| (x.ordinal, x.id.as_str())).collect::<Vec<_>>(), [(3, "0"), (2, "1")]);
        let v = VisibleDevices::detect(env(&[("SLURM_JOB_GPUS", "1,8")]), None).unwrap();
        let m = match_visible(&v, &g);
        assert_eq!(m.gpus.len(), 1);
        assert!(m.notes[0].contains("/dev/nvidia8") && m.notes[0].contains("left out"), "{:?}", m.notes);
        // Without NVML an index is its own ordinal, a UUID cannot be placed.
        let v = VisibleDevices::detect(env(&[("SLURM_JOB_GPUS", "2,GPU-abcd")]), None).unwrap();
        let m = match_visible(&v, &[]);
        assert_eq!(m.gpus.iter().map(|x| x.ordinal).collect::<Vec<_>>(), [2]);
        assert!(m.notes[0].contains("GPU-abcd"), "{:?}", m.notes);
        // Nothing set: every GPU NVML lists, in its order.
        let all = VisibleDevices::detect(env(&[]), None).unwrap();
        assert_eq!(match_visible(&all, &g).gpus.len(), 4);
        assert!(match_visible(&all, &[]).gpus.is_empty());
    }

    #[test]
    fn mig_ids_are_kept_and_are_their_own_uuid() {
        let mig = "MIG-4f7b5c4d-1e2a-5b8c-9a0d-123456789abc";
        let v = VisibleDevices::detect(env(&[("CUDA_VISIBLE_DEVICES", mig)]), None).unwrap();
        let m = match_visible(&v, &node4());
        assert!(m.gpus[0].mig && m.gpus[0].gpu.is_none());
        assert_eq!(m.gpus[0].uuid(), Some(mig));
    }

    #[test]
    fn mixed_models_without_pci_order_get_a_caveat() {
        let mut g = node4();
        assert!(ordering_caveat(&g, None).is_none());
        g[1].name = "NVIDIA A100".into();
        assert!(ordering_caveat(&g, None).unwrap().contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"));
        assert!(ordering_caveat(&g, Some("PCI_BUS_ID")).is_none());
        assert!(ordering_caveat(&[], None).is_none());
    }

    fn visible(n: usize) -> Vec<VisibleGpu> {
        let g = node4();
        (0..n).map(|i| VisibleGpu { ordinal: i, id: i.to_string(), gpu: Some(g[i % 4].clone()), mig: false }).collect()
    }

    #[test]
    fn a_rank_that_sees_one_gpu_uses_it() {
        let one = visible(1);
        for r in 0..4 {
            let b = bind_rank(r, 4, &one);
            assert_eq!(
                (b.rule, b.device.clone()),
                (BindRule::Bound, Device::Cuda { ordinal: 0, visible_id: "0".into() })
            );
        }
        let b = bind_rank(2, 4, &[]);
        assert_eq!((b.rule, &b.device, b.uuid()), (BindRule::NoGpu, &Device::Cpu, None));
    }

    #[test]
    fn plans_for_one_to_eight_ranks_per_node() {
        for gpus in [1, 2, 4, 8] {
            let vis: Vec<VisibleGpu> = (0..gpus)
                .map(|i| {
                    let mut g = gpu(i as u32, &format!("GPU-{i:04x}"), &format!("0000:{:02x}:00.0", 16 + i));
                    g.minor_number = None;
                    VisibleGpu { ordinal: i, id: i.to_string(), gpu: Some(g), mig: false }
                })
                .collect();
            for ranks in 1..=8 {
                for bound in [false, true] {
                    let plan = plan_node(ranks, &vis, bound);
                    assert_eq!(plan.len(), ranks);
                    let shares = ranks > gpus;
                    assert_eq!(plan.iter().any(|b| !b.shared_with.is_empty()), shares, "{gpus} GPUs, {ranks} ranks");
                    for b in &plan {
                        let want = b.local_rank % gpus;
                        assert_eq!(b.uuid(), Some(format!("GPU-{want:04x}").as_str()));
                        // A bound task sees only its GPU, as cuda:0; else local rank picks.
                        let ordinal = if bound || gpus == 1 { 0 } else { want };
                        assert_eq!(b.device, Device::Cuda { ordinal, visible_id: want.to_string() });
                        let rule = if bound || gpus == 1 { BindRule::Bound } else { BindRule::LocalRank };
                        assert_eq!(b.rule, rule);
                        let peers: Vec<usize> =
                            (0..ranks).filter(|&o| o != b.local_rank && o % gpus == b.local_rank % gpus).collect();
                        assert_eq!(b.shared_with, peers);
                    }
                }
            }
        }
        assert!(plan_node(3, &[], false).iter().all(|b| b.device == Device::Cpu && b.shared_with.is_empty()));
    }

    #[test]
    fn cpulists_round_trip() {
        assert_eq!(parse_cpulist("0-3,8-11\n").unwrap(), [0, 1, 2, 3, 8, 9, 10, 11]);
        assert_eq!(parse_cpulist("5").unwrap(), [5]);
        assert_eq!(parse_cpulist("").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpulist("0-7:2").unwrap(), [0, 2, 4, 6]);
        assert_eq!(parse_cpulist("3,1,1-2").unwrap(), [1, 2, 3]);
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("a-b").unwrap_err().contains("a-b"));
        assert_eq!(format_cpulist(&[0, 1, 2, 3, 8, 9, 10, 11]), "0-3,8-11");
        assert_eq!(format_cpulist(&[5, 1, 3, 2]), "1-3,5");
        assert_eq!(format_cpulist(&[]), "");
        for s in ["0-3,8-11", "0,2,4", "7", "0-63"] {
            assert_eq!(format_cpulist(&parse_cpulist(s).unwrap()), s);
        }
    }

    fn fake_sysfs(root: &Path, bus: &str, numa: &str, local: Option<&str>) {
        let dir = root.join("bus/pci/devices").join(bus);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("numa_node"), format!("{numa}\n")).unwrap();
        if let Some(l) = local {
            std::fs::write(dir.join("local_cpulist"), format!("{l}\n")).unwrap();
        }
    }

    #[test]
    fn topology_is_read_from_a_sysfs_root() {
        let root = temp("sysfs");
        fake_sysfs(&root, "0000:17:00.0", "0", Some("0-3,8-11"));
        fake_sysfs(&root, "0000:c1:00.0", "1", None);
        fake_sysfs(&root, "0000:2a:00.0", "-1", Some("0-15"));
        let node1 = root.join("devices/system/node/node1");
        std::fs::create_dir_all(&node1).unwrap();
        std::fs::write(node1.join("cpulist"), "4-7,12-15\n").unwrap();

        // NVML's form of the bus id finds the kernel's directory.
        let t = read_pci_topology(&root, "00000000:17:00.0").unwrap();
        assert_eq!((t.numa_node, t.cpus), (Some(0), vec![0, 1, 2, 3, 8, 9, 10, 11]));
        // No local_cpulist: the NUMA node's cpulist.
        let t = read_pci_topology(&root, "00000000:C1:00.0").unwrap();
        assert_eq!((t.numa_node, format_cpulist(&t.cpus)), (Some(1), "4-7,12-15".to_string()));
        // numa_node -1: no node, the cores still known.
        let t = read_pci_topology(&root, "0000:2a:00.0").unwrap();
        assert_eq!((t.numa_node, t.cpus.len()), (None, 16));
        let e = read_pci_topology(&root, "0000:99:00.0").unwrap_err();
        assert!(e.contains("0000:99:00.0") && e.contains("does not exist"), "{e}");
        assert!(read_pci_topology(&root, "GPU-1").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn narrowing_intersects_and_never_widens() {
        let gpu_cpus = parse_cpulist("0-3,8-11").unwrap();
        // Unbound rank (all 16 cores): narrowed to the GPU's node.
        let n = narrow(&parse_cpulist("0-15").unwrap(), &gpu_cpus);
        assert_eq!((format_cpulist(&n.cpus), n.changed, n.note), ("0-3,8-11".to_string(), true, None));
        // Slurm bound it to 2-9: the intersection only.
        let n = narrow(&parse_cpulist("2-9").unwrap(), &gpu_cpus);
        assert_eq!(format_cpulist(&n.cpus), "2-3,8-9");
        // Already inside: unchanged.
        let n = narrow(&[1, 2], &gpu_cpus);
        assert_eq!((n.cpus, n.changed), (vec![1, 2], false));
        // Bound far from the GPU: kept, and said why.
        let n = narrow(&[4, 5], &gpu_cpus);
        assert_eq!((n.cpus, n.changed), (vec![4, 5], false));
        assert!(n.note.unwrap().contains("no overlap"));
        // Unknown locality: kept.
        let n = narrow(&[4, 5], &[]);
        assert!(!n.changed && n.note.unwrap().contains("unknown"));
    }

    fn entry(rank: usize, host: &str, uuid: Option<&str>) -> PreflightEntry {
        let device = match uuid {
            Some(u) => Device::Cuda { ordinal: 0, visible_id: u.into() },
            None => Device::Cpu,
        };
        PreflightEntry { rank, host: host.into(), device, uuid: uuid.map(str::to_string) }
    }

    #[test]
    fn preflight_passes_one_rank_per_gpu_and_the_same_uuid_on_two_hosts() {
        let e = vec![
            entry(0, "n1", Some("GPU-a")),
            entry(1, "n1", Some("GPU-b")),
            entry(2, "n2", Some("GPU-a")),
            entry(3, "n2", Some("GPU-b")),
        ];
        preflight(&e, PreflightPolicy { allow_sharing: false, require_gpu: true }).unwrap();
        // CPU ranks pass when no GPU is demanded.
        preflight(&[entry(0, "n1", None), entry(1, "n1", None)], PreflightPolicy::default()).unwrap();
    }

    #[test]
    fn preflight_names_two_ranks_on_one_gpu_with_the_plan() {
        let e = vec![
            entry(2, "n1", Some("GPU-b")),
            entry(0, "n1", Some("GPU-a")),
            entry(1, "n1", Some("GPU-A")),
            entry(3, "n2", Some("GPU-a")),
        ];
        let err = preflight(&e, PreflightPolicy::default()).unwrap_err();
        assert_eq!(err.conflicts, [Conflict::SharedGpu { host: "n1".into(), uuid: "gpu-a".into(), ranks: vec![0, 1] }]);
        let msg = err.to_string();
        assert!(msg.contains("ranks 0, 1 on n1 all use GPU gpu-a"), "{msg}");
        assert!(msg.contains("Duplicate GPU detected"), "{msg}");
        // The table lists every rank in order, with host, device and UUID.
        let rows: Vec<&str> = msg.lines().skip_while(|l| !l.starts_with("the plan")).skip(2).collect();
        assert_eq!(rows.len(), 4, "{msg}");
        assert!(rows[0].trim_start().starts_with("0  n1") && rows[0].ends_with("GPU-a"), "{msg}");
        assert!(rows[3].trim_start().starts_with("3  n2"), "{msg}");
        // Sharing allowed: fine.
        preflight(&e, PreflightPolicy { allow_sharing: true, require_gpu: false }).unwrap();
    }

    #[test]
    fn preflight_names_a_rank_without_a_gpu_under_a_demand() {
        let e = vec![entry(0, "n1", Some("GPU-a")), entry(1, "n1", None)];
        preflight(&e, PreflightPolicy::default()).unwrap();
        let err = preflight(&e, PreflightPolicy { allow_sharing: false, require_gpu: true }).unwrap_err();
        assert_eq!(err.conflicts, [Conflict::NoGpu { rank: 1, host: "n1".into() }]);
        let msg = err.to_string();
        assert!(msg.contains("rank 1 on n1 sees no GPU") && msg.contains("--device cpu"), "{msg}");
        // A GPU whose UUID is unknown cannot be checked for sharing, and says so.
        let unknown = PreflightEntry { uuid: None, ..entry(2, "n1", Some("0")) };
        let t = preflight_table(&[unknown]);
        assert!(t.lines().nth(1).unwrap().ends_with("unknown"), "{t}");
    }

    #[test]
    fn records_round_trip_as_json() {
        let g = node4().remove(0);
        let back: GpuInfo = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(back, g);
        let e = entry(1, "n1", Some("GPU-a"));
        let back: PreflightEntry = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }
}

/// How the gradients of GPU ranks are summed (`--device-comm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceComm {
    /// NCCL where every rank has it and its own GPU, else host staging.
    #[default]
    Auto,
    /// NCCL, or an error saying why not.
    Nccl,
    /// Host staging: device to host, the host communicator, host to device.
    Host,
}

impl std::str::FromStr for DeviceComm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceComm::Auto),
            "nccl" => Ok(DeviceComm::Nccl),
            "host" => Ok(DeviceComm::Host),
            other => Err(format!("--device-comm {other:?}: expected one of nccl, host, auto")),
        }
    }
}

impl std::fmt::Display for DeviceComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceComm::Auto => "auto",
            DeviceComm::Nccl => "nccl",
            DeviceComm::Host => "host",
        })
    }
}
