//! The MPI backend: the one place in the rank runtime that calls MPI.
//!
//! rsmpi initializes and finalizes MPI ([`::mpi::environment::Universe`]); the collectives
//! call the raw C API through `mpi::ffi` so that every return code is checked at one
//! chokepoint ([`check`]) on a communicator whose error handler is `MPI_ERRORS_RETURN`.
#![allow(unsafe_code)]

use super::{DType, ReduceOp, Scalar};
use crate::error::{Error, Result};
use ::mpi::ffi;
use std::ffi::{c_int, c_void};
use std::sync::Arc;

extern "C" {
    /// `MPI_IN_PLACE`, exported by `mpi_shim.c` (a macro in `mpi.h`).
    static GANG_MPI_IN_PLACE: *mut c_void;
    static GANG_MPI_MAX_ERROR_STRING: c_int;
}

/// The initialized MPI library. Dropping the last reference finalizes MPI, after every
/// communicator holding it has been freed.
pub(crate) struct MpiRuntime {
    _universe: ::mpi::environment::Universe,
}

impl MpiRuntime {
    /// Initializes MPI at the given thread level.
    pub(crate) fn init(threading: crate::MpiThreading) -> Result<Arc<MpiRuntime>> {
        if ::mpi::environment::is_initialized() {
            return Err(Error::Environment(
                "MPI is already initialized in this process: call gang::init() once, before \
                 any other MPI use"
                    .into(),
            ));
        }
        let level = match threading {
            crate::MpiThreading::Single => ::mpi::Threading::Single,
            crate::MpiThreading::Funneled => ::mpi::Threading::Funneled,
            crate::MpiThreading::Serialized => ::mpi::Threading::Serialized,
            crate::MpiThreading::Multiple => ::mpi::Threading::Multiple,
        };
        let (universe, provided) = ::mpi::initialize_with_threading(level)
            .ok_or_else(|| Error::Environment("MPI_Init_thread failed".into()))?;
        if provided < level {
            return Err(Error::Environment(format!(
                "MPI provides thread level {provided:?} but {level:?} was asked for \
                 (GANG_MPI_THREADING): choose a lower level or an MPI built with thread support"
            )));
        }
        Ok(Arc::new(MpiRuntime { _universe: universe }))
    }
}

/// Version string of the MPI library, without the trailing NUL some libraries include.
pub(crate) fn library_version() -> String {
    ::mpi::environment::library_version()
        .map(|s| s.trim_end_matches('\0').trim().to_string())
        .unwrap_or_else(|_| "unknown MPI".to_string())
}

/// A duplicate of `MPI_COMM_WORLD` with `MPI_ERRORS_RETURN`.
pub(crate) struct MpiComm {
    raw: ffi::MPI_Comm,
    rank: usize,
    size: usize,
    runtime: Arc<MpiRuntime>,
}

/// Turns an MPI return code into a `Result`.
fn check(code: c_int, op: &'static str) -> Result<()> {
    if code == ffi::MPI_SUCCESS as c_int {
        return Ok(());
    }
    // SAFETY: reading an immutable C constant.
    let cap = unsafe { GANG_MPI_MAX_ERROR_STRING }.max(1) as usize;
    let mut buf = vec![0u8; cap + 1];
    let mut len: c_int = 0;
    // SAFETY: `buf` holds at least MPI_MAX_ERROR_STRING bytes, as MPI_Error_string requires.
    let rc = unsafe { ffi::MPI_Error_string(code, buf.as_mut_ptr().cast(), &mut len) };
    let message = if rc == ffi::MPI_SUCCESS as c_int {
        String::from_utf8_lossy(&buf[..(len.max(0) as usize).min(cap)]).into_owned()
    } else {
        "unknown error".to_string()
    };
    Err(Error::Mpi { op, code, message })
}

fn count(n: usize, op: &'static str) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| Error::InvalidArgument(format!("{op}: count {n} exceeds what MPI can count")))
}

fn counts(v: &[usize], op: &'static str) -> Result<Vec<c_int>> {
    v.iter().map(|&n| count(n, op)).collect()
}

fn datatype(d: DType) -> ffi::MPI_Datatype {
    // SAFETY: reading immutable datatype handles exported by the rsmpi shim.
    unsafe {
        match d {
            DType::F32 => ffi::RSMPI_FLOAT,
            DType::F64 => ffi::RSMPI_DOUBLE,
            DType::I64 => ffi::RSMPI_INT64_T,
            DType::U64 => ffi::RSMPI_UINT64_T,
            DType::U8 => ffi::RSMPI_UINT8_T,
            DType::Bool => ffi::RSMPI_C_BOOL,
        }
    }
}

fn op_handle(op: ReduceOp) -> ffi::MPI_Op {
    // SAFETY: reading immutable operator handles exported by the rsmpi shim.
    unsafe {
        match op {
            ReduceOp::Sum => ffi::RSMPI_SUM,
            ReduceOp::Min => ffi::RSMPI_MIN,
            ReduceOp::Max => ffi::RSMPI_MAX,
            ReduceOp::And => ffi::RSMPI_LAND,
            ReduceOp::Or => ffi::RSMPI_LOR,
        }
    }
}

impl MpiComm {
    /// Duplicates `MPI_COMM_WORLD` and makes MPI errors on it return instead of abort.
    pub(crate) fn world(runtime: Arc<MpiRuntime>) -> Result<MpiComm> {
        let mut raw = std::mem::MaybeUninit::<ffi::MPI_Comm>::uninit();
        // SAFETY: MPI is initialized (we hold the runtime); `raw` receives the new handle.
        check(unsafe { ffi::MPI_Comm_dup(ffi::RSMPI_COMM_WORLD, raw.as_mut_ptr()) }, "MPI_Comm_dup")?;
        // SAFETY: MPI_Comm_dup succeeded and initialized `raw`.
        let raw = unsafe { raw.assume_init() };
        let mut comm = MpiComm { raw, rank: 0, size: 0, runtime };
        // SAFETY: `comm.raw` is a valid communicator; ERRORS_RETURN is a predefined handler.
        check(unsafe { ffi::MPI_Comm_set_errhandler(comm.raw, ffi::RSMPI_ERRORS_RETURN) }, "MPI_Comm_set_errhandler")?;
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        // SAFETY: valid communicator, out-pointers to live integers.
        check(unsafe { ffi::MPI_Comm_rank(comm.raw, &mut rank) }, "MPI_Comm_rank")?;
        // SAFETY: as above.
        check(unsafe { ffi::MPI_Comm_size(comm.raw, &mut size) }, "MPI_Comm_size")?;
        comm.rank = rank as usize;
        comm.size = size as usize;
        Ok(comm)
    }

    pub(crate) fn rank(&self) -> usize {
        self.rank
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn barrier(&self) -> Result<()> {
        // SAFETY: valid communicator.
        check(unsafe { ffi::MPI_Barrier(self.raw) }, "MPI_Barrier")
    }

    pub(crate) fn bcast_raw<T: Scalar>(&self, root: usize, buf: &mut [T]) -> Result<()> {
        let n = count(buf.len(), "MPI_Bcast")?;
        // SAFETY: `buf` is a live, writable buffer of `n` elements of the datatype matching
        // `T`; all ranks pass the same count (checked by the caller's protocol).
        check(
            unsafe { ffi::MPI_Bcast(buf.as_mut_ptr().cast(), n, datatype(T::dtype()), root as c_int, self.raw) },
            "MPI_Bcast",
        )
    }

    pub(crate) fn allreduce_raw<T: Scalar>(&self, send: Option<&[T]>, recv: &mut [T], op: ReduceOp) -> Result<()> {
        let n = count(recv.len(), "MPI_Allreduce")?;
        let sendbuf: *const c_void = match send {
            Some(s) => s.as_ptr().cast(),
            // SAFETY: reading the MPI_IN_PLACE sentinel exported by the shim.
            None => unsafe { GANG_MPI_IN_PLACE },
        };
        // SAFETY: `recv` is a live buffer of `n` elements of T's datatype; `send` is either
        // MPI_IN_PLACE or a live buffer of the same length (checked by the caller).
        check(
            unsafe {
                ffi::MPI_Allreduce(sendbuf, recv.as_mut_ptr().cast(), n, datatype(T::dtype()), op_handle(op), self.raw)
            },
            "MPI_Allreduce",
        )
    }

    pub(crate) fn allgatherv_raw(
        &self,
        send: &[u8],
        recv: &mut [u8],
        rcounts: &[usize],
        displs: &[usize],
    ) -> Result<()> {
        const OP: &str = "MPI_Allgatherv";
        let (rc, rd) = (counts(rcounts, OP)?, counts(displs, OP)?);
        debug_assert!(rcounts.iter().zip(displs).all(|(c, d)| c + d <= recv.len()));
        // SAFETY: `send` is live for its length; `recv` is writable and covers every
        // `displs[i] + rcounts[i]` (built by the caller from the same lengths).
        check(
            unsafe {
                ffi::MPI_Allgatherv(
                    send.as_ptr().cast(),
                    count(send.len(), OP)?,
                    ffi::RSMPI_UINT8_T,
                    recv.as_mut_ptr().cast(),
                    rc.as_ptr(),
                    rd.as_ptr(),
                    ffi::RSMPI_UINT8_T,
                    self.raw,
                )
            },
            OP,
        )
    }

    pub(crate) fn alltoallv_raw(
        &self,
        send: &[u8],
        scounts: &[usize],
        sdispls: &[usize],
        recv: &mut [u8],
        rcounts: &[usize],
        rdispls: &[usize],
    ) -> Result<()> {
        const OP: &str = "MPI_Alltoallv";
        let (sc, sd) = (counts(scounts, OP)?, counts(sdispls, OP)?);
        let (rc, rd) = (counts(rcounts, OP)?, counts(rdispls, OP)?);
        debug_assert!(scounts.iter().zip(sdispls).all(|(c, d)| c + d <= send.len()));
        debug_assert!(rcounts.iter().zip(rdispls).all(|(c, d)| c + d <= recv.len()));
        // SAFETY: both buffers are live and cover every count + displacement (built by the
        // caller from the same lengths).
        check(
            unsafe {
                ffi::MPI_Alltoallv(
                    send.as_ptr().cast(),
                    sc.as_ptr(),
                    sd.as_ptr(),
                    ffi::RSMPI_UINT8_T,
                    recv.as_mut_ptr().cast(),
                    rc.as_ptr(),
                    rd.as_ptr(),
                    ffi::RSMPI_UINT8_T,
                    self.raw,
                )
            },
            OP,
        )
    }
}

impl Drop for MpiComm {
    fn drop(&mut self) {
        // Free the duplicate only while MPI is alive (the runtime we hold keeps it so unless
        // someone finalized MPI behind our back).
        let _ = &self.runtime;
        if !::mpi::environment::is_finalized() {
            // SAFETY: `raw` came from MPI_Comm_dup and is freed exactly once, here.
            let _ = unsafe { ffi::MPI_Comm_free(&mut self.raw) };
        }
    }
}

/// Kills every process of the MPI job (`MPI_Abort` on `MPI_COMM_WORLD`), then this one.
pub(crate) fn abort_world(code: i32) -> ! {
    if ::mpi::environment::is_initialized() && !::mpi::environment::is_finalized() {
        // SAFETY: MPI is initialized and not finalized; MPI_Abort may be called at any time.
        unsafe {
            ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, code);
        }
    }
    // MPI_Abort should not return; make sure this process ends whatever happened.
    std::process::abort()
}

/// Whether MPI is initialized and not yet finalized in this process.
pub(crate) fn is_active() -> bool {
    ::mpi::environment::is_initialized() && !::mpi::environment::is_finalized()
}
