//! GPU discovery through NVML: name, UUID, PCI bus id, memory, `/dev` minor number, NUMA
//! node and nearby cores of every GPU of the node.
//!
//! NVML is the driver's own library (`libnvidia-ml.so.1`), loaded at run time: without
//! the driver, [`discover`] returns [`Error::LibraryMissing`], never panics. NVML numbers
//! GPUs in PCI bus order and ignores `CUDA_VISIBLE_DEVICES`; match its devices to CUDA
//! ordinals with [`gang_protocol::device::match_visible`].
//!
//! ```
//! match gang_gpu::nvml::discover() {
//!     Ok(gpus) => gpus.iter().for_each(|g| println!("{} {} {}", g.index, g.name, g.uuid)),
//!     Err(e) => println!("{e}"), // "NVML (...) is not available: no NVIDIA driver ..."
//! }
//! ```

use crate::error::{Error, Result};
use gang_protocol::device::{read_pci_topology, GpuInfo};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use std::ffi::OsStr;
use std::path::Path;

/// The library NVML is loaded from: the driver ships it under this name (the unversioned
/// `libnvidia-ml.so` exists only where the CUDA toolkit's stubs are installed).
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// What [`Error::LibraryMissing`] calls NVML.
const LIBRARY: &str = "NVML (the NVIDIA driver's management library)";

/// `cpu_affinity` is asked for this many 64-bit words: 4096 CPUs.
const AFFINITY_WORDS: usize = 64;

/// Every GPU of the node, in NVML's (PCI bus) order. The NUMA node and nearby cores come
/// from sysfs (`/sys/bus/pci/devices/<bus id>/numa_node`, `local_cpulist`), else from NVML.
///
/// # Errors
/// [`Error::LibraryMissing`] without the driver's NVML ("no NVIDIA driver
/// (libnvidia-ml.so.1 not found)"); [`Error::NoDevice`] when the driver is not loaded or
/// NVML is not allowed to talk to it; [`Error::Driver`] when a GPU cannot be queried. A
/// node whose driver sees no GPU gives an empty list.
pub fn discover() -> Result<Vec<GpuInfo>> {
    discover_from(OsStr::new(NVML_LIBRARY), Path::new("/sys"))
}

/// [`discover`] with NVML loaded from `library` and topology read under `sysfs_root`.
///
/// # Errors
/// As [`discover`].
pub fn discover_from(library: &OsStr, sysfs_root: &Path) -> Result<Vec<GpuInfo>> {
    let nvml = Nvml::builder().lib_path(library).init().map_err(|e| init_error(library, e))?;
    let count = nvml.device_count().map_err(|e| Error::driver("counting GPUs through NVML", e))?;
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        gpus.push(describe(&nvml, index, sysfs_root)?);
    }
    Ok(gpus)
}

fn describe(nvml: &Nvml, index: u32, sysfs_root: &Path) -> Result<GpuInfo> {
    let what = |q: &str| format!("reading the {q} of GPU {index} through NVML");
    let dev = nvml.device_by_index(index).map_err(|e| Error::driver(what("handle"), e))?;
    let name = dev.name().map_err(|e| Error::driver(what("name"), e))?;
    let uuid = dev.uuid().map_err(|e| Error::driver(what("UUID"), e))?;
    let pci_bus_id = dev.pci_info().map_err(|e| Error::driver(what("PCI bus id"), e))?.bus_id;
    // Memory can be refused (NotSupported on some MIG setups); the GPU is still usable.
    let memory_bytes = dev.memory_info().map(|m| m.total).unwrap_or(0);
    let minor_number = dev.minor_number().ok();
    let topo = read_pci_topology(sysfs_root, &pci_bus_id).unwrap_or_default();
    let numa_node = topo.numa_node.or_else(|| dev.numa_node_id().ok());
    let cpus = if topo.cpus.is_empty() {
        dev.cpu_affinity(AFFINITY_WORDS).map(|words| cpus_from_mask(&words)).unwrap_or_default()
    } else {
        topo.cpus
    };
    Ok(GpuInfo { index, name, uuid, pci_bus_id, memory_bytes, minor_number, numa_node, cpus })
}

/// Turns NVML's failure to start into gang-gpu's error.
fn init_error(library: &OsStr, e: NvmlError) -> Error {
    let lib = library.to_string_lossy();
    match e {
        NvmlError::LibloadingError(err) => Error::LibraryMissing {
            library: LIBRARY,
            hint: format!(
                "no NVIDIA driver ({lib} not found: {err}); install the driver, or run where one is \
                 (ranks fall back to the CPU unless --device cuda demands a GPU)"
            ),
        },
        NvmlError::FailedToLoadSymbol(sym) => Error::LibraryMissing {
            library: LIBRARY,
            hint: format!("{lib} lacks a function gang needs ({sym}); the NVIDIA driver is too old"),
        },
        NvmlError::DriverNotLoaded => {
            Error::NoDevice(format!("{lib} was found but the NVIDIA kernel driver is not loaded (nvidia-smi says why)"))
        }
        NvmlError::NoPermission => {
            Error::NoDevice(format!("NVML ({lib}) may not talk to the driver: no permission on /dev/nvidia*"))
        }
        other => Error::driver(format!("starting NVML ({lib})"), other),
    }
}

/// CPU numbers from an affinity bitmask of 64-bit words (NVML's `cpu_affinity`, bit `i` of
/// word `w` is CPU `64 w + i`).
pub fn cpus_from_mask(words: &[std::ffi::c_ulong]) -> Vec<usize> {
    let bits = std::ffi::c_ulong::BITS as usize;
    let mut cpus = Vec::new();
    for (w, &word) in words.iter().enumerate() {
        for i in 0..bits {
            if word & (1 << i) != 0 {
                cpus.push(w * bits + i);
            }
        }
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clean_error_that_names_it() {
        let err = discover_from(OsStr::new("/nonexistent/libnvidia-ml.so.1"), Path::new("/sys")).unwrap_err();
        let Error::LibraryMissing { library, hint } = &err else { panic!("not LibraryMissing: {err}") };
        assert!(library.contains("NVML"), "{err}");
        assert!(hint.contains("no NVIDIA driver (/nonexistent/libnvidia-ml.so.1 not found"), "{err}");
    }

    /// On a machine without the driver (this one) `discover` says so; on a GPU machine it
    /// lists GPUs with their UUIDs and bus ids.
    #[test]
    fn discover_lists_gpus_or_says_the_driver_is_missing() {
        match discover() {
            Err(e @ Error::LibraryMissing { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("NVML") && msg.contains("no NVIDIA driver (libnvidia-ml.so.1 not found"), "{msg}");
                eprintln!("no NVIDIA driver here, as expected on a machine without a GPU: {msg}");
            }
            Err(e @ Error::NoDevice(_)) => eprintln!("NVML is present but unusable: {e}"),
            Err(e) => panic!("unexpected error from NVML discovery: {e}"),
            Ok(gpus) => {
                for (i, g) in gpus.iter().enumerate() {
                    assert_eq!(g.index as usize, i);
                    assert!(g.uuid.starts_with("GPU-") && !g.name.is_empty(), "{g:?}");
                    assert!(gang_protocol::device::sysfs_bus_id(&g.pci_bus_id).is_some(), "{g:?}");
                    assert!(g.memory_bytes > 0, "{g:?}");
                }
                eprintln!("NVML found {} GPU(s): {gpus:?}", gpus.len());
            }
        }
    }

    #[test]
    fn affinity_masks_become_cpu_numbers() {
        assert_eq!(cpus_from_mask(&[0b1011, 0, 1]), [0, 1, 3, 128]);
        assert!(cpus_from_mask(&[0, 0]).is_empty());
        assert_eq!(cpus_from_mask(&[1 << 63]), [63]);
    }
}
