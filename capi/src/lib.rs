//! libgang: gang's C and Fortran API, for simulation codes that own MPI.
//!
//! The simulation keeps its MPI: `gang_init` duplicates the communicator it is given
//! (gang never calls `MPI_Init` or `MPI_Finalize`), and everything gang does afterwards
//! (allreduce, checkpoints of the simulation's own buffers, in-situ training, Parquet
//! output committed exactly once) is collective over that duplicate.
//!
//! Conventions, the same at every entry point:
//! - the return value is `GANG_OK` or an error code; `gang_last_error` (or
//!   `gang_last_error_copy`, for Fortran) gives the message, which names the rank;
//! - a NULL pointer, a size that does not fit, or a call in the wrong order is an error
//!   code with a message, never a crash; a panic inside gang is caught at the boundary and
//!   returned as `GANG_ERR_INTERNAL`;
//! - memory passed in is borrowed for the duration of the call, unless the function says
//!   it keeps the pointer (checkpoint regions do, until their handle is freed);
//! - a handle is used from one thread at a time; child handles (checkpoints, trainers) are
//!   freed before the gang handle (`gang_finalize` refuses otherwise);
//! - the coarse collective calls (checkpoint, restart, trainer, Parquet output) agree on
//!   their arguments first (one small allreduce): one rank's bad argument is an error on
//!   every rank (GANG_ERR_PEER on the others), not a hang. `gang_allreduce_*` and
//!   `gang_barrier` do not (their cost is the message itself), nor can a call whose handle
//!   is NULL take part: on an error of those, stop the gang (`gang_fail`).
#![allow(unsafe_code)] // The C boundary: every entry point takes raw pointers.
#![allow(non_camel_case_types)] // C names: gang_t, gang_trainer_t.
#![allow(clippy::missing_safety_doc)] // The header documents each call's contract.

mod arrow;
mod checkpoint;
mod output;
mod trainer;

pub use arrow::{ArrowArray, ArrowSchema};
pub use checkpoint::*;
pub use output::*;
pub use trainer::*;

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, CStr, CString};

use gang::mpi::ffi::MPI_Comm;
use gang::{Context, Error, ReduceOp};

/// The Fortran integer handle of a communicator (`MPI_Fint` of `mpi.h`).
pub type MPI_Fint = gang::mpi::ffi::RSMPI_Fint;

/// Success.
pub const GANG_OK: c_int = 0;
/// An argument that cannot work: a NULL pointer, a size or type that does not fit, an
/// unknown option. Nothing was done.
pub const GANG_ERR_ARGUMENT: c_int = 1;
/// A call in the wrong order (freeing a gang whose checkpoints or trainers are alive, a
/// checkpoint with no region registered). Nothing was done.
pub const GANG_ERR_STATE: c_int = 2;
/// An MPI call failed.
pub const GANG_ERR_MPI: c_int = 3;
/// Another rank of the gang failed, so this rank's collective call was abandoned.
pub const GANG_ERR_PEER: c_int = 4;
/// A file could not be written or read (disk full, permissions, an output directory that
/// holds other files).
pub const GANG_ERR_IO: c_int = 5;
/// Data on disk that cannot be used: a damaged checkpoint, one whose regions differ from
/// the ones registered.
pub const GANG_ERR_INPUT: c_int = 6;
/// The environment is inconsistent (MPI not initialized, malformed launcher variables).
pub const GANG_ERR_ENVIRONMENT: c_int = 7;
/// A bug in gang (a panic, caught at the C boundary). Please report the message.
pub const GANG_ERR_INTERNAL: c_int = 8;

/// Sum in `gang_allreduce_f32` and `gang_allreduce_f64`.
pub const GANG_SUM: c_int = 0;
/// Minimum.
pub const GANG_MIN: c_int = 1;
/// Maximum.
pub const GANG_MAX: c_int = 2;

/// A gang: this process's rank on a duplicate of the simulation's communicator.
pub struct gang_t {
    ctx: Context,
    error: RefCell<CString>,
    /// Live checkpoint and trainer handles on this gang.
    children: Cell<usize>,
    /// `GANG_FAULT`, read once at gang_init (tests); empty in production.
    faults: gang::internal::fault::FaultPlan,
}

thread_local! {
    /// The last error of a call on this thread: what `gang_last_error(NULL)` returns.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Why a call failed: its code and message.
pub(crate) struct Fail {
    pub(crate) code: c_int,
    pub(crate) message: String,
}

pub(crate) type R<T = ()> = std::result::Result<T, Fail>;

impl Fail {
    pub(crate) fn arg(message: impl Into<String>) -> Fail {
        Fail { code: GANG_ERR_ARGUMENT, message: message.into() }
    }

    pub(crate) fn state(message: impl Into<String>) -> Fail {
        Fail { code: GANG_ERR_STATE, message: message.into() }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match &e {
            Error::InvalidArgument(_) => GANG_ERR_ARGUMENT,
            Error::Mpi { .. } | Error::CollectiveMismatch { .. } | Error::SectionMismatch { .. } => GANG_ERR_MPI,
            Error::GangFailed { .. } => GANG_ERR_PEER,
            Error::Io { .. } | Error::Output { .. } => GANG_ERR_IO,
            Error::Input { .. } | Error::SchemaMismatch { .. } => GANG_ERR_INPUT,
            Error::Environment(_) | Error::WorldSizeMismatch { .. } => GANG_ERR_ENVIRONMENT,
            _ => match e.class() {
                gang::FailureClass::Usage => GANG_ERR_ARGUMENT,
                gang::FailureClass::Input => GANG_ERR_INPUT,
                _ => GANG_ERR_IO,
            },
        };
        Fail { code, message: e.to_string() }
    }
}

impl From<gang_kernels::Error> for Fail {
    fn from(e: gang_kernels::Error) -> Fail {
        Fail::arg(e.to_string())
    }
}

fn set_thread_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

/// Runs the body of an entry point that has no gang handle: panics caught, the error
/// recorded for `gang_last_error(NULL)`.
pub(crate) fn entry(f: impl FnOnce() -> R) -> c_int {
    let out = gang::internal::catch_panic(f).unwrap_or_else(|p| Err(panicked(&p)));
    match out {
        Ok(()) => GANG_OK,
        Err(e) => {
            let message = format!("gang: {}", e.message);
            set_thread_error(&message);
            e.code
        }
    }
}

fn panicked(p: &str) -> Fail {
    Fail {
        code: GANG_ERR_INTERNAL,
        message: format!("internal error (a panic inside gang, caught at the C API): {p}; please report it"),
    }
}

/// Runs the body of an entry point on gang `g`: NULL refused, panics caught, the error
/// recorded in `g` (for `gang_last_error(g)`) and for the thread.
pub(crate) fn on_gang(g: *const gang_t, f: impl FnOnce(&gang_t) -> R) -> c_int {
    // SAFETY: a non-NULL `g` is a handle from gang_init that was not freed (the caller's
    // contract, stated in the header).
    let Some(gang) = (unsafe { g.as_ref() }) else {
        return entry(|| Err(Fail::arg("the gang handle is NULL: call gang_init first")));
    };
    let out = gang::internal::catch_panic(|| f(gang)).unwrap_or_else(|p| Err(panicked(&p)));
    match out {
        Ok(()) => GANG_OK,
        Err(e) => {
            let message = format!("gang: rank {}: {}", gang.ctx.rank(), e.message);
            set_thread_error(&message);
            *gang.error.borrow_mut() = CString::new(message.replace('\0', " ")).unwrap_or_default();
            e.code
        }
    }
}

/// For a collective call: every rank learns whether every rank's arguments were valid
/// (one small allreduce), so that one rank's bad argument does not leave the others
/// waiting in the call's communication. This rank's own error, or GANG_ERR_PEER naming
/// the call when only another rank's arguments were bad; nothing was done either way.
pub(crate) fn agree_args<T>(gang: &gang_t, call: &str, local: R<T>) -> R<T> {
    let all = gang.ctx.comm().allreduce_scalar(local.is_ok(), ReduceOp::And)?;
    match local {
        Ok(_) if !all => Err(Fail {
            code: GANG_ERR_PEER,
            message: format!("{call}: another rank's arguments cannot work (its error says which); nothing was done"),
        }),
        other => other,
    }
}

impl gang_t {
    pub(crate) fn ctx(&self) -> &Context {
        &self.ctx
    }

    pub(crate) fn adopt_child(&self) {
        self.children.set(self.children.get() + 1);
    }

    pub(crate) fn release_child(&self) {
        self.children.set(self.children.get().saturating_sub(1));
    }
}

/// A `&mut T` for an out-parameter, or an argument error naming it.
pub(crate) fn out_ptr<'a, T>(p: *mut T, name: &str) -> R<&'a mut T> {
    // SAFETY: a non-NULL out-pointer points to writable memory of a T (the caller's
    // contract).
    unsafe { p.as_mut() }.ok_or_else(|| Fail::arg(format!("{name} is NULL")))
}

/// The UTF-8 string at `p`, or an argument error naming it.
pub(crate) fn c_str<'a>(p: *const c_char, name: &str) -> R<&'a str> {
    if p.is_null() {
        return Err(Fail::arg(format!("{name} is NULL")));
    }
    // SAFETY: a non-NULL string argument is NUL-terminated (the caller's contract).
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| Fail::arg(format!("{name} is not UTF-8")))
}

/// The element count of a buffer argument at `p`, checked: not negative, and `p` neither
/// NULL (unless the count is 0) nor misaligned for `T`.
fn checked_len<T>(p: *const T, count: i64, name: &str) -> R<usize> {
    let n = usize::try_from(count).map_err(|_| Fail::arg(format!("{name}: negative count {count}")))?;
    if n > 0 && p.is_null() {
        return Err(Fail::arg(format!("{name} is NULL but its count is {n}")));
    }
    if n > 0 && !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Fail::arg(format!("{name} is not aligned for its element type")));
    }
    Ok(n)
}

/// `count` elements at `p` (NULL allowed only when `count` is 0).
pub(crate) fn slice<'a, T>(p: *const T, count: i64, name: &str) -> R<&'a [T]> {
    match checked_len(p, count, name)? {
        0 => Ok(&[]),
        // SAFETY: `p` points to `n` initialized elements (the caller's contract), checked
        // for NULL and alignment.
        n => Ok(unsafe { std::slice::from_raw_parts(p, n) }),
    }
}

/// `count` writable elements at `p` (NULL allowed only when `count` is 0).
pub(crate) fn slice_mut<'a, T>(p: *mut T, count: i64, name: &str) -> R<&'a mut [T]> {
    match checked_len(p, count, name)? {
        0 => Ok(&mut []),
        // SAFETY: `p` points to `n` writable elements that nothing else accesses during the
        // call (the caller's contract), checked for NULL and alignment.
        n => Ok(unsafe { std::slice::from_raw_parts_mut(p, n) }),
    }
}

/// Starts gang on `comm`, a communicator of the simulation (`MPI_COMM_WORLD` or a split of
/// it), and stores the new handle in `*out` (NULL on error). Collective over `comm`.
///
/// MPI must be initialized; gang duplicates `comm` and never calls `MPI_Init` or
/// `MPI_Finalize`. Under `gang run` the ranks report heartbeats and progress to the
/// launcher, which detects a stalled rank and restarts the whole gang.
#[no_mangle]
pub unsafe extern "C" fn gang_init(comm: MPI_Comm, out: *mut *mut gang_t) -> c_int {
    entry(|| {
        let out = out_ptr(out, "out (where the handle goes)")?;
        *out = std::ptr::null_mut();
        // SAFETY: a constant handle that mpi-sys's shim exports.
        if comm == unsafe { gang::mpi::ffi::RSMPI_COMM_NULL } {
            return Err(Fail::arg("the communicator is MPI_COMM_NULL: pass the simulation's communicator"));
        }
        // SAFETY: `comm` is a valid communicator of the initialized MPI and every rank of
        // it calls gang_init (the header's contract); init_from_raw_comm checks that MPI
        // is initialized.
        let ctx = unsafe { gang::init_from_raw_comm(comm) }?;
        let faults = gang::internal::fault_plan()?;
        *out = Box::into_raw(Box::new(gang_t { ctx, error: RefCell::default(), children: Cell::new(0), faults }));
        Ok(())
    })
}

/// `gang_init` with a Fortran communicator handle (`MPI_COMM_WORLD` of `use mpi`, or the
/// `MPI_VAL` of a `TYPE(MPI_Comm)`), converted with `MPI_Comm_f2c`.
#[no_mangle]
pub unsafe extern "C" fn gang_init_f(comm: MPI_Fint, out: *mut *mut gang_t) -> c_int {
    // SAFETY: MPI_Comm_f2c accepts any handle value; an invalid one becomes an invalid
    // communicator, which is the caller's contract as in gang_init.
    let c = unsafe { gang::mpi::ffi::RSMPI_Comm_f2c(comm) };
    // SAFETY: as gang_init.
    unsafe { gang_init(c, out) }
}

/// Frees the handle and gang's duplicate of the communicator (while MPI is alive: call it
/// before `MPI_Finalize`). Every checkpoint and trainer handle of this gang must have been
/// freed first. NULL is accepted and does nothing. Not collective, but every rank should
/// call it.
#[no_mangle]
pub unsafe extern "C" fn gang_finalize(g: *mut gang_t) -> c_int {
    if g.is_null() {
        return GANG_OK;
    }
    let live = on_gang(g, |gang| match gang.children.get() {
        0 => Ok(()),
        n => Err(Fail::state(format!(
            "{n} checkpoint or trainer handle(s) of this gang are still alive: free them (gang_checkpoint_free, \
             gang_trainer_free) before gang_finalize"
        ))),
    });
    if live != GANG_OK {
        return live;
    }
    entry(|| {
        // SAFETY: `g` came from gang_init (Box::into_raw) and is freed once (the caller's
        // contract).
        drop(unsafe { Box::from_raw(g) });
        Ok(())
    })
}

/// This process's rank in the gang (its rank in the communicator given to gang_init).
#[no_mangle]
pub unsafe extern "C" fn gang_rank(g: *const gang_t, rank: *mut c_int) -> c_int {
    on_gang(g, |gang| {
        *out_ptr(rank, "rank")? = gang.ctx.rank() as c_int;
        Ok(())
    })
}

/// The number of ranks of the gang.
#[no_mangle]
pub unsafe extern "C" fn gang_size(g: *const gang_t, size: *mut c_int) -> c_int {
    on_gang(g, |gang| {
        *out_ptr(size, "size")? = gang.ctx.world() as c_int;
        Ok(())
    })
}

/// The attempt of this run: 0 at the first launch, 1 after the launcher restarted the gang
/// once (`gang run --max-restarts`), and so on.
#[no_mangle]
pub unsafe extern "C" fn gang_attempt(g: *const gang_t, attempt: *mut c_int) -> c_int {
    on_gang(g, |gang| {
        *out_ptr(attempt, "attempt")? = gang.ctx.attempt() as c_int;
        Ok(())
    })
}

/// A barrier over the gang. Collective.
#[no_mangle]
pub unsafe extern "C" fn gang_barrier(g: *const gang_t) -> c_int {
    on_gang(g, |gang| Ok(gang.ctx.comm().barrier()?))
}

fn reduce_op(op: c_int) -> R<ReduceOp> {
    match op {
        GANG_SUM => Ok(ReduceOp::Sum),
        GANG_MIN => Ok(ReduceOp::Min),
        GANG_MAX => Ok(ReduceOp::Max),
        other => Err(Fail::arg(format!("unknown reduction {other}: use GANG_SUM, GANG_MIN or GANG_MAX"))),
    }
}

/// Reduces `count` floats at `buf` over the gang, in place. Collective: every rank passes
/// the same `count` and `op` (a mismatch is an error on every rank, not a hang).
#[no_mangle]
pub unsafe extern "C" fn gang_allreduce_f32(g: *const gang_t, buf: *mut f32, count: i64, op: c_int) -> c_int {
    on_gang(g, |gang| {
        let op = reduce_op(op)?;
        let buf = slice_mut(buf, count, "buf")?;
        Ok(gang.ctx.comm().allreduce(buf, op)?)
    })
}

/// Reduces `count` doubles at `buf` over the gang, in place. Collective, as
/// `gang_allreduce_f32`.
#[no_mangle]
pub unsafe extern "C" fn gang_allreduce_f64(g: *const gang_t, buf: *mut f64, count: i64, op: c_int) -> c_int {
    on_gang(g, |gang| {
        let op = reduce_op(op)?;
        let buf = slice_mut(buf, count, "buf")?;
        Ok(gang.ctx.comm().allreduce(buf, op)?)
    })
}

/// Reports that the simulation reached `step` of `total` (0 if unknown): the progress the
/// launcher shows, and the heartbeat by which `gang run` tells a working rank from a
/// stalled one. Call it once per time step; it costs no communication. Also where a
/// `GANG_FAULT` planned for this rank and step fires (tests).
#[no_mangle]
pub unsafe extern "C" fn gang_step(g: *const gang_t, step: i64, total: i64) -> c_int {
    on_gang(g, |gang| {
        let (s, t) = (step.max(0) as u64, total.max(0) as u64);
        gang.ctx.progress(s, t, "simulation step");
        if !gang.faults.is_empty() {
            gang.faults.check(gang.ctx.rank(), s, gang.ctx.attempt());
        }
        Ok(())
    })
}

/// Stops the whole gang because of `message` (an error the simulation cannot recover
/// from): prints it with the rank, records it in the run directory for `gang run` to
/// report and, under MPI, aborts every rank. Does not return.
#[no_mangle]
pub unsafe extern "C" fn gang_fail(g: *const gang_t, message: *const c_char) -> c_int {
    let text = if message.is_null() {
        "the simulation failed (gang_fail without a message)".to_string()
    } else {
        // SAFETY: a non-NULL message is NUL-terminated (the caller's contract).
        unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
    };
    // SAFETY: as on_gang.
    match unsafe { g.as_ref() } {
        Some(gang) => {
            gang.ctx.fail_gang("simulation", &Error::classified(gang::FailureClass::Transient, text));
            std::process::exit(gang::EXIT_RANK_ERROR)
        }
        None => {
            eprintln!("gang: {text}");
            std::process::exit(gang::EXIT_RANK_ERROR)
        }
    }
}

/// The message of the last failed call on `g` or its checkpoints and trainers, or of the
/// last failed call on this thread when `g` is NULL (gang_init's errors); "" if none
/// failed. The string belongs to gang and stays valid until the next failing call on the
/// same handle (or thread); copy it to keep it.
#[no_mangle]
pub unsafe extern "C" fn gang_last_error(g: *const gang_t) -> *const c_char {
    // SAFETY: as on_gang.
    match unsafe { g.as_ref() } {
        Some(gang) => gang.error.borrow().as_ptr(),
        None => LAST_ERROR.with(|l| l.borrow().as_ptr()),
    }
}

/// Copies the message of `gang_last_error` into `buf` of `len` bytes, NUL-terminated and
/// cut to fit (for Fortran, and for C code that keeps the message). `needed`, if not
/// NULL, receives the message's length without the NUL.
#[no_mangle]
pub unsafe extern "C" fn gang_last_error_copy(
    g: *const gang_t,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> c_int {
    // SAFETY: as gang_last_error.
    let msg = unsafe { CStr::from_ptr(gang_last_error(g)) }.to_bytes().to_vec();
    // SAFETY: a non-NULL `needed` points to a writable size_t.
    if let Some(n) = unsafe { needed.as_mut() } {
        *n = msg.len();
    }
    if len == 0 {
        return GANG_OK;
    }
    if buf.is_null() {
        return entry(|| Err(Fail::arg("buf is NULL but len is not 0")));
    }
    let n = msg.len().min(len - 1);
    // SAFETY: `buf` holds `len` writable bytes (the caller's contract) and n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr().cast::<c_char>(), buf, n);
        *buf.add(n) = 0;
    }
    GANG_OK
}

/// The MPI this libgang was built for ("Open MPI" or "MPICH"), as gang_mpi.h's
/// `GANG_MPI_LIBRARY` says. A static string.
#[no_mangle]
pub extern "C" fn gang_mpi_library() -> *const c_char {
    concat!(env!("GANG_CAPI_MPI"), "\0").as_ptr().cast()
}

/// libgang's version ("0.1.0"). A static string.
#[no_mangle]
pub extern "C" fn gang_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
