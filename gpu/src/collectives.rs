//! NCCL on gang's device buffers: a safe layer over [`crate::nccl::NcclComm`] for the
//! [`Buf`]s of a [`Device`].
#![allow(unsafe_code)]

use std::time::Duration;

use crate::error::{Error, Result};
use crate::exec::{Buf, Device};
use crate::nccl::{DataType, Nccl, NcclComm, ReduceOp, UniqueId};

/// An NCCL communicator of the gang's GPU ranks, for sums of device buffers. Every wait
/// has the communicator's deadline; on a timeout or an NCCL error the communicator is
/// aborted (on a helper thread) and the error returned, so the rank fails and the
/// launcher restarts the gang instead of hanging in NCCL.
#[derive(Debug)]
pub struct DeviceNccl {
    comm: NcclComm,
}

impl DeviceNccl {
    /// Joins the communicator `id` as `rank` of `size` on `dev`'s GPU (bound to the calling
    /// thread first), with `timeout` for every operation. Collective over the gang.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the host device; NCCL's errors.
    pub fn connect(
        nccl: &Nccl,
        id: &UniqueId,
        rank: usize,
        size: usize,
        dev: &Device,
        timeout: Duration,
    ) -> Result<DeviceNccl> {
        let Device::Cuda(d) = dev else {
            return Err(Error::InvalidArgument("NCCL needs a CUDA device".into()));
        };
        d.bind()?;
        Ok(DeviceNccl { comm: NcclComm::init(nccl, id, rank, size, timeout)? })
    }

    /// Sums `buf` over the gang in place, and waits for the sum (with the deadline).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for host buffers; [`Error::Nccl`] or [`Error::Timeout`]
    /// (the communicator is aborted then).
    pub fn allreduce_sum_f32(&self, dev: &Device, buf: &mut Buf<f32>) -> Result<()> {
        let (Device::Cuda(d), Buf::Cuda(s)) = (dev, &*buf) else {
            return Err(Error::InvalidArgument("NCCL sums buffers of a CUDA device".into()));
        };
        let ptr = d.address(s, 0);
        // SAFETY: `ptr` addresses `s.len()` floats of `d`'s context (`s` is borrowed mutably
        // through `buf` for the whole call, so nothing else touches it), the stream is the
        // device's own, and the call waits for the operation before returning.
        unsafe { self.comm.all_reduce(ptr, ptr, s.len(), DataType::F32, ReduceOp::Sum, d.stream().cu_stream())? };
        self.comm.synchronize(d.stream(), "the NCCL allreduce of the gradient")
    }

    /// Sums `src` over the gang into `dst` (out of place), and waits for the sum.
    ///
    /// # Errors
    /// As [`allreduce_sum_f32`](Self::allreduce_sum_f32); [`Error::InvalidArgument`] when
    /// `dst` is shorter than `src`.
    pub fn allreduce_sum_f32_into(&self, dev: &Device, src: &Buf<f32>, dst: &mut Buf<f32>) -> Result<()> {
        let (Device::Cuda(d), Buf::Cuda(s), Buf::Cuda(t)) = (dev, src, &*dst) else {
            return Err(Error::InvalidArgument("NCCL sums buffers of a CUDA device".into()));
        };
        if t.len() < s.len() {
            return Err(Error::InvalidArgument(format!("allreduce of {} floats into {}", s.len(), t.len())));
        }
        let (from, to) = (d.address(s, 0), d.address(t, 0));
        // SAFETY: both addresses hold `s.len()` floats of `d`'s context (checked above), `dst`
        // is borrowed mutably and `src` shared for the whole call, the stream is the device's
        // own, and the call waits for the operation before returning.
        unsafe { self.comm.all_reduce(from, to, s.len(), DataType::F32, ReduceOp::Sum, d.stream().cu_stream())? };
        self.comm.synchronize(d.stream(), "an NCCL allreduce")
    }

    /// The communicator's deadline for one operation.
    pub fn timeout(&self) -> Duration {
        self.comm.timeout()
    }
}
