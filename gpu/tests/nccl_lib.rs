//! The real NCCL library. `ncclGetVersion` and `ncclGetUniqueId` work without a GPU on any
//! machine with NVIDIA's wheel (`pip install nvidia-nccl-cu13`); point `GANG_NCCL_LIBRARY`
//! at its `nvidia/nccl/lib/libnccl.so.2` or put that folder on `LD_LIBRARY_PATH`. Where
//! there is a GPU too, a one-rank communicator runs every collective on device buffers.
//!
//! Without NCCL the tests check the error instead and print a SKIPPED line; with
//! `GANG_REQUIRE_NCCL=1` (CI) a missing NCCL fails them.

use cudarc::driver::{CudaContext, DevicePtrMut};
use gang_gpu::nccl::{DataType, Nccl, NcclComm, ReduceOp, UniqueId};
use gang_gpu::watchdog::driver_present;
use gang_gpu::Error;
use std::time::{Duration, Instant};

fn nccl_required() -> bool {
    std::env::var("GANG_REQUIRE_NCCL").is_ok_and(|v| v.trim() == "1")
}

/// NCCL, or `None` after checking the missing-library error (and failing under
/// `GANG_REQUIRE_NCCL=1`).
fn nccl_or_skip(test: &str) -> Option<Nccl> {
    match Nccl::load() {
        Ok(n) => Some(n),
        Err(e) => {
            let text = e.to_string();
            assert!(matches!(e, Error::LibraryMissing { library: "NCCL", .. }), "{e:?}");
            assert!(
                text.contains("pip install nvidia-nccl-cu13") && text.contains("GANG_NCCL_LIBRARY"),
                "the error does not say how to install NCCL: {text}"
            );
            assert!(
                !nccl_required(),
                "GANG_REQUIRE_NCCL=1 but NCCL is not available: {text}\n(pip install --target .gang/nvidia \
                 nvidia-nccl-cu13, then GANG_NCCL_LIBRARY=$PWD/.gang/nvidia/nvidia/nccl/lib/libnccl.so.2)"
            );
            eprintln!("SKIPPED {test}: NCCL is not available ({text})");
            None
        }
    }
}

/// Whether a CUDA device is usable here (cudarc panics without the driver: check first).
fn gpu_present() -> bool {
    driver_present() && CudaContext::device_count().is_ok_and(|n| n > 0)
}

#[test]
fn the_version_is_2_x_and_unique_ids_are_128_distinct_bytes() {
    let Some(nccl) = nccl_or_skip("the_version_is_2_x_and_unique_ids_are_128_distinct_bytes") else { return };
    let v = nccl.version().expect("ncclGetVersion");
    eprintln!("NCCL {v} from {}", nccl.library());
    assert_eq!(v.major, 2, "{v}");
    assert!(v >= gang_gpu::nccl::MIN_VERSION, "NCCL {v} is older than gang needs");

    let a = nccl.unique_id().expect("ncclGetUniqueId");
    let b = nccl.unique_id().expect("ncclGetUniqueId");
    assert_eq!(a.to_bytes().len(), UniqueId::BYTES);
    assert_eq!(UniqueId::BYTES, 128);
    assert_ne!(a, b, "two unique ids are the same");
    assert!(a.as_bytes().iter().any(|&x| x != 0), "an all-zero unique id");
    assert_eq!(UniqueId::from_bytes(&a.to_bytes()).unwrap(), a);
}

#[test]
fn a_communicator_without_a_gpu_fails_cleanly_and_in_time() {
    let test = "a_communicator_without_a_gpu_fails_cleanly_and_in_time";
    let Some(nccl) = nccl_or_skip(test) else { return };
    if gpu_present() {
        eprintln!("SKIPPED {test}: this machine has a GPU (see the next test)");
        return;
    }
    // One rank, so nothing waits for peers: NCCL must say that it has no device.
    let id = nccl.unique_id().unwrap();
    let start = Instant::now();
    let e = NcclComm::init(&nccl, &id, 0, 1, Duration::from_secs(20)).expect_err("a communicator without a GPU");
    let elapsed = start.elapsed();
    eprintln!("without a GPU: {e} ({elapsed:?})");
    assert!(matches!(e, Error::Nccl { call: "ncclCommInitRankConfig", .. } | Error::Timeout { .. }), "{e:?}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

#[test]
fn an_invalid_rank_is_refused_before_nccl() {
    let Some(nccl) = nccl_or_skip("an_invalid_rank_is_refused_before_nccl") else { return };
    let id = nccl.unique_id().unwrap();
    let e = NcclComm::init(&nccl, &id, 2, 2, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}

#[test]
#[allow(unsafe_code)] // The collectives take raw device pointers.
fn one_rank_runs_every_collective_on_device_buffers_when_there_is_a_gpu() {
    let test = "one_rank_runs_every_collective_on_device_buffers_when_there_is_a_gpu";
    let Some(nccl) = nccl_or_skip(test) else { return };
    if !gpu_present() {
        eprintln!("SKIPPED {test}: no GPU here");
        return;
    }
    let ctx = CudaContext::new(0).expect("cuda:0");
    ctx.bind_to_thread().expect("bind cuda:0");
    let stream = ctx.new_stream().expect("a stream");
    let id = nccl.unique_id().unwrap();
    let comm = NcclComm::init(&nccl, &id, 0, 1, Duration::from_secs(60)).expect("a one-rank communicator");
    assert_eq!((comm.rank(), comm.size()), (0, 1));

    let data = [1.5f32, -2.0, 3.25, 4.0];
    let mut a = stream.clone_htod(&data).unwrap();
    let mut b = stream.alloc_zeros::<f32>(data.len()).unwrap();
    {
        let (pa, _ga) = a.device_ptr_mut(&stream);
        let (pb, _gb) = b.device_ptr_mut(&stream);
        let s = stream.cu_stream();
        // SAFETY: both buffers hold 4 f32 of this context and outlive the wait below.
        unsafe {
            comm.all_reduce(pa, pa, 4, DataType::F32, ReduceOp::Sum, s).unwrap();
            comm.all_gather(pa, pb, 4, DataType::F32, s).unwrap();
            comm.group(|c| c.broadcast(pb, pb, 4, DataType::F32, 0, s)).unwrap();
        }
    }
    comm.synchronize(&stream, "one-rank collectives").expect("the collectives finish");
    comm.check().unwrap();
    assert_eq!(stream.clone_dtoh(&a).unwrap(), data);
    assert_eq!(stream.clone_dtoh(&b).unwrap(), data);

    let start = Instant::now();
    drop(comm);
    assert!(start.elapsed() < Duration::from_secs(60), "finalize took {:?}", start.elapsed());
}
