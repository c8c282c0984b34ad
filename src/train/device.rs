//! Where the training kernels run: the CPU (gang-kernels) or a CUDA device (gang-gpu),
//! and how the gradients of GPU ranks travel.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Where a rank trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A GPU when the rank has one (and gang was built with the `cuda` feature), else the
    /// CPU; rank 0 says which in one line.
    #[default]
    Auto,
    /// The CPU kernels.
    Cpu,
    /// A GPU, or an error that names what is missing (the driver, a visible device).
    Cuda,
    /// gang's CUDA kernels compiled for the CPU (their host build), driven by the GPU
    /// training path: checks that path, its checkpoints and restarts, on machines without
    /// a GPU. Slow: one call per GPU thread.
    CudaHost,
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            "cuda-host" => Ok(DeviceChoice::CudaHost),
            other => Err(Error::InvalidArgument(format!("device {other:?}: expected auto, cpu, cuda or cuda-host"))),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
            DeviceChoice::CudaHost => "cuda-host",
        })
    }
}

pub use gang_protocol::device::DeviceComm;

#[cfg(feature = "cuda")]
pub(crate) use cuda::{gpu_error, open, read_back};

#[cfg(feature = "cuda")]
mod cuda {
    use super::{DeviceChoice, DeviceComm};
    use crate::context::Context;
    use crate::error::{Error, Result};
    use crate::failure::FailureClass;
    use crate::train::{Shard, TrainConfig};
    use crate::ReduceOp;
    use gang_gpu::collectives::DeviceNccl;
    use gang_gpu::exec::{self, CudaDevice, Device};
    use gang_gpu::nccl::choice::{self, DeviceCommBackend, RankDevice};
    use gang_gpu::nccl::{Nccl, UniqueId};
    use gang_gpu::train::DeviceTrainer;
    use gang_kernels::{Model, OptimizerState};
    use gang_protocol::device::{Device as Planned, PreflightPolicy};
    use std::time::Duration;

    /// A rank's training on its GPU: the trainer, and NCCL when the gradients are summed
    /// on the devices (`None`: through host memory and the host communicator).
    pub(crate) struct GpuTraining<'s> {
        // First: dropped (finalized) while the trainer still holds the device's context.
        pub(crate) nccl: Option<DeviceNccl>,
        pub(crate) trainer: DeviceTrainer<'s>,
    }

    impl GpuTraining<'_> {
        /// Sums the gradient over the gang: NCCL on the device, or host staging.
        pub(crate) fn allreduce(&mut self, ctx: &Context, host: &mut [f32]) -> Result<()> {
            if ctx.world() == 1 {
                // The sum over one rank is its own gradient.
                return Ok(());
            }
            match &self.nccl {
                Some(n) => self.trainer.with_grad(|dev, grad| n.allreduce_sum_f32(dev, grad)).map_err(gpu_error),
                None => {
                    self.trainer.grad_to_host(host).map_err(gpu_error)?;
                    ctx.comm().allreduce(host, ReduceOp::Sum)?;
                    self.trainer.grad_from_host(host).map_err(gpu_error)
                }
            }
        }
    }

    pub(crate) fn gpu_error(e: gang_gpu::Error) -> Error {
        let class = match &e {
            // Out of device memory: a restart would run out again.
            gang_gpu::Error::Driver { detail, .. } if detail.contains("OUT_OF_MEMORY") => FailureClass::Usage,
            gang_gpu::Error::Driver { .. } | gang_gpu::Error::Nccl { .. } | gang_gpu::Error::Timeout { .. } => {
                FailureClass::Transient
            }
            _ => FailureClass::Usage,
        };
        Error::classified(class, e)
    }

    /// This rank's GPU: its CUDA ordinal and the cores near it (empty when unknown), or why
    /// it has none. The visible list comes from `CUDA_VISIBLE_DEVICES`, a discovery
    /// script (`--gpu-discovery-script`, or `GANG_GPU_DISCOVERY_SCRIPT`), Slurm's variables, or every GPU NVML lists;
    /// a rank that sees one device uses it, otherwise device = local rank among them.
    fn binding(ctx: &Context, script: Option<&std::path::Path>) -> std::result::Result<(usize, Vec<usize>), String> {
        use gang_protocol::device::{bind_rank, match_visible, VisibleDevices, VisibleSource};
        exec::driver_available().map_err(|e| e.to_string())?;
        let visible = VisibleDevices::from_env(script).map_err(|e| e.to_string())?;
        let nvml = gang_gpu::nvml::discover().unwrap_or_default();
        let matched = match_visible(&visible, &nvml);
        if matched.gpus.is_empty() {
            if visible.source != VisibleSource::AllDevices {
                return Err(format!("{} names no usable device", visible.describe()));
            }
            // No NVML: the driver's own count.
            let n = exec::device_count().map_err(|e| e.to_string())?;
            return match n {
                0 => Err("the driver shows no CUDA device".into()),
                n => Ok((ctx.local_rank() % n, Vec::new())),
            };
        }
        let b = bind_rank(ctx.local_rank(), ctx.local_size(), &matched.gpus);
        match (b.device, b.gpu) {
            (Planned::Cuda { ordinal, .. }, gpu) => {
                Ok((ordinal, gpu.and_then(|g| g.gpu).map(|g| g.cpus).unwrap_or_default()))
            }
            _ => Err(format!("{} names no usable device", visible.describe())),
        }
    }

    /// `GANG_GPU_STREAM_SHARD=1`: keep the shard in host memory even where it would fit the
    /// device (the GPU check compares both ways).
    fn stream_forced() -> bool {
        std::env::var_os("GANG_GPU_STREAM_SHARD").is_some_and(|v| v == "1")
    }

    /// The deadline of one NCCL operation: `GANG_NCCL_TIMEOUT` seconds, default 120.
    fn nccl_timeout() -> Duration {
        let s = std::env::var("GANG_NCCL_TIMEOUT").ok().and_then(|v| v.parse::<f64>().ok()).filter(|s| *s > 0.0);
        Duration::from_secs_f64(s.unwrap_or(120.0))
    }

    /// The model and the optimizer state on the device, as the CPU's (for a checkpoint,
    /// the end-of-epoch check and the report).
    pub(crate) fn read_back(t: &GpuTraining<'_>) -> Result<(Model, OptimizerState)> {
        Ok((t.trainer.model().map_err(gpu_error)?, t.trainer.optimizer_state().map_err(gpu_error)?))
    }

    /// Puts the model, the optimizer state and the shard on this rank's GPU when the
    /// configuration asks for one and every rank has one; `None` trains on the CPU.
    /// Collective: the ranks agree on the device, check the placement (two ranks on one
    /// GPU fail the gang with a table of the plan, unless sharing was allowed) and choose
    /// how gradients travel (NCCL, or host staging), all before the first step.
    pub(crate) fn open<'s>(
        ctx: &Context,
        cfg: &TrainConfig,
        model: &Model,
        opt: &OptimizerState,
        shard: &'s Shard,
        local_batch: usize,
    ) -> Result<Option<GpuTraining<'s>>> {
        let choice = cfg.device;
        if choice == DeviceChoice::Cpu {
            return Ok(None);
        }
        if choice == DeviceChoice::CudaHost {
            if ctx.rank() == 0 {
                eprintln!(
                    "gang train: the CUDA kernels' host build on every rank (the GPU training path without a GPU; slow)"
                );
            }
            let (x, y) = (&shard.x, shard.labels.targets());
            let trainer = if stream_forced() {
                DeviceTrainer::streaming(Device::Host, model, opt, x, y, local_batch)
            } else {
                DeviceTrainer::new(Device::Host, model, opt, x, y, local_batch)
            }
            .map_err(gpu_error)?;
            return Ok(Some(GpuTraining { trainer, nccl: None }));
        }
        let found = binding(ctx, cfg.gpu_discovery_script.as_deref());
        // All ranks on GPUs, or all on CPUs: a mixed gang would wait on its slowest member.
        let have = ctx.comm().allreduce_scalar(u64::from(found.is_ok()), ReduceOp::Min)? == 1;
        let (ordinal, near) = match (found, have) {
            (Ok(b), true) => b,
            (Err(why), _) if choice == DeviceChoice::Cuda => {
                return Err(Error::classified(
                    FailureClass::Usage,
                    format!(
                        "--device cuda: rank {} on {} has no GPU: {why}. Use --device cpu or auto",
                        ctx.rank(),
                        ctx.host()
                    ),
                ));
            }
            (_, false) if choice == DeviceChoice::Cuda => {
                return Err(Error::classified(
                    FailureClass::Usage,
                    "--device cuda: another rank of the gang has no GPU (its own error names why)",
                ));
            }
            _ => return Ok(None),
        };
        let opened = CudaDevice::open(ordinal).map_err(gpu_error);
        // Every rank learns whether every rank opened its device, before any waits on it.
        let all_open = ctx.comm().allreduce_scalar(u64::from(opened.is_ok()), ReduceOp::Min)? == 1;
        let cuda = match (opened, all_open) {
            (Ok(d), true) => d,
            (Err(e), _) => return Err(e),
            (Ok(_), false) => {
                return Err(Error::classified(
                    FailureClass::Usage,
                    "another rank could not open its GPU (its own error names why)",
                ))
            }
        };
        let uuid = cuda.uuid().to_string();
        let planned = Planned::Cuda { ordinal, visible_id: ordinal.to_string() };
        crate::gpu_bind::preflight(
            ctx.comm(),
            ctx.host(),
            &planned,
            (!uuid.is_empty()).then_some(uuid.as_str()),
            PreflightPolicy { allow_sharing: cfg.allow_gpu_sharing, require_gpu: choice == DeviceChoice::Cuda },
        )?;
        // The rank's threads on the cores of its GPU's NUMA node, within what Slurm or
        // mpirun bound it to.
        if !near.is_empty() {
            let n = crate::gpu_bind::narrow_process_affinity(&near)?;
            if ctx.rank() == 0 && n.changed {
                eprintln!(
                    "gang train: rank 0's threads run on CPUs {} (near cuda:{ordinal})",
                    gang_protocol::device::format_cpulist(&n.cpus)
                );
            }
        }
        let (free, _total) = cuda.memory().map_err(gpu_error)?;
        let dev = Device::Cuda(cuda);
        // The shard stays resident, with the model, its optimizer state and a step's
        // workspace; where it does not fit, it stays in host memory and each step's rows
        // are copied (the same results, slower).
        let need = DeviceTrainer::bytes_needed(model, opt, shard.rows, local_batch);
        let need_streamed = DeviceTrainer::bytes_needed(model, opt, 0, local_batch);
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let forced = stream_forced();
        let resident = need <= free && !forced;
        if !resident && need_streamed > free {
            return Err(Error::classified(
                FailureClass::Usage,
                format!(
                    "rank {}'s model and a step's workspace ({:.2} GiB) do not fit the {:.2} GiB free on {}: lower \
                     the batch size, or --device cpu",
                    ctx.rank(),
                    gib(need_streamed),
                    gib(free),
                    dev.describe()
                ),
            ));
        }
        if !resident && !forced {
            eprintln!(
                "gang train: rank {}'s shard ({:.2} GiB) does not fit the {:.2} GiB free on {}: its batches are \
                 copied from host memory at every step (more ranks keep the shards on the GPUs)",
                ctx.rank(),
                gib(need - need_streamed),
                gib(free),
                dev.describe()
            );
        }
        let nccl = device_comm(ctx, cfg.device_comm, &dev, &uuid)?;
        if ctx.rank() == 0 {
            eprintln!(
                "gang train: training on the GPU of every rank (rank 0: {}); gradients {}",
                dev.describe(),
                if nccl.is_some() { "summed by NCCL" } else { "summed through host memory and the host communicator" }
            );
        }
        let trainer = if resident {
            DeviceTrainer::new(dev, model, opt, &shard.x, shard.labels.targets(), local_batch)
        } else {
            DeviceTrainer::streaming(dev, model, opt, &shard.x, shard.labels.targets(), local_batch)
        }
        .map_err(gpu_error)?;
        Ok(Some(GpuTraining { trainer, nccl }))
    }

    /// Chooses NCCL or host staging (the same choice on every rank) and connects NCCL.
    fn device_comm(ctx: &Context, wanted: DeviceComm, dev: &Device, uuid: &str) -> Result<Option<DeviceNccl>> {
        let mine = RankDevice::probe(ctx.host(), uuid).to_line();
        let lines = ctx.comm().allgather_bytes(mine.as_bytes())?;
        let ranks = (0..ctx.world())
            .map(|r| RankDevice::from_line(&String::from_utf8_lossy(lines.get(r))))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(gpu_error)?;
        let plan = choice::choose(wanted, &ranks).map_err(gpu_error)?;
        if ctx.rank() == 0 && !plan.message.is_empty() {
            eprintln!("{}", plan.message);
        }
        if plan.backend != DeviceCommBackend::Nccl {
            return Ok(None);
        }
        let nccl = Nccl::load().map_err(gpu_error)?;
        let mut id = vec![0u8; UniqueId::BYTES];
        if ctx.rank() == 0 {
            id = nccl.unique_id().map_err(gpu_error)?.to_bytes().to_vec();
        }
        ctx.comm().broadcast(0, &mut id)?;
        let id = UniqueId::from_bytes(&id).map_err(gpu_error)?;
        let comm = DeviceNccl::connect(&nccl, &id, ctx.rank(), ctx.world(), dev, nccl_timeout()).map_err(gpu_error)?;
        Ok(Some(comm))
    }
}
