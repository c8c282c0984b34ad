//! The MPI backend: the one place in the rank runtime that calls MPI.
//!
//! rsmpi initializes and finalizes MPI ([`::mpi::environment::Universe`]) when gang owns
//! it; a program that initialized MPI itself hands gang a communicator, which gang
//! duplicates and never finalizes. The collectives call the raw C API through `mpi::ffi`
//! so that every return code is checked at one chokepoint ([`check`]) on a communicator
//! whose error handler is `MPI_ERRORS_RETURN`.
#![allow(unsafe_code)]

use super::{CommBackend, Elements, ElementsMut, FailureScope, ReduceOp};
use crate::error::{Error, Result};
use ::mpi::ffi;
use std::ffi::{c_int, c_void};
use std::sync::Arc;

extern "C" {
    /// `MPI_IN_PLACE`, exported by `mpi_shim.c` (a macro in `mpi.h`).
    static GANG_MPI_IN_PLACE: *mut c_void;
    static GANG_MPI_MAX_ERROR_STRING: c_int;
}

/// The initialized MPI library. When gang initialized it, dropping the last reference
/// finalizes MPI, after every communicator holding it has been freed; MPI that the program
/// initialized itself is never finalized by gang.
pub(crate) struct MpiRuntime {
    _universe: Option<::mpi::environment::Universe>,
    threading: crate::MpiThreading,
}

impl std::fmt::Debug for MpiRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiRuntime")
            .field("owned", &self._universe.is_some())
            .field("threading", &self.threading)
            .finish()
    }
}

impl MpiRuntime {
    /// MPI as the program initialized it: gang will not finalize it. The thread level is
    /// read with `MPI_Query_thread`.
    pub(crate) fn adopted() -> Result<Arc<MpiRuntime>> {
        if !is_active() {
            return Err(Error::Environment(
                "a communicator can be adopted only while MPI is initialized and not finalized: \
                 call MPI_Init (or rsmpi's mpi::initialize) first"
                    .into(),
            ));
        }
        Ok(Arc::new(MpiRuntime { _universe: None, threading: provided_level()? }))
    }

    /// The thread level MPI provides.
    pub(crate) fn threading(&self) -> crate::MpiThreading {
        self.threading
    }

    /// Initializes MPI at the given thread level.
    pub(crate) fn init(threading: crate::MpiThreading) -> Result<Arc<MpiRuntime>> {
        if ::mpi::environment::is_initialized() {
            return Err(Error::Environment(
                "MPI is already initialized in this process: call gang::init() once, before \
                 any other MPI use, or hand gang the program's communicator with \
                 gang::init_from_comm()"
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
        Ok(Arc::new(MpiRuntime { _universe: Some(universe), threading: provided_level()? }))
    }
}

/// The thread level MPI provides (`MPI_Query_thread`), whoever initialized it.
fn provided_level() -> Result<crate::MpiThreading> {
    let mut provided: c_int = 0;
    // SAFETY: MPI is initialized (callers hold or just made the runtime); out-pointer to a
    // live integer.
    check(unsafe { ffi::MPI_Query_thread(&mut provided) }, "MPI_Query_thread")?;
    // SAFETY: reading immutable constants exported by the rsmpi shim.
    let level = unsafe {
        if provided == ffi::RSMPI_THREAD_MULTIPLE {
            crate::MpiThreading::Multiple
        } else if provided == ffi::RSMPI_THREAD_SERIALIZED {
            crate::MpiThreading::Serialized
        } else if provided == ffi::RSMPI_THREAD_FUNNELED {
            crate::MpiThreading::Funneled
        } else {
            crate::MpiThreading::Single
        }
    };
    Ok(level)
}

/// The first line of the MPI library's version string (MPICH's goes on for lines: release
/// date, ABI, configure options), its white space collapsed, without the trailing NUL some
/// libraries include.
pub(crate) fn library_version() -> String {
    ::mpi::environment::library_version()
        .ok()
        .and_then(|s| {
            s.trim_end_matches('\0')
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .find(|l| !l.is_empty())
        })
        .unwrap_or_else(|| "unknown MPI".to_string())
}

/// A duplicate of `MPI_COMM_WORLD` (or of an adopted communicator) with
/// `MPI_ERRORS_RETURN`.
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
    let mut class: c_int = code;
    // SAFETY: out-pointer to a live integer; MPI_Error_class may be called with any code.
    if unsafe { ffi::MPI_Error_class(code, &mut class) } != ffi::MPI_SUCCESS as c_int {
        class = code;
    }
    Err(Error::Mpi { op, code, class, message })
}

fn count(n: usize, op: &'static str) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| Error::InvalidArgument(format!("{op}: count {n} exceeds what MPI can count")))
}

fn counts(v: &[usize], op: &'static str) -> Result<Vec<c_int>> {
    v.iter().map(|&n| count(n, op)).collect()
}

/// Pointer, length and MPI datatype of a typed buffer.
fn raw_parts(e: &Elements<'_>) -> (*const c_void, usize, ffi::MPI_Datatype) {
    // SAFETY: reading immutable datatype handles exported by the rsmpi shim.
    unsafe {
        match e {
            Elements::F32(b) => (b.as_ptr().cast(), b.len(), ffi::RSMPI_FLOAT),
            Elements::F64(b) => (b.as_ptr().cast(), b.len(), ffi::RSMPI_DOUBLE),
            Elements::I64(b) => (b.as_ptr().cast(), b.len(), ffi::RSMPI_INT64_T),
            Elements::U64(b) => (b.as_ptr().cast(), b.len(), ffi::RSMPI_UINT64_T),
            Elements::U8(b) => (b.as_ptr().cast(), b.len(), ffi::RSMPI_UINT8_T),
            Elements::Bool(b) => (b.as_ptr().cast(), b.len(), ffi::RSMPI_C_BOOL),
        }
    }
}

fn raw_parts_mut(e: &mut ElementsMut<'_>) -> (*mut c_void, usize, ffi::MPI_Datatype) {
    // SAFETY: reading immutable datatype handles exported by the rsmpi shim.
    unsafe {
        match e {
            ElementsMut::F32(b) => (b.as_mut_ptr().cast(), b.len(), ffi::RSMPI_FLOAT),
            ElementsMut::F64(b) => (b.as_mut_ptr().cast(), b.len(), ffi::RSMPI_DOUBLE),
            ElementsMut::I64(b) => (b.as_mut_ptr().cast(), b.len(), ffi::RSMPI_INT64_T),
            ElementsMut::U64(b) => (b.as_mut_ptr().cast(), b.len(), ffi::RSMPI_UINT64_T),
            ElementsMut::U8(b) => (b.as_mut_ptr().cast(), b.len(), ffi::RSMPI_UINT8_T),
            ElementsMut::Bool(b) => (b.as_mut_ptr().cast(), b.len(), ffi::RSMPI_C_BOOL),
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
    /// Duplicates `MPI_COMM_WORLD`.
    pub(crate) fn world(runtime: Arc<MpiRuntime>) -> Result<MpiComm> {
        // SAFETY: reading the immutable handle of MPI_COMM_WORLD exported by the rsmpi shim.
        let world = unsafe { ffi::RSMPI_COMM_WORLD };
        // SAFETY: MPI is initialized (we hold the runtime) and MPI_COMM_WORLD is valid.
        unsafe { MpiComm::duplicate(runtime, world) }
    }

    /// A duplicate of a communicator of the program's own MPI (see
    /// [`crate::init_from_comm`]).
    pub(crate) fn adopt<C: ::mpi::raw::AsRaw<Raw = ffi::MPI_Comm>>(parent: &C) -> Result<MpiComm> {
        let runtime = MpiRuntime::adopted()?;
        // SAFETY: rsmpi's communicators hand out valid handles, and MPI is initialized and
        // not finalized (checked by `adopted`).
        unsafe { MpiComm::duplicate(runtime, parent.as_raw()) }
    }

    /// [`MpiComm::adopt`] of a raw handle.
    ///
    /// # Safety
    /// `parent` is a valid communicator of this process's MPI, and every rank of it makes
    /// this call.
    pub(crate) unsafe fn adopt_raw(parent: ffi::MPI_Comm) -> Result<MpiComm> {
        let runtime = MpiRuntime::adopted()?;
        // SAFETY: the caller's contract; MPI is initialized (checked by `adopted`).
        unsafe { MpiComm::duplicate(runtime, parent) }
    }

    /// Duplicates `parent` (gang's communicators never share a context with the
    /// program's: no message of one can match a receive of the other) and makes MPI errors
    /// on the duplicate return instead of abort.
    ///
    /// # Safety
    /// `parent` is a valid communicator of the initialized, not finalized MPI that
    /// `runtime` stands for, and every rank of `parent` calls this collectively.
    pub(crate) unsafe fn duplicate(runtime: Arc<MpiRuntime>, parent: ffi::MPI_Comm) -> Result<MpiComm> {
        let mut raw = std::mem::MaybeUninit::<ffi::MPI_Comm>::uninit();
        // SAFETY: `parent` is valid (caller's contract); `raw` receives the new handle.
        check(unsafe { ffi::MPI_Comm_dup(parent, raw.as_mut_ptr()) }, "MPI_Comm_dup")?;
        // SAFETY: MPI_Comm_dup succeeded and initialized `raw`.
        let raw = unsafe { raw.assume_init() };
        // SAFETY: `raw` is a fresh communicator that nothing else holds.
        unsafe { MpiComm::own(runtime, raw) }
    }

    /// Takes ownership of `raw` (freed on drop), with `MPI_ERRORS_RETURN`.
    ///
    /// # Safety
    /// `raw` is a valid communicator that no one else frees.
    unsafe fn own(runtime: Arc<MpiRuntime>, raw: ffi::MPI_Comm) -> Result<MpiComm> {
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

    /// The MPI runtime this communicator keeps alive.
    pub(crate) fn runtime(&self) -> &Arc<MpiRuntime> {
        &self.runtime
    }
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiComm").field("rank", &self.rank).field("size", &self.size).finish()
    }
}

impl CommBackend for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn name(&self) -> &'static str {
        "mpi"
    }

    fn description(&self) -> String {
        library_version()
    }

    fn failure_scope(&self) -> FailureScope {
        FailureScope::Process
    }

    fn barrier(&self) -> Result<()> {
        // SAFETY: valid communicator.
        check(unsafe { ffi::MPI_Barrier(self.raw) }, "MPI_Barrier")
    }

    fn broadcast(&self, root: usize, mut buf: ElementsMut<'_>) -> Result<()> {
        let (ptr, len, dt) = raw_parts_mut(&mut buf);
        let n = count(len, "MPI_Bcast")?;
        // SAFETY: `ptr` is a live, writable buffer of `n` elements of datatype `dt`; all
        // ranks pass the same count (checked by the caller's protocol).
        check(unsafe { ffi::MPI_Bcast(ptr, n, dt, root as c_int, self.raw) }, "MPI_Bcast")
    }

    fn allreduce(&self, send: Option<Elements<'_>>, mut recv: ElementsMut<'_>, op: ReduceOp) -> Result<()> {
        let (rptr, len, dt) = raw_parts_mut(&mut recv);
        let n = count(len, "MPI_Allreduce")?;
        let sendbuf: *const c_void = match &send {
            Some(s) => {
                let (sptr, slen, sdt) = raw_parts(s);
                if slen != len || sdt != dt {
                    return Err(Error::InvalidArgument(format!(
                        "allreduce: send holds {slen} {} but recv {len} {}",
                        s.type_name(),
                        recv.type_name()
                    )));
                }
                sptr
            }
            // SAFETY: reading the MPI_IN_PLACE sentinel exported by the shim.
            None => unsafe { GANG_MPI_IN_PLACE },
        };
        // SAFETY: `rptr` is a live buffer of `n` elements of `dt`; `sendbuf` is either
        // MPI_IN_PLACE or a live buffer of the same length and type (checked above).
        check(unsafe { ffi::MPI_Allreduce(sendbuf, rptr, n, dt, op_handle(op), self.raw) }, "MPI_Allreduce")
    }

    fn allgatherv(&self, send: &[u8], recv: &mut [u8], rcounts: &[usize], displs: &[usize]) -> Result<()> {
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

    fn alltoallv(
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

    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Box<dyn CommBackend>>> {
        let color = match color {
            Some(c) => c as c_int,
            // SAFETY: reading an immutable constant exported by the rsmpi shim.
            None => unsafe { ffi::RSMPI_UNDEFINED },
        };
        let mut raw = std::mem::MaybeUninit::<ffi::MPI_Comm>::uninit();
        // SAFETY: valid communicator; `raw` receives the new handle (or MPI_COMM_NULL).
        check(unsafe { ffi::MPI_Comm_split(self.raw, color, key, raw.as_mut_ptr()) }, "MPI_Comm_split")?;
        // SAFETY: MPI_Comm_split succeeded and initialized `raw`.
        let raw = unsafe { raw.assume_init() };
        // SAFETY: reading the immutable MPI_COMM_NULL handle exported by the rsmpi shim.
        if raw == unsafe { ffi::RSMPI_COMM_NULL } {
            return Ok(None);
        }
        // SAFETY: a new communicator from MPI_Comm_split that only we hold.
        Ok(Some(Box::new(unsafe { MpiComm::own(self.runtime.clone(), raw) }?)))
    }

    fn abort(&self, _stage: &str, _message: &str, code: i32) {
        abort_comm(self.raw, code)
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
    // SAFETY: reading the immutable handle of MPI_COMM_WORLD exported by the rsmpi shim.
    abort_comm(unsafe { ffi::RSMPI_COMM_WORLD }, code)
}

/// `MPI_Abort` on `comm` (Open MPI and MPICH end every process of the job), then ends this
/// process whatever happened.
fn abort_comm(comm: ffi::MPI_Comm, code: i32) -> ! {
    if is_active() {
        // SAFETY: MPI is initialized and not finalized; MPI_Abort may be called at any time
        // on a valid communicator.
        unsafe {
            ffi::MPI_Abort(comm, code);
        }
    }
    // MPI_Abort should not return; make sure this process ends whatever happened.
    std::process::abort()
}

/// Whether MPI is initialized and not yet finalized in this process.
pub(crate) fn is_active() -> bool {
    ::mpi::environment::is_initialized() && !::mpi::environment::is_finalized()
}
