//! The few operating-system calls of the rank runtime that the standard library lacks.
#![allow(unsafe_code)]

/// Ends this process with SIGKILL: no unwinding, no exit handlers, no last words, as when
/// the kernel's OOM killer or a node failure takes a rank.
pub(crate) fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; should delivery be delayed, make sure nothing runs on.
    std::process::abort()
}
