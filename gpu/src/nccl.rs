//! NCCL, through a small binding of gang's own, for the gradients of device training.
//!
//! The library is opened at run time (`dlopen`): `$GANG_NCCL_LIBRARY` when set, else
//! `libnccl.so.2` (the only name NVIDIA's `nvidia-nccl-cu13` wheel ships), else
//! `libnccl.so`. Only the dozen functions gang needs are resolved. Without NCCL every entry
//! point returns [`Error::LibraryMissing`] saying how to install it; the unique id works
//! without a GPU, so its exchange over MPI is tested on any machine with the wheel.
//!
//! A gang never hangs in NCCL: communicators are created non-blocking (`blocking = 0`),
//! `ncclInProgress` is waited out by polling `ncclCommGetAsyncError`, device work by
//! polling the stream, always with a deadline ([`crate::watchdog`]). When a deadline
//! passes or NCCL reports an error, the communicator is aborted on a helper thread
//! (`ncclCommAbort` can hang itself) and the call returns the error: the rank records its
//! failure and exits, and the launcher restarts the gang. [`NcclComm`]'s `Drop` finalizes
//! with a deadline and never panics.
//!
//! ```no_run
//! use gang_gpu::nccl::{Nccl, UniqueId};
//! # fn main() -> gang_gpu::Result<()> {
//! let nccl = Nccl::load()?;
//! println!("{} from {}", nccl.version()?, nccl.library());
//! // Rank 0 makes the id and broadcasts its bytes over the host communicator (MPI)...
//! let id = nccl.unique_id()?;
//! let bytes: [u8; UniqueId::BYTES] = id.to_bytes();
//! // ...every rank rebuilds it, binds its GPU and calls NcclComm::init with it.
//! assert_eq!(UniqueId::from_bytes(&bytes)?, id);
//! # Ok(()) }
//! ```
#![allow(unsafe_code)] // The NCCL binding: dlopen, dlsym and the foreign calls.

pub mod choice;

use crate::error::{Error, Result};
use crate::watchdog::{run_detached, AbortHook, CommFault, StreamWatch, Watchdog, Watched};
use cudarc::driver::sys::CUstream;
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable naming the NCCL library to load (a path or a name).
pub const LIBRARY_ENV: &str = "GANG_NCCL_LIBRARY";

/// The names tried, in order, when [`LIBRARY_ENV`] is not set.
pub const LIBRARY_NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// How to get NCCL, as error messages say it.
pub const INSTALL_HINT: &str = "install it with `pip install nvidia-nccl-cu13` and set GANG_NCCL_LIBRARY to its \
                                `nvidia/nccl/lib/libnccl.so.2` (or put that folder on LD_LIBRARY_PATH)";

/// The oldest NCCL with everything gang calls (non-blocking communicators,
/// `ncclCommFinalize`, `ncclGetLastError`).
pub const MIN_VERSION: NcclVersion = NcclVersion { major: 2, minor: 14, patch: 0 };

// ---------------------------------------------------------------------------------------
// The C side: types of nccl.h.

/// `ncclResult_t`.
type RawResult = c_int;
const NCCL_SUCCESS: RawResult = 0;
const NCCL_IN_PROGRESS: RawResult = 7;

/// `ncclComm_t`, an opaque pointer; `Send` because NCCL lets any thread use (and abort) a
/// communicator, one at a time.
#[derive(Clone, Copy, Debug)]
struct RawComm(*mut c_void);
// SAFETY: a communicator handle is a plain pointer that NCCL accepts from any thread; gang
// never uses one from two threads at once except for `ncclCommAbort`, which NCCL allows
// while another thread is blocked on the communicator (that is what it is for).
unsafe impl Send for RawComm {}

/// `ncclUniqueId`: `struct { char internal[128]; }`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawUniqueId {
    internal: [c_char; UniqueId::BYTES],
}

/// `NCCL_API_MAGIC`.
const NCCL_API_MAGIC: c_uint = 0xcafe_beef;
/// `NCCL_CONFIG_UNDEF_INT` (`INT_MIN`).
const UNDEF_INT: c_int = c_int::MIN;
/// The `version` field of [`RawConfig`]: NCCL 2.28.3's `NCCL_VERSION_CODE`, the release
/// whose layout it copies.
const CONFIG_VERSION: c_uint = 22803;

/// `ncclConfig_t` exactly as `struct ncclConfig_v22800` of NCCL 2.28.3's `src/nccl.h.in`
/// (unchanged in 2.28.7), filled as its `NCCL_CONFIG_INITIALIZER`. The struct is
/// append-only: a newer NCCL copies `size` bytes and takes its later fields as unset
/// (`parseCommConfig` in `src/init.cc`), an older one copies the prefix it knows.
#[repr(C)]
#[derive(Debug)]
struct RawConfig {
    size: usize,
    magic: c_uint,
    version: c_uint,
    blocking: c_int,
    cga_cluster_size: c_int,
    min_ctas: c_int,
    max_ctas: c_int,
    net_name: *const c_char,
    split_share: c_int,
    traffic_class: c_int,
    comm_name: *const c_char,
    collnet_enable: c_int,
    cta_policy: c_int,
    shrink_share: c_int,
    nvls_ctas: c_int,
    n_channels_per_net_peer: c_int,
    nvlink_centric_sched: c_int,
}

impl RawConfig {
    /// `NCCL_CONFIG_INITIALIZER`.
    fn initializer() -> RawConfig {
        RawConfig {
            size: std::mem::size_of::<RawConfig>(),
            magic: NCCL_API_MAGIC,
            version: CONFIG_VERSION,
            blocking: UNDEF_INT,
            cga_cluster_size: UNDEF_INT,
            min_ctas: UNDEF_INT,
            max_ctas: UNDEF_INT,
            net_name: std::ptr::null(),
            split_share: UNDEF_INT,
            traffic_class: UNDEF_INT,
            comm_name: std::ptr::null(),
            collnet_enable: UNDEF_INT,
            cta_policy: UNDEF_INT,
            shrink_share: UNDEF_INT,
            nvls_ctas: UNDEF_INT,
            n_channels_per_net_peer: UNDEF_INT,
            nvlink_centric_sched: UNDEF_INT,
        }
    }

    /// What gang uses: the initializer with `blocking = 0`.
    fn non_blocking() -> RawConfig {
        RawConfig { blocking: 0, ..RawConfig::initializer() }
    }
}

type FnGetVersion = unsafe extern "C" fn(*mut c_int) -> RawResult;
type FnGetUniqueId = unsafe extern "C" fn(*mut RawUniqueId) -> RawResult;
type FnCommInitRankConfig =
    unsafe extern "C" fn(*mut *mut c_void, c_int, RawUniqueId, c_int, *mut RawConfig) -> RawResult;
type FnCommGetAsyncError = unsafe extern "C" fn(*mut c_void, *mut RawResult) -> RawResult;
type FnComm = unsafe extern "C" fn(*mut c_void) -> RawResult;
type FnAllReduce =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, *mut c_void, CUstream) -> RawResult;
type FnBroadcast =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, *mut c_void, CUstream) -> RawResult;
type FnAllGather = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, *mut c_void, CUstream) -> RawResult;
type FnGroup = unsafe extern "C" fn() -> RawResult;
type FnGetErrorString = unsafe extern "C" fn(RawResult) -> *const c_char;
type FnGetLastError = unsafe extern "C" fn(*mut c_void) -> *const c_char;

/// The resolved functions. The library is never closed (NCCL keeps threads of its own,
/// and an abort may still run on a helper thread), so they live as long as the process.
struct Functions {
    library: String,
    get_version: FnGetVersion,
    get_unique_id: FnGetUniqueId,
    comm_init_rank_config: FnCommInitRankConfig,
    comm_get_async_error: FnCommGetAsyncError,
    comm_finalize: FnComm,
    comm_destroy: FnComm,
    comm_abort: FnComm,
    all_reduce: FnAllReduce,
    broadcast: FnBroadcast,
    all_gather: FnAllGather,
    group_start: FnGroup,
    group_end: FnGroup,
    get_error_string: FnGetErrorString,
    get_last_error: FnGetLastError,
}

/// `dlerror()` as text.
fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call
    // on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// Opens `name` and resolves every function, or says why not.
fn open_library(name: &str) -> std::result::Result<Functions, String> {
    let c_name = CString::new(name).map_err(|_| format!("{name:?} contains a NUL byte"))?;
    // SAFETY: dlopen with a valid C string; loading NCCL runs its (benign) initializers.
    let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(dl_error());
    }
    macro_rules! sym {
        ($name:literal, $ty:ty) => {{
            let c = concat!($name, "\0");
            // SAFETY: `handle` is a live dlopen handle (never closed) and `c` is
            // NUL-terminated.
            let p = unsafe { libc::dlsym(handle, c.as_ptr().cast()) };
            if p.is_null() {
                return Err(format!("{name} has no {}: gang needs NCCL >= {MIN_VERSION}", $name));
            }
            // SAFETY: the symbol is NCCL's function of this name, whose C signature (nccl.h,
            // stable since 2.14) is `$ty`; a function pointer is the size of `*mut c_void`.
            unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
        }};
    }
    Ok(Functions {
        library: name.to_string(),
        get_version: sym!("ncclGetVersion", FnGetVersion),
        get_unique_id: sym!("ncclGetUniqueId", FnGetUniqueId),
        comm_init_rank_config: sym!("ncclCommInitRankConfig", FnCommInitRankConfig),
        comm_get_async_error: sym!("ncclCommGetAsyncError", FnCommGetAsyncError),
        comm_finalize: sym!("ncclCommFinalize", FnComm),
        comm_destroy: sym!("ncclCommDestroy", FnComm),
        comm_abort: sym!("ncclCommAbort", FnComm),
        all_reduce: sym!("ncclAllReduce", FnAllReduce),
        broadcast: sym!("ncclBroadcast", FnBroadcast),
        all_gather: sym!("ncclAllGather", FnAllGather),
        group_start: sym!("ncclGroupStart", FnGroup),
        group_end: sym!("ncclGroupEnd", FnGroup),
        get_error_string: sym!("ncclGetErrorString", FnGetErrorString),
        get_last_error: sym!("ncclGetLastError", FnGetLastError),
    })
}

/// The NCCL result code's name, as nccl.h spells it.
fn result_name(code: RawResult) -> String {
    let name = match code {
        0 => "ncclSuccess",
        1 => "ncclUnhandledCudaError",
        2 => "ncclSystemError",
        3 => "ncclInternalError",
        4 => "ncclInvalidArgument",
        5 => "ncclInvalidUsage",
        6 => "ncclRemoteError",
        7 => "ncclInProgress",
        8 => "ncclTimeout",
        n => return format!("ncclResult_t {n}"),
    };
    name.to_string()
}

/// Where a call leaves a non-blocking communicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Done,
    InProgress,
}

// ---------------------------------------------------------------------------------------
// The safe side.

/// The NCCL library, loaded. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Nccl {
    f: &'static Functions,
}

impl fmt::Debug for Nccl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nccl").field("library", &self.f.library).finish()
    }
}

impl Nccl {
    /// NCCL from `$GANG_NCCL_LIBRARY` when set (only that), else `libnccl.so.2`, else
    /// `libnccl.so`, through the loader's search path. Loaded once per process: the result,
    /// success or failure, is kept.
    ///
    /// # Errors
    /// [`Error::LibraryMissing`] listing what was tried and why it failed, and how to
    /// install NCCL.
    pub fn load() -> Result<Nccl> {
        static LOADED: OnceLock<std::result::Result<Nccl, String>> = OnceLock::new();
        LOADED
            .get_or_init(|| {
                let configured = std::env::var(LIBRARY_ENV).ok().filter(|v| !v.trim().is_empty());
                try_candidates(configured.as_deref())
            })
            .clone()
            .map_err(|hint| Error::LibraryMissing { library: "NCCL", hint })
    }

    /// NCCL from `library` (a path, or a name for the loader's search path), not cached.
    ///
    /// # Errors
    /// [`Error::LibraryMissing`] when it cannot be loaded or lacks a function gang needs.
    pub fn open(library: &str) -> Result<Nccl> {
        match open_library(library) {
            Ok(f) => Ok(Nccl { f: Box::leak(Box::new(f)) }),
            Err(why) => Err(Error::LibraryMissing {
                library: "NCCL",
                hint: format!("could not load {library} ({why}); {INSTALL_HINT}"),
            }),
        }
    }

    /// The library as it was opened (`libnccl.so.2`, or `$GANG_NCCL_LIBRARY`).
    pub fn library(&self) -> &str {
        &self.f.library
    }

    /// `ncclGetVersion`.
    ///
    /// # Errors
    /// [`Error::Nccl`] if the call fails.
    pub fn version(&self) -> Result<NcclVersion> {
        let mut code: c_int = 0;
        // SAFETY: a valid out pointer.
        let r = unsafe { (self.f.get_version)(&mut code) };
        self.check("ncclGetVersion", r, None)?;
        Ok(NcclVersion::from_code(code))
    }

    /// `ncclGetUniqueId`: what rank 0 makes and sends to every rank before
    /// [`NcclComm::init`]. Needs no GPU.
    ///
    /// # Errors
    /// [`Error::Nccl`] if NCCL cannot make one (no network interface, ...).
    pub fn unique_id(&self) -> Result<UniqueId> {
        let mut raw = RawUniqueId { internal: [0; UniqueId::BYTES] };
        // SAFETY: a valid out pointer to a 128-byte ncclUniqueId.
        let r = unsafe { (self.f.get_unique_id)(&mut raw) };
        self.check("ncclGetUniqueId", r, None)?;
        Ok(UniqueId(raw.internal.map(|c| c as u8)))
    }

    /// `ncclGetErrorString`.
    fn error_string(&self, code: RawResult) -> String {
        // SAFETY: NCCL returns a static string for any code.
        let p = unsafe { (self.f.get_error_string)(code) };
        c_text(p)
    }

    /// `ncclGetLastError` of `comm` (or of the thread's last call without one).
    fn last_error(&self, comm: Option<RawComm>) -> String {
        // SAFETY: a live communicator or null, both accepted by ncclGetLastError.
        let p = unsafe { (self.f.get_last_error)(comm.map_or(std::ptr::null_mut(), |c| c.0)) };
        c_text(p)
    }

    /// The fault a result code stands for, with NCCL's own words.
    fn fault(&self, call: &'static str, code: RawResult, comm: Option<RawComm>) -> CommFault {
        let mut detail = self.last_error(comm);
        if detail.trim().is_empty() {
            detail = self.error_string(code);
        }
        CommFault { call, code: result_name(code), detail: detail.trim().to_string() }
    }

    /// The one chokepoint for NCCL's result codes: `ncclInProgress` is not an error for a
    /// non-blocking communicator.
    fn check(&self, call: &'static str, code: RawResult, comm: Option<RawComm>) -> Result<Progress> {
        match code {
            NCCL_SUCCESS => Ok(Progress::Done),
            NCCL_IN_PROGRESS => Ok(Progress::InProgress),
            _ => Err(self.fault(call, code, comm).into()),
        }
    }

    /// An abort of `comm`, for a helper thread.
    fn abort_hook(self, comm: RawComm) -> AbortHook {
        Box::new(move || {
            let comm = comm; // the whole `RawComm` (which is `Send`), not its field
                             // SAFETY: `comm` is a communicator this process created and has neither
                             // destroyed nor aborted (the callers take the hook once).
            let r = unsafe { (self.f.comm_abort)(comm.0) };
            if r != NCCL_SUCCESS && r != NCCL_IN_PROGRESS {
                eprintln!("gang: ncclCommAbort failed: {}", result_name(r));
            }
        })
    }
}

/// Tries `configured` alone when given, else [`LIBRARY_NAMES`] in order.
fn try_candidates(configured: Option<&str>) -> std::result::Result<Nccl, String> {
    let names: Vec<&str> = match configured {
        Some(c) => vec![c],
        None => LIBRARY_NAMES.to_vec(),
    };
    let mut tried = Vec::new();
    for name in &names {
        match open_library(name) {
            Ok(f) => return Ok(Nccl { f: Box::leak(Box::new(f)) }),
            // dlerror usually names the file already.
            Err(why) if why.contains(name) => tried.push(why),
            Err(why) => tried.push(format!("{name}: {why}")),
        }
    }
    Err(missing_hint(configured, &tried))
}

/// The hint of [`Error::LibraryMissing`] after `tried` failed.
fn missing_hint(configured: Option<&str>, tried: &[String]) -> String {
    let what = match configured {
        Some(_) => format!("{LIBRARY_ENV} is set but could not be loaded ({})", tried.join("; ")),
        None => format!("tried {} ({})", LIBRARY_NAMES.join(", "), tried.join("; ")),
    };
    format!("{what}; {INSTALL_HINT}")
}

/// A C string from NCCL, or empty for null.
fn c_text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: NCCL returns NUL-terminated strings that live at least until its next call
        // on this thread; copied at once.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// An NCCL version, as `ncclGetVersion` codes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NcclVersion {
    /// 2.
    pub major: u32,
    /// 28 in 2.28.3.
    pub minor: u32,
    /// 3 in 2.28.3.
    pub patch: u32,
}

impl NcclVersion {
    /// Decodes `NCCL_VERSION_CODE`: `X*1000 + Y*100 + Z` up to 2.8, `X*10000 + Y*100 + Z`
    /// from 2.9 on.
    pub fn from_code(code: i32) -> NcclVersion {
        let c = code.max(0) as u32;
        if c >= 10_000 {
            NcclVersion { major: c / 10_000, minor: c % 10_000 / 100, patch: c % 100 }
        } else {
            NcclVersion { major: c / 1000, minor: c % 1000 / 100, patch: c % 100 }
        }
    }
}

impl fmt::Display for NcclVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// An `ncclUniqueId`: 128 opaque bytes that rank 0 makes ([`Nccl::unique_id`]) and sends
/// to every rank over the host communicator.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UniqueId([u8; UniqueId::BYTES]);

impl UniqueId {
    /// `NCCL_UNIQUE_ID_BYTES`.
    pub const BYTES: usize = 128;

    /// The bytes, to send.
    pub fn to_bytes(&self) -> [u8; UniqueId::BYTES] {
        self.0
    }

    /// The bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; UniqueId::BYTES] {
        &self.0
    }

    /// The id from the bytes received.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `bytes` has [`UniqueId::BYTES`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<UniqueId> {
        let b: [u8; UniqueId::BYTES] = bytes.try_into().map_err(|_| {
            Error::InvalidArgument(format!(
                "an NCCL unique id has {} bytes, not {} (was it broadcast whole?)",
                UniqueId::BYTES,
                bytes.len()
            ))
        })?;
        Ok(UniqueId(b))
    }

    fn raw(&self) -> RawUniqueId {
        RawUniqueId { internal: self.0.map(|b| b as c_char) }
    }
}

impl fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UniqueId(")?;
        for b in &self.0[..16] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// The element type of a collective (`ncclDataType_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataType {
    /// `ncclInt8`.
    I8,
    /// `ncclUint8`.
    U8,
    /// `ncclInt32`.
    I32,
    /// `ncclUint32`.
    U32,
    /// `ncclInt64`.
    I64,
    /// `ncclUint64`.
    U64,
    /// `ncclFloat16`.
    F16,
    /// `ncclFloat32`.
    F32,
    /// `ncclFloat64`.
    F64,
    /// `ncclBfloat16`.
    Bf16,
}

impl DataType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::I8 | DataType::U8 => 1,
            DataType::F16 | DataType::Bf16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::I64 | DataType::U64 | DataType::F64 => 8,
        }
    }

    /// The `ncclDataType_t` value.
    fn raw(self) -> c_int {
        match self {
            DataType::I8 => 0,
            DataType::U8 => 1,
            DataType::I32 => 2,
            DataType::U32 => 3,
            DataType::I64 => 4,
            DataType::U64 => 5,
            DataType::F16 => 6,
            DataType::F32 => 7,
            DataType::F64 => 8,
            DataType::Bf16 => 9,
        }
    }
}

/// A reduction (`ncclRedOp_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReduceOp {
    /// `ncclSum`.
    Sum,
    /// `ncclProd`.
    Prod,
    /// `ncclMax`.
    Max,
    /// `ncclMin`.
    Min,
    /// `ncclAvg` (NCCL >= 2.10).
    Avg,
}

impl ReduceOp {
    fn raw(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Prod => 1,
            ReduceOp::Max => 2,
            ReduceOp::Min => 3,
            ReduceOp::Avg => 4,
        }
    }
}

/// A non-blocking NCCL communicator whose every wait has a deadline.
///
/// After any failure (deadline, NCCL error) it is aborted and every later call returns
/// an error: record the failure and exit, the launcher restarts the gang. `Drop` finalizes
/// and destroys it within the timeout, or aborts it on a helper thread; it never panics and
/// never blocks past its deadline (plus the watchdog's abort grace).
pub struct NcclComm {
    nccl: Nccl,
    raw: RawComm,
    rank: usize,
    size: usize,
    timeout: Duration,
    watchdog: Watchdog,
    /// Aborted (or being aborted): nothing may be called on `raw` any more.
    aborted: Cell<bool>,
    /// Depth of [`NcclComm::group`]s: inside one, calls only enqueue.
    group_depth: Cell<u32>,
}

// SAFETY: see `RawComm`; `NcclComm` is not `Sync` (its `Cell`s), so one thread at a time
// calls NCCL through it.
unsafe impl Send for NcclComm {}

impl fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NcclComm")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("timeout", &self.timeout)
            .field("aborted", &self.aborted.get())
            .finish()
    }
}

/// The communicator's health for the watchdog: its state (`ncclInProgress` pending),
/// asynchronous error, and abort.
struct CommHealth<'a> {
    nccl: Nccl,
    raw: RawComm,
    aborted: &'a Cell<bool>,
}

impl CommHealth<'_> {
    fn state(&self) -> std::result::Result<Progress, CommFault> {
        let mut state: RawResult = NCCL_SUCCESS;
        // SAFETY: a live communicator (not aborted: `NcclComm` checks before every use) and
        // a valid out pointer.
        let r = unsafe { (self.nccl.f.comm_get_async_error)(self.raw.0, &mut state) };
        if r != NCCL_SUCCESS {
            return Err(self.nccl.fault("ncclCommGetAsyncError", r, Some(self.raw)));
        }
        match state {
            NCCL_SUCCESS => Ok(Progress::Done),
            NCCL_IN_PROGRESS => Ok(Progress::InProgress),
            e => Err(self.nccl.fault("ncclCommGetAsyncError", e, Some(self.raw))),
        }
    }
}

impl Watched for CommHealth<'_> {
    fn query(&mut self) -> crate::watchdog::Poll {
        match self.state() {
            Ok(Progress::Done) => crate::watchdog::Poll::Done,
            // An error is reported by `async_error`, called next.
            _ => crate::watchdog::Poll::Pending,
        }
    }

    fn async_error(&mut self) -> std::result::Result<(), CommFault> {
        self.state().map(|_| ())
    }

    fn abort_hook(&mut self) -> Option<AbortHook> {
        if self.aborted.replace(true) {
            return None;
        }
        Some(self.nccl.abort_hook(self.raw))
    }
}

impl NcclComm {
    /// `ncclCommInitRankConfig` with `blocking = 0`, waited for at most `timeout`.
    ///
    /// Every rank of the gang calls it with the same `id` (made by one rank with
    /// [`Nccl::unique_id`] and broadcast over the host communicator), its `rank` and the
    /// gang's `size`, after binding its own GPU to this thread (cudarc's
    /// `CudaContext::bind_to_thread`). `timeout` also bounds every later wait.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a rank outside the gang; [`Error::Nccl`] when NCCL
    /// fails (two ranks on one GPU: "Duplicate GPU detected"); [`Error::Timeout`] when a
    /// peer does not join in time.
    pub fn init(nccl: &Nccl, id: &UniqueId, rank: usize, size: usize, timeout: Duration) -> Result<NcclComm> {
        if rank >= size || size > c_int::MAX as usize {
            return Err(Error::InvalidArgument(format!("NCCL rank {rank} of a gang of {size} ranks")));
        }
        let mut config = RawConfig::non_blocking();
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out pointers; the id is passed by value as nccl.h declares; the
        // config outlives the call (NCCL copies it).
        let r =
            unsafe { (nccl.f.comm_init_rank_config)(&mut raw, size as c_int, id.raw(), rank as c_int, &mut config) };
        let comm = NcclComm {
            nccl: *nccl,
            raw: RawComm(raw),
            rank,
            size,
            timeout,
            watchdog: Watchdog::default(),
            aborted: Cell::new(raw.is_null()),
            group_depth: Cell::new(0),
        };
        match nccl.check("ncclCommInitRankConfig", r, Some(comm.raw)) {
            Ok(Progress::Done) => Ok(comm),
            Ok(Progress::InProgress) => {
                comm.wait_state(&format!("ncclCommInitRankConfig (rank {rank} of {size})"))?;
                Ok(comm)
            }
            Err(e) => {
                comm.abort_now();
                Err(e)
            }
        }
    }

    /// This policy for the waits of this communicator (the abort grace, the backoff).
    pub fn with_watchdog(mut self, watchdog: Watchdog) -> Self {
        self.watchdog = watchdog;
        self
    }

    /// This rank in the communicator.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The deadline of every wait, from its start.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the communicator was aborted after a failure.
    pub fn is_aborted(&self) -> bool {
        self.aborted.get()
    }

    fn health(&self) -> CommHealth<'_> {
        CommHealth { nccl: self.nccl, raw: self.raw, aborted: &self.aborted }
    }

    /// An error unless the communicator can still be used.
    fn usable(&self, call: &'static str) -> Result<()> {
        if self.aborted.get() {
            return Err(Error::Nccl {
                call,
                code: "aborted".into(),
                detail: "the communicator was aborted after an earlier failure: record it and exit, the gang \
                         restarts"
                    .into(),
            });
        }
        Ok(())
    }

    /// Aborts on a helper thread, once, waiting at most the abort grace.
    fn abort_now(&self) {
        if let Some(hook) = self.health().abort_hook() {
            if !run_detached(hook, self.watchdog.abort_grace) {
                eprintln!(
                    "gang: ncclCommAbort (rank {} of {}) still running after {:.1} s; leaving it to a helper thread",
                    self.rank,
                    self.size,
                    self.watchdog.abort_grace.as_secs_f64()
                );
            }
        }
    }

    /// Polls the communicator until it leaves `ncclInProgress`.
    fn wait_state(&self, what: &str) -> Result<()> {
        self.watchdog.wait(&mut self.health(), Instant::now() + self.timeout, what)
    }

    /// After an enqueueing call: its error aborts; its `ncclInProgress` is waited out
    /// (outside a group).
    fn after_call(&self, call: &'static str, code: RawResult, what: impl FnOnce() -> String) -> Result<()> {
        match self.nccl.check(call, code, Some(self.raw)) {
            Ok(Progress::Done) => Ok(()),
            Ok(Progress::InProgress) if self.group_depth.get() > 0 => Ok(()),
            Ok(Progress::InProgress) => self.wait_state(&what()),
            Err(e) => {
                self.abort_now();
                Err(e)
            }
        }
    }

    fn check_buffers(&self, call: &str, pointers: &[u64], count: usize, dtype: DataType) -> Result<()> {
        if count.checked_mul(dtype.size()).and_then(|b| b.checked_mul(self.size)).is_none() {
            return Err(Error::InvalidArgument(format!("{call}: {count} elements of {dtype:?} overflow")));
        }
        if count > 0 && pointers.contains(&0) {
            return Err(Error::InvalidArgument(format!("{call}: a null device pointer for {count} elements")));
        }
        Ok(())
    }

    /// `ncclAllReduce`: `recv = op(send of every rank)`, `count` elements, enqueued on
    /// `stream`. `send == recv` reduces in place. Wait for it with [`NcclComm::wait`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a null pointer or an overflowing count; else as
    /// [`NcclComm::init`], and the communicator is aborted.
    ///
    /// # Safety
    /// `send` and `recv` are device allocations (`CUdeviceptr`) of the context current on
    /// this thread with room for `count` elements of `dtype`, valid until the work on
    /// `stream` has finished; `stream` is a live stream of that context.
    pub unsafe fn all_reduce(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
        stream: CUstream,
    ) -> Result<()> {
        self.usable("ncclAllReduce")?;
        self.check_buffers("ncclAllReduce", &[send, recv], count, dtype)?;
        // SAFETY: the caller's contract covers the buffers and the stream; the communicator
        // is live (checked above).
        let r = unsafe {
            (self.nccl.f.all_reduce)(
                send as *const c_void,
                recv as *mut c_void,
                count,
                dtype.raw(),
                op.raw(),
                self.raw.0,
                stream,
            )
        };
        self.after_call("ncclAllReduce", r, || format!("ncclAllReduce of {count} {dtype:?} on rank {}", self.rank))
    }

    /// `ncclBroadcast`: `recv` on every rank = `send` of `root`, `count` elements.
    ///
    /// # Errors
    /// As [`NcclComm::all_reduce`]; [`Error::InvalidArgument`] for a root outside the gang.
    ///
    /// # Safety
    /// As [`NcclComm::all_reduce`] (`send` is read on `root` only).
    pub unsafe fn broadcast(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dtype: DataType,
        root: usize,
        stream: CUstream,
    ) -> Result<()> {
        self.usable("ncclBroadcast")?;
        if root >= self.size {
            return Err(Error::InvalidArgument(format!("ncclBroadcast from rank {root} of {}", self.size)));
        }
        let send_ptr = if self.rank == root { send } else { recv };
        self.check_buffers("ncclBroadcast", &[send_ptr, recv], count, dtype)?;
        // SAFETY: the caller's contract covers the buffers and the stream; the communicator
        // is live.
        let r = unsafe {
            (self.nccl.f.broadcast)(
                send_ptr as *const c_void,
                recv as *mut c_void,
                count,
                dtype.raw(),
                root as c_int,
                self.raw.0,
                stream,
            )
        };
        self.after_call("ncclBroadcast", r, || {
            format!("ncclBroadcast of {count} {dtype:?} from rank {root} on rank {}", self.rank)
        })
    }

    /// `ncclAllGather`: `recv` = the `send_count` elements of every rank, in rank order.
    ///
    /// # Errors
    /// As [`NcclComm::all_reduce`].
    ///
    /// # Safety
    /// As [`NcclComm::all_reduce`], with `recv` holding `send_count * size()` elements.
    pub unsafe fn all_gather(
        &self,
        send: u64,
        recv: u64,
        send_count: usize,
        dtype: DataType,
        stream: CUstream,
    ) -> Result<()> {
        self.usable("ncclAllGather")?;
        self.check_buffers("ncclAllGather", &[send, recv], send_count, dtype)?;
        // SAFETY: the caller's contract covers the buffers and the stream; the communicator
        // is live.
        let r = unsafe {
            (self.nccl.f.all_gather)(
                send as *const c_void,
                recv as *mut c_void,
                send_count,
                dtype.raw(),
                self.raw.0,
                stream,
            )
        };
        self.after_call("ncclAllGather", r, || format!("ncclAllGather of {send_count} {dtype:?} on rank {}", self.rank))
    }

    /// Runs `f` (collectives of this communicator) between `ncclGroupStart` and
    /// `ncclGroupEnd`, so that NCCL launches them together; the group's `ncclInProgress` is
    /// waited out after `ncclGroupEnd`.
    ///
    /// # Errors
    /// The first error of `f` or of the group.
    pub fn group<R>(&self, f: impl FnOnce(&Self) -> Result<R>) -> Result<R> {
        self.usable("ncclGroupStart")?;
        // SAFETY: no arguments; group calls are thread-local in NCCL.
        let r = unsafe { (self.nccl.f.group_start)() };
        self.after_call("ncclGroupStart", r, || "ncclGroupStart".into())?;
        self.group_depth.set(self.group_depth.get() + 1);
        let out = f(self);
        self.group_depth.set(self.group_depth.get() - 1);
        if self.aborted.get() {
            // `f` failed and aborted: ending the group would touch the aborted communicator.
            return out;
        }
        // SAFETY: matches the ncclGroupStart above.
        let r = unsafe { (self.nccl.f.group_end)() };
        let end = self.after_call("ncclGroupEnd", r, || format!("ncclGroupEnd on rank {}", self.rank));
        let out = out?;
        end.map(|()| out)
    }

    /// Waits until the work on `stream` has finished, polling the stream and the
    /// communicator's asynchronous error, for at most [`NcclComm::timeout`]; `what` names
    /// the work in errors.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Nccl`] or [`Error::Driver`]; the communicator is then
    /// aborted. [`Error::LibraryMissing`] without a CUDA driver.
    ///
    /// # Safety
    /// `stream` is a live stream of a CUDA context of this process.
    pub unsafe fn wait(&self, stream: CUstream, what: &str) -> Result<()> {
        self.usable("ncclCommGetAsyncError")?;
        let mut health = self.health();
        // SAFETY: the caller's contract.
        let mut watch = unsafe { StreamWatch::new(stream, Some(&mut health)) }?;
        self.watchdog.wait(&mut watch, Instant::now() + self.timeout, what)
    }

    /// [`NcclComm::wait`] on a cudarc stream.
    ///
    /// # Errors
    /// As [`NcclComm::wait`].
    pub fn synchronize(&self, stream: &cudarc::driver::CudaStream, what: &str) -> Result<()> {
        // SAFETY: a `CudaStream` borrowed for the call is live.
        unsafe { self.wait(stream.cu_stream(), what) }
    }

    /// The communicator's asynchronous error now, without waiting.
    ///
    /// # Errors
    /// [`Error::Nccl`] with the fault; the communicator is then aborted.
    pub fn check(&self) -> Result<()> {
        self.usable("ncclCommGetAsyncError")?;
        match self.health().state() {
            Ok(_) => Ok(()),
            Err(fault) => {
                self.abort_now();
                Err(fault.into())
            }
        }
    }

    /// Aborts the communicator now (on a helper thread, waiting at most the abort grace):
    /// what a rank does when it gives up.
    pub fn abort(self) {
        self.abort_now();
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if self.aborted.get() {
            return;
        }
        let who = format!("rank {} of {}", self.rank, self.size);
        // SAFETY: a live communicator, finalized once.
        let r = unsafe { (self.nccl.f.comm_finalize)(self.raw.0) };
        // Finalize leaves the communicator in ncclInProgress until it is quiescent.
        let finalized = match self.nccl.check("ncclCommFinalize", r, Some(self.raw)) {
            Ok(_) => self.wait_state(&format!("ncclCommFinalize ({who})")),
            Err(e) => Err(e),
        };
        if let Err(e) = finalized {
            // The watchdog aborted it if it failed in the wait; a failed call did not.
            self.abort_now();
            eprintln!("gang: the NCCL communicator ({who}) could not be finalized ({e}); it was aborted");
            return;
        }
        self.aborted.set(true);
        let nccl = self.nccl;
        let raw = self.raw;
        let destroyed = run_detached(
            Box::new(move || {
                let raw = raw; // the whole `RawComm` (which is `Send`), not its field
                               // SAFETY: finalized, and destroyed once (`aborted` is set, nothing else
                               // touches it).
                let r = unsafe { (nccl.f.comm_destroy)(raw.0) };
                if r != NCCL_SUCCESS {
                    eprintln!("gang: ncclCommDestroy failed: {}", result_name(r));
                }
            }),
            self.timeout.max(self.watchdog.abort_grace),
        );
        if !destroyed {
            eprintln!("gang: ncclCommDestroy ({who}) did not return in time; leaving it to a helper thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn the_config_has_the_layout_of_nccl_2_28() {
        // struct ncclConfig_v22800 on LP64: the offsets a C compiler gives it.
        assert_eq!(size_of::<RawConfig>(), 80);
        assert_eq!(offset_of!(RawConfig, magic), 8);
        assert_eq!(offset_of!(RawConfig, version), 12);
        assert_eq!(offset_of!(RawConfig, blocking), 16);
        assert_eq!(offset_of!(RawConfig, cga_cluster_size), 20);
        assert_eq!(offset_of!(RawConfig, min_ctas), 24);
        assert_eq!(offset_of!(RawConfig, max_ctas), 28);
        assert_eq!(offset_of!(RawConfig, net_name), 32);
        assert_eq!(offset_of!(RawConfig, split_share), 40);
        assert_eq!(offset_of!(RawConfig, traffic_class), 44);
        assert_eq!(offset_of!(RawConfig, comm_name), 48);
        assert_eq!(offset_of!(RawConfig, collnet_enable), 56);
        assert_eq!(offset_of!(RawConfig, cta_policy), 60);
        assert_eq!(offset_of!(RawConfig, shrink_share), 64);
        assert_eq!(offset_of!(RawConfig, nvls_ctas), 68);
        assert_eq!(offset_of!(RawConfig, n_channels_per_net_peer), 72);
        assert_eq!(offset_of!(RawConfig, nvlink_centric_sched), 76);
        let c = RawConfig::non_blocking();
        assert_eq!((c.size, c.magic, c.version, c.blocking), (80, 0xcafebeef, 22803, 0));
        assert_eq!(c.cga_cluster_size, i32::MIN);
        assert!(c.net_name.is_null() && c.comm_name.is_null());
        assert_eq!(RawConfig::initializer().blocking, i32::MIN);
        assert_eq!(size_of::<RawUniqueId>(), 128);
    }

    #[test]
    fn versions_decode_both_codings() {
        assert_eq!(NcclVersion::from_code(22803), NcclVersion { major: 2, minor: 28, patch: 3 });
        assert_eq!(NcclVersion::from_code(23206).to_string(), "2.32.6");
        assert_eq!(NcclVersion::from_code(2708), NcclVersion { major: 2, minor: 7, patch: 8 });
        assert!(NcclVersion::from_code(21400) >= MIN_VERSION);
        assert!(NcclVersion::from_code(2708) < MIN_VERSION);
    }

    #[test]
    fn unique_ids_round_trip_through_bytes() {
        let mut b = [0u8; 128];
        b.iter_mut().enumerate().for_each(|(i, x)| *x = (i * 7) as u8);
        let id = UniqueId::from_bytes(&b).unwrap();
        assert_eq!(id.to_bytes(), b);
        assert_eq!(id.as_bytes(), &b);
        let raw = id.raw();
        assert_eq!(raw.internal.map(|c| c as u8), b);
        assert!(format!("{id:?}").starts_with("UniqueId(00070e15"));
        let e = UniqueId::from_bytes(&b[..100]).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("128 bytes, not 100")), "{e}");
    }

    #[test]
    fn result_codes_have_nccl_names() {
        assert_eq!(result_name(0), "ncclSuccess");
        assert_eq!(result_name(6), "ncclRemoteError");
        assert_eq!(result_name(7), "ncclInProgress");
        assert_eq!(result_name(42), "ncclResult_t 42");
    }

    #[test]
    fn dtypes_and_ops_have_the_values_of_nccl_h() {
        let d = [DataType::I8, DataType::U8, DataType::I32, DataType::U32, DataType::I64, DataType::U64];
        assert_eq!(d.map(DataType::raw), [0, 1, 2, 3, 4, 5]);
        let d = [DataType::F16, DataType::F32, DataType::F64, DataType::Bf16];
        assert_eq!(d.map(DataType::raw), [6, 7, 8, 9]);
        assert_eq!(d.map(DataType::size), [2, 4, 8, 2]);
        let o = [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min, ReduceOp::Avg];
        assert_eq!(o.map(ReduceOp::raw), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_missing_library_says_what_was_tried_and_how_to_install() {
        let e = try_candidates(Some("/nonexistent/libnccl.so.2")).unwrap_err();
        assert!(e.starts_with("GANG_NCCL_LIBRARY is set but could not be loaded (/nonexistent/libnccl.so.2: "), "{e}");
        assert!(e.contains("pip install nvidia-nccl-cu13") && e.contains("GANG_NCCL_LIBRARY"), "{e}");
        let e = Nccl::open("/nonexistent/libnccl.so.2").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::LibraryMissing { library: "NCCL", .. }));
        assert!(text.starts_with("NCCL is not available: could not load /nonexistent/libnccl.so.2"), "{text}");
        let hint = missing_hint(None, &["libnccl.so.2: not found".into(), "libnccl.so: not found".into()]);
        assert!(hint.starts_with("tried libnccl.so.2, libnccl.so (libnccl.so.2: not found; libnccl.so: not found)"));
    }

    #[test]
    fn a_library_without_nccl_symbols_is_missing_not_a_crash() {
        // libc is on every machine and has no ncclGetVersion.
        let e = Nccl::open("libc.so.6").unwrap_err().to_string();
        assert!(e.contains("libc.so.6 has no ncclGetVersion: gang needs NCCL >= 2.14.0"), "{e}");
    }
}
