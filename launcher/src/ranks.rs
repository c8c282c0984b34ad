//! How many ranks a gang gets when `-n` is not given.

/// Cores per rank for a CPU job when `-n` is not given (outside Slurm): one rank per core.
///
/// Each rank's kernels already use all of its cores (rayon), so fewer, wider ranks were the
/// alternative. Measured on this 2-core machine (2 M rows x 32 float32 columns in 8 Parquet
/// files, whole `gang` command, 7-9 runs each while two other engineers were compiling):
/// `gang train --epochs 3 --batch-size 8192` took 1.80 s at best (median 2.42 s) at -n 1
/// and 1.10 s at best (median 2.46 s) at -n 2; `gang stats` 1.11 s (1.44 s) at -n 1 and
/// 0.81 s (1.44 s) at -n 2. Under contention the two counts are alike; in the quietest
/// runs two one-core ranks were clearly faster (they split the decoding as well as the
/// arithmetic), so the default is one rank per core. Only 2 cores were measured: on a wide
/// node pass -n.
pub const CORES_PER_CPU_RANK: usize = 1;

/// The rank count and why it was chosen (`None` when `-n` was given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankCount {
    /// Number of ranks.
    pub ranks: usize,
    /// Why, when gang chose it.
    pub why: Option<String>,
}

/// Chooses the rank count: `-n` when given; else inside a Slurm allocation its task count
/// (`SLURM_NTASKS`); else one rank per visible GPU for a job that uses GPUs (when there are
/// any); else one rank per [`CORES_PER_CPU_RANK`] cores.
pub fn choose(
    given: Option<usize>,
    slurm_ntasks: Option<usize>,
    uses_gpus: bool,
    gpus: usize,
    cores: usize,
) -> RankCount {
    if let Some(n) = given {
        return RankCount { ranks: n, why: None };
    }
    let (ranks, why) = match slurm_ntasks {
        Some(n) if n > 0 => (n, format!("the Slurm allocation's task count (SLURM_NTASKS={n})")),
        _ if uses_gpus && gpus > 0 => (gpus, format!("one per visible GPU ({gpus})")),
        _ => {
            let n = (cores / CORES_PER_CPU_RANK).max(1);
            let gpu_note = if uses_gpus { "; no GPU is visible" } else { "" };
            (n, format!("one per core ({cores} cores{gpu_note}), the fastest count measured for CPU jobs"))
        }
    };
    RankCount { ranks, why: Some(format!("-n not given: {why}")) }
}

/// GPUs visible to this process, as a rank program's device plan counts them
/// ([`gang_protocol::device::visible_without_nvml`]): `CUDA_VISIBLE_DEVICES` when set, else
/// the discovery script's addresses (`GANG_GPU_DISCOVERY_SCRIPT`), else Slurm's GPU ids,
/// else the `/dev/nvidiaN` device files.
///
/// # Errors
/// The discovery script fails or prints something else than Spark's format; a Slurm
/// variable holds something else than GPU ids.
pub fn visible_gpus() -> Result<usize, gang_protocol::device::DiscoveryError> {
    use gang_protocol::device::{device_files, visible_without_nvml, VisibleDevices};
    let visible = VisibleDevices::from_env(None)?;
    Ok(visible_without_nvml(&visible, device_files(std::path::Path::new("/dev"))).gpus.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_beats_slurm_beats_gpus_beats_cores() {
        assert_eq!(choose(Some(3), Some(8), true, 4, 2), RankCount { ranks: 3, why: None });
        let c = choose(None, Some(8), true, 4, 2);
        assert_eq!(c.ranks, 8);
        assert_eq!(c.why.unwrap(), "-n not given: the Slurm allocation's task count (SLURM_NTASKS=8)");
        let c = choose(None, None, true, 4, 2);
        assert_eq!((c.ranks, c.why.unwrap()), (4, "-n not given: one per visible GPU (4)".to_string()));
        let c = choose(None, None, false, 4, 2);
        assert_eq!(c.ranks, 2, "a CPU job ignores the GPUs");
        assert!(c.why.unwrap().contains("one per core (2 cores)"));
        let c = choose(None, None, true, 0, 2);
        assert_eq!(c.ranks, 2);
        assert!(c.why.unwrap().contains("no GPU is visible"));
        assert_eq!(choose(None, None, false, 0, 0).ranks, 1);
    }
}
