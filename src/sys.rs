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

/// Starts the write-back of `len` bytes of `file` from `offset` to the disk without
/// waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): a large file written in
/// pieces then reaches the disk while the rest is still being written, and the closing
/// fsync finds little left to do. Not a durability guarantee on its own (the fsync is
/// still needed). Best effort: errors and other systems are ignored (the fsync reports
/// any failure to write).
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range(2) on a file descriptor we own reads no memory of ours;
        // a bad range or descriptor only yields an error code, which we ignore.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}
