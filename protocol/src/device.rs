//! The rank-to-device plan: rank-per-GPU, `local_rank % visible devices`.

use serde::{Deserialize, Serialize};

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
        /// The entry of `CUDA_VISIBLE_DEVICES` it came from (an index or a `GPU-...` UUID).
        visible_id: String,
    },
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda { ordinal, visible_id } if visible_id == &ordinal.to_string() => {
                write!(f, "cuda:{ordinal}")
            }
            Device::Cuda { ordinal, visible_id } => write!(f, "cuda:{ordinal} ({visible_id})"),
        }
    }
}

/// Parses `CUDA_VISIBLE_DEVICES` into the list of visible device ids.
///
/// Unset, empty, `NoDevFiles` and anything from a leading negative index on (CUDA stops
/// at the first invalid entry) mean fewer or no devices.
pub fn parse_cuda_visible_devices(value: Option<&str>) -> Vec<String> {
    let Some(value) = value else { return Vec::new() };
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.is_empty() || item.eq_ignore_ascii_case("NoDevFiles") || item.starts_with('-') {
            break;
        }
        out.push(item.to_string());
    }
    out
}

/// The device of the rank with local rank `local_rank`, given the visible devices.
pub fn device_for(local_rank: usize, visible: &[String]) -> Device {
    if visible.is_empty() {
        return Device::Cpu;
    }
    let ordinal = local_rank % visible.len();
    Device::Cuda { ordinal, visible_id: visible[ordinal].clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_indices_uuids_and_stops_at_invalid_entries() {
        assert!(parse_cuda_visible_devices(None).is_empty());
        assert!(parse_cuda_visible_devices(Some("")).is_empty());
        assert!(parse_cuda_visible_devices(Some("NoDevFiles")).is_empty());
        assert_eq!(parse_cuda_visible_devices(Some("0, 2,3")), vec!["0", "2", "3"]);
        assert_eq!(parse_cuda_visible_devices(Some("1,-1,2")), vec!["1"]);
        assert_eq!(parse_cuda_visible_devices(Some("GPU-abc,GPU-def")), vec!["GPU-abc", "GPU-def"]);
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
}
