//! The rank side of GPU binding: narrowing the rank's CPU affinity to the cores near its
//! GPU, and the preflight check that no two ranks of a node hold the same GPU.
//!
//! The plan itself (which GPU, which cores, what counts as a conflict) is pure logic in
//! [`gang_protocol::device`]; this module applies it to the calling thread
//! (`sched_setaffinity`) and to the gang (an allgather over the host [`Comm`]).
//!
//! ```
//! use gang::gpu_bind::preflight;
//! use gang::{execute, Config, Device};
//! use gang_protocol::device::PreflightPolicy;
//!
//! // Two ranks of one host on two different GPUs: the check passes on every rank.
//! execute(Config::local(2), |ctx| {
//!     let device = Device::Cuda { ordinal: ctx.rank(), visible_id: ctx.rank().to_string() };
//!     let uuid = format!("GPU-{}", ctx.rank());
//!     preflight(ctx.comm(), "node1", &device, Some(&uuid), PreflightPolicy::default())
//! })
//! .unwrap();
//! ```
// The only unsafe code: the two affinity system calls of `libc`.
#![allow(unsafe_code)]

use crate::comm::Comm;
use crate::error::{Error, Result};
use gang_protocol::device::{self, Device, Narrowing, PreflightEntry, PreflightPolicy};

/// The CPUs the calling thread may run on (`sched_getaffinity`).
///
/// # Errors
/// The system call fails (the error names it).
pub fn current_affinity() -> Result<Vec<usize>> {
    // SAFETY: an all-zero `cpu_set_t` is a valid, empty set (it is a plain bit array).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable `cpu_set_t` and the size passed is its size; pid 0
    // is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(Error::external(format!("sched_getaffinity failed: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `CPU_ISSET` only reads `set`, and every index is below `CPU_SETSIZE`.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

fn set_affinity(cpus: &[usize]) -> Result<()> {
    set_affinity_of(0, cpus)
}

/// Sets the affinity of thread `tid` (0: the calling thread).
fn set_affinity_of(tid: libc::pid_t, cpus: &[usize]) -> Result<()> {
    // SAFETY: an all-zero `cpu_set_t` is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `c` is below `CPU_SETSIZE`, so the bit lies inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid `cpu_set_t` and the size passed is its size; `tid` is a
    // thread of this process (or 0, the calling thread).
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        let cpus = device::format_cpulist(cpus);
        return Err(Error::external(format!("sched_setaffinity({cpus}) failed: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// The CPUs thread `tid` of this process may run on.
fn affinity_of(tid: libc::pid_t) -> Result<Vec<usize>> {
    // SAFETY: an all-zero `cpu_set_t` is a valid, empty set (it is a plain bit array).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable `cpu_set_t` and the size passed is its size.
    let rc = unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(Error::external(format!("sched_getaffinity failed: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `CPU_ISSET` only reads `set`, and every index is below `CPU_SETSIZE`.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// [`narrow_affinity`] for every thread the process has now (`/proc/self/task`: the
/// kernels' thread pool started before the GPU was chosen), each narrowed from its own
/// mask, never widened; threads started later inherit their creator's. Returns the
/// calling thread's narrowing.
///
/// # Errors
/// The calling thread's `sched_getaffinity`/`sched_setaffinity` fails (other threads that
/// ended meanwhile are passed over).
pub fn narrow_process_affinity(gpu_cpus: &[usize]) -> Result<Narrowing> {
    let mine = narrow_affinity(gpu_cpus)?;
    if !mine.changed {
        return Ok(mine);
    }
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
            if let Ok(current) = affinity_of(tid) {
                let n = device::narrow(&current, gpu_cpus);
                if n.changed {
                    let _ = set_affinity_of(tid, &n.cpus);
                }
            }
        }
    }
    Ok(mine)
}

/// Narrows the calling thread's CPU affinity to the cores near its GPU (`gpu_cpus`, from
/// [`GpuInfo::cpus`](gang_protocol::device::GpuInfo) or sysfs): the intersection with what
/// Slurm, mpirun or the user already bound it to, never a CPU more. An empty intersection
/// or unknown GPU locality leaves the affinity as it is; the returned [`Narrowing`] says
/// why. Call it before the rank starts its threads: threads inherit the mask when they are
/// created, those already running keep theirs.
///
/// # Errors
/// `sched_getaffinity` or `sched_setaffinity` fails.
pub fn narrow_affinity(gpu_cpus: &[usize]) -> Result<Narrowing> {
    let current = current_affinity()?;
    let n = device::narrow(&current, gpu_cpus);
    if n.changed {
        set_affinity(&n.cpus)?;
    }
    Ok(n)
}

/// Checks, before the first collective, that the gang's GPU placement can work: every rank
/// brings its host, its device and the GPU's UUID (`None` when unknown), the ranks
/// allgather them, and every rank runs [`device::preflight`] on the same list, so every rank
/// fails with the same message: the conflicts and a table of the plan.
///
/// A collective: every rank of `comm` must call it.
///
/// # Errors
/// [`Error::Environment`] (a usage error: a restart cannot mend it) when two ranks of one
/// host hold the same GPU (unless `policy.allow_sharing`) or a rank has no GPU under
/// `policy.require_gpu`; communication errors.
pub fn preflight(comm: &Comm, host: &str, device: &Device, uuid: Option<&str>, policy: PreflightPolicy) -> Result<()> {
    let mine = PreflightEntry {
        rank: comm.rank(),
        host: host.to_string(),
        device: device.clone(),
        uuid: uuid.map(str::to_string),
    };
    let bytes = serde_json::to_vec(&mine).map_err(Error::external)?;
    let gathered = comm.allgather_bytes(&bytes)?;
    let entries = gathered
        .iter()
        .enumerate()
        .map(|(r, b)| {
            serde_json::from_slice::<PreflightEntry>(b)
                .map_err(|e| Error::Environment(format!("GPU preflight: rank {r} sent an unreadable entry: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    device::preflight(&entries, policy).map_err(|e| Error::Environment(e.to_string()))
}

/// The device of the rank with local rank `local_rank` of `local_size`, planned from its
/// environment alone (no CUDA, no NVML: what [`Context::device`](crate::Context::device)
/// says): the visible GPUs from `CUDA_VISIBLE_DEVICES`, else the discovery script of
/// `GANG_GPU_DISCOVERY_SCRIPT` (`gang run --gpu-discovery-script`), else Slurm's GPU ids,
/// else one per `/dev/nvidiaN` file; then the only one a rank sees, or local rank among
/// them ([`device::bind_rank`]); the CPU when there is none.
///
/// # Errors
/// The discovery script fails or prints something else than Spark's format, or a Slurm
/// variable holds something else than GPU ids (the message names which).
pub fn rank_device(local_rank: usize, local_size: usize) -> std::result::Result<Device, device::DiscoveryError> {
    let visible = device::VisibleDevices::from_env(None)?;
    Ok(rank_device_from(&visible, std::path::Path::new("/dev"), local_rank, local_size))
}

fn rank_device_from(
    visible: &device::VisibleDevices,
    dev: &std::path::Path,
    local_rank: usize,
    local_size: usize,
) -> Device {
    let gpus = device::visible_without_nvml(visible, device::device_files(dev)).gpus;
    device::bind_rank(local_rank, local_size, &gpus).device
}

/// [`rank_device`], or the CPU with a warning from the gang's first rank when the GPUs
/// cannot be listed (the rank then computes on the CPU, and `gang train --device cuda`
/// gives the error itself).
pub(crate) fn rank_device_or_cpu(local_rank: usize, local_size: usize, warn: bool) -> Device {
    rank_device(local_rank, local_size).unwrap_or_else(|e| {
        if warn {
            eprintln!("gang: warning: no GPU for the ranks: {e}");
        }
        Device::Cpu
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{execute, Config, FailureClass};

    /// Runs the preflight over `plan.len()` Local ranks, rank `r` bringing `plan[r]`
    /// (host, UUID or CPU), and returns every rank's outcome.
    fn run(plan: &[(&str, Option<&str>)], policy: PreflightPolicy) -> Vec<std::result::Result<(), String>> {
        execute(Config::local(plan.len()), |ctx| {
            let (host, uuid) = plan[ctx.rank()];
            let device = match uuid {
                Some(u) => Device::Cuda { ordinal: 0, visible_id: u.to_string() },
                None => Device::Cpu,
            };
            let out = preflight(ctx.comm(), host, &device, uuid, policy).map_err(|e| {
                assert_eq!(e.class(), FailureClass::Usage, "{e}");
                e.to_string()
            });
            // The gang is still usable after the check, whatever it found.
            ctx.comm().barrier()?;
            Ok(out)
        })
        .unwrap()
    }

    #[test]
    fn one_rank_per_gpu_passes_on_every_rank() {
        let plan = [("n1", Some("GPU-a")), ("n1", Some("GPU-b")), ("n2", Some("GPU-a")), ("n2", Some("GPU-b"))];
        let demand = PreflightPolicy { allow_sharing: false, require_gpu: true };
        assert!(run(&plan, demand).iter().all(|r| r.is_ok()));
        assert!(run(&[("n1", Some("GPU-a"))], demand)[0].is_ok());
    }

    #[test]
    fn two_ranks_on_one_gpu_fail_every_rank_with_the_same_table() {
        let plan = [("n1", Some("GPU-a")), ("n1", Some("GPU-b")), ("n1", Some("GPU-a")), ("n2", Some("GPU-a"))];
        let out = run(&plan, PreflightPolicy::default());
        let msg = out[0].clone().unwrap_err();
        assert!(out.iter().all(|r| r.as_ref().unwrap_err() == &msg), "{out:?}");
        assert!(msg.contains("ranks 0, 2 on n1 all use GPU gpu-a"), "{msg}");
        for r in 0..4 {
            assert!(msg.lines().any(|l| l.trim_start().starts_with(&format!("{r}  n"))), "rank {r} not in {msg}");
        }
    }

    #[test]
    fn sharing_passes_when_it_was_asked_for() {
        let plan = [("n1", Some("GPU-a")), ("n1", Some("GPU-a")), ("n1", Some("GPU-a"))];
        let out = run(&plan, PreflightPolicy { allow_sharing: true, require_gpu: true });
        assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    }

    #[test]
    fn a_rank_without_a_gpu_fails_only_under_a_demand() {
        let plan = [("n1", Some("GPU-a")), ("n1", None), ("n2", Some("GPU-c"))];
        assert!(run(&plan, PreflightPolicy::default()).iter().all(|r| r.is_ok()));
        let out = run(&plan, PreflightPolicy { allow_sharing: false, require_gpu: true });
        for r in &out {
            let msg = r.as_ref().unwrap_err();
            assert!(msg.contains("rank 1 on n1 sees no GPU"), "{msg}");
        }
    }

    #[test]
    fn affinity_is_narrowed_and_never_widened() {
        // On a thread of its own: the mask is per thread.
        std::thread::spawn(|| {
            let before = current_affinity().unwrap();
            assert!(!before.is_empty());
            // The GPU's cores are unknown: nothing changes.
            let n = narrow_affinity(&[]).unwrap();
            assert!(!n.changed && n.note.is_some());
            assert_eq!(current_affinity().unwrap(), before);
            // Narrowed to one allowed core.
            let n = narrow_affinity(&[before[0]]).unwrap();
            assert_eq!(n.cpus, [before[0]]);
            assert_eq!(current_affinity().unwrap(), [before[0]]);
            // Asking for more never widens; asking for cores outside keeps the current set.
            let n = narrow_affinity(&before).unwrap();
            assert!(!n.changed);
            assert_eq!(current_affinity().unwrap(), [before[0]]);
            let n = narrow_affinity(&[before[0] + 1000]).unwrap();
            assert!(n.note.unwrap().contains("no overlap"));
            assert_eq!(current_affinity().unwrap(), [before[0]]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_rank_program_gets_its_gpu_from_a_discovery_script_or_the_device_files() {
        let dir = std::env::temp_dir().join(format!("gang-rank-device-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("gpus.sh");
        std::fs::write(&script, "#!/bin/sh\necho '{\"name\": \"gpu\", \"addresses\": [\"0\", \"1\"]}'\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let none = |_: &str| None;
        let visible = device::VisibleDevices::detect(none, Some(&script)).unwrap();
        let devices: Vec<Device> = (0..3).map(|r| rank_device_from(&visible, &dir, r, 3)).collect();
        assert_eq!(
            devices,
            vec![
                Device::Cuda { ordinal: 0, visible_id: "0".into() },
                Device::Cuda { ordinal: 1, visible_id: "1".into() },
                Device::Cuda { ordinal: 0, visible_id: "0".into() },
            ]
        );
        // Nothing named, two device files: local rank among them.
        std::fs::write(dir.join("nvidia0"), b"").unwrap();
        std::fs::write(dir.join("nvidia1"), b"").unwrap();
        let all = device::VisibleDevices::detect(none, None).unwrap();
        assert_eq!(rank_device_from(&all, &dir, 1, 2), Device::Cuda { ordinal: 1, visible_id: "1".into() });
        // No device file: the CPU.
        assert_eq!(rank_device_from(&all, &dir.join("none"), 0, 1), Device::Cpu);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
