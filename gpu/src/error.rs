//! The one error type of gang-gpu.

use std::fmt;
use std::time::Duration;

/// `Result` with gang-gpu's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong on the GPU side. Every variant says what to do about it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A CUDA library could not be loaded (`libcuda.so.1`, `libnvrtc.so.13`,
    /// `libnccl.so.2`, `libnvidia-ml.so.1`).
    LibraryMissing {
        /// The library, as the user knows it ("the CUDA driver (libcuda)", "NCCL").
        library: &'static str,
        /// What was tried and how to provide it.
        hint: String,
    },
    /// The libraries are there but no device is usable by this process.
    NoDevice(String),
    /// A CUDA driver call failed.
    Driver {
        /// What gang was doing ("allocating 512 MiB on cuda:0").
        what: String,
        /// The driver's error.
        detail: String,
    },
    /// NVRTC refused a kernel source.
    Compile {
        /// The source file (`dense.cu`).
        source: &'static str,
        /// The architecture it was compiled for (`sm_90`).
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// An NCCL call failed (the code's name and NCCL's own message).
    Nccl {
        /// The NCCL function.
        call: &'static str,
        /// Its result code, as NCCL names it.
        code: String,
        /// NCCL's last error message, if it gave one.
        detail: String,
    },
    /// A device operation did not finish within its deadline (a peer died or stalled).
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The placement of ranks on devices is wrong (two ranks on one GPU, a rank without one).
    Placement(String),
    /// A caller's mistake: shapes, lengths, an unknown option.
    InvalidArgument(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::LibraryMissing { library, hint } => write!(f, "{library} is not available: {hint}"),
            Error::NoDevice(s) => write!(f, "no usable GPU: {s}"),
            Error::Driver { what, detail } => write!(f, "CUDA error while {what}: {detail}"),
            Error::Compile { source, arch, log } => {
                write!(f, "NVRTC could not compile {source} for {arch}:\n{}", log.trim_end())
            }
            Error::Nccl { call, code, detail } if detail.is_empty() => write!(f, "{call} failed: {code}"),
            Error::Nccl { call, code, detail } => write!(f, "{call} failed: {code} ({detail})"),
            Error::Timeout { what, after } => {
                write!(f, "{what} did not finish within {:.1} s (a peer rank died or stalled)", after.as_secs_f64())
            }
            Error::Placement(s) => f.write_str(s),
            Error::InvalidArgument(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// A driver error with what gang was doing.
    pub fn driver(what: impl Into<String>, e: impl fmt::Display) -> Error {
        Error::Driver { what: what.into(), detail: e.to_string() }
    }
}
