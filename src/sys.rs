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

/// Asks the kernel to back the whole 2 MiB pages inside `buf` with transparent huge
/// pages (`madvise(MADV_HUGEPAGE)`), before they are first touched: a shard read in
/// shuffled blocks then costs one TLB entry per 2 MiB instead of one per 4 KiB. Best
/// effort: where the kernel does not offer it, nothing changes.
pub(crate) fn advise_huge_pages<T>(buf: &mut [std::mem::MaybeUninit<T>]) {
    const HUGE: usize = 2 << 20;
    let start = buf.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(buf);
    let first = start.next_multiple_of(HUGE);
    if first + HUGE > end {
        return;
    }
    let len = (end - first) / HUGE * HUGE;
    // SAFETY: [first, first + len) lies inside `buf`, which we borrow mutably; the advice
    // changes how the kernel backs the pages, never their contents or validity.
    unsafe {
        libc::madvise(first as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}
