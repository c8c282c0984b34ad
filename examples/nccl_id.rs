//! The NCCL unique id over the host communicator, as device training sets up NCCL: rank 0
//! makes the id (`ncclGetUniqueId`, no GPU needed), broadcasts its 128 bytes over the host
//! `Comm` (MPI under mpirun), and every rank checks, by an allgather, that all ranks hold
//! the same bytes. The tests start it under `mpirun -n 2` and `-n 4` (`tests/nccl_mpi.rs`).
//!
//! `nccl_id [--local N]`: every rank prints
//! `rank R of N: NCCL V unique id crc32 C, the same on all N ranks`. Without NCCL it fails
//! with the error that says how to install it.

#[cfg(feature = "cuda")]
fn main() {
    use gang::{execute, Config};
    use gang_gpu::nccl::{Nccl, UniqueId};

    let gpu_err = |e: gang_gpu::Error| gang::Error::External(Box::new(e));
    let (config, _args) = Config::from_args(std::env::args().skip(1)).expect("arguments");
    let result = execute(config, |ctx| {
        let comm = ctx.comm();
        // Every rank loads NCCL: each would go on to ncclCommInitRank with the id.
        let nccl = Nccl::load().map_err(gpu_err)?;
        let version = nccl.version().map_err(gpu_err)?;
        let mut bytes = vec![0u8; UniqueId::BYTES];
        if ctx.rank() == 0 {
            bytes = nccl.unique_id().map_err(gpu_err)?.to_bytes().to_vec();
        }
        comm.broadcast(0, &mut bytes)?;
        let id = UniqueId::from_bytes(&bytes).map_err(gpu_err)?;
        let all = comm.allgather_bytes(id.as_bytes())?;
        for r in 0..all.len() {
            if all.get(r) != id.as_bytes() {
                return Err(gang::Error::External(
                    format!("rank {r} holds another NCCL unique id than rank {}", ctx.rank()).into(),
                ));
            }
        }
        if id.as_bytes().iter().all(|&b| b == 0) {
            return Err(gang::Error::External("the NCCL unique id is all zeros".into()));
        }
        println!(
            "rank {} of {}: NCCL {version} unique id crc32 {:08x}, the same on all {} ranks",
            ctx.rank(),
            ctx.world(),
            crc32fast::hash(id.as_bytes()),
            all.len()
        );
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("nccl_id: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("nccl_id: gang was built without its `cuda` feature (NCCL)");
    std::process::exit(2);
}
