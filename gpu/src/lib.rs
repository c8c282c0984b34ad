//! The GPU side of gang: device discovery and binding, kernels compiled at run time with
//! NVRTC, training on device buffers, NCCL collectives.
//!
//! Every CUDA library is loaded at run time (cudarc's `dynamic-loading`, NVML through
//! nvml-wrapper, NCCL through a binding of this crate), so gang builds without a CUDA
//! toolkit and runs everywhere; where a library or a device is missing, the functions
//! here return an [`Error`] that says which, never panic.
//!
//! The kernels (`gpu/kernels/*.cu`) are plain functions of their thread index: no shared
//! memory, no atomics, reductions in two passes over fixed segments. So they are
//! deterministic, and the same sources compile as host C++ ([`host`]): the training loop
//! of [`train`] runs unchanged over the CPU build of the kernels in the tests, and the
//! GPU check compares every kernel with its CPU twin.
#![warn(missing_docs)]

pub mod collectives;
pub mod error;
pub mod exec;
pub mod host;
pub mod nccl;
pub mod nvml;
pub mod nvrtc;
pub mod train;
pub mod watchdog;

pub use error::{Error, Result};
