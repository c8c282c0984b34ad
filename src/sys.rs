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
    sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE);
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Waits until the write-back of `len` bytes of `file` from `offset` is done (starting it
/// where it was not: `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`). A writer that
/// starts the write-back of each piece and waits for the one before it goes at the disk's
/// pace instead of filling the page cache, so the closing fsync finds at most a piece left
/// and the writer's progress says how far the disk is. Best effort, like
/// [`start_writeback`].
pub fn wait_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    sync_range(
        file,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// `sync_file_range(2)` with `flags`; errors ignored (the closing fsync reports any).
#[cfg(target_os = "linux")]
fn sync_range(file: &std::fs::File, offset: u64, len: u64, flags: libc::c_uint) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range(2) on a file descriptor we own reads no memory of ours; a bad
    // range or descriptor only yields an error code, which we ignore.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags);
    }
}

/// Keeps the memory this process frees for its own next allocations instead of handing it
/// back to the kernel at once (glibc's `mallopt`: blocks up to 32 MiB, the most every glibc
/// accepts, come from the heap, not from a mapping of their own, and up to 1 GiB of free
/// top of each heap, the main one and each thread's arena, stays mapped).
///
/// A map stage allocates and frees its batches' buffers, about 1 MiB a column, for every
/// partition. With glibc's defaults most of them were fresh mappings or freshly trimmed
/// heap: the kernel zeroed and faulted in every page anew, 175,000 page faults and more
/// than a second of system time for `gang standardize` of 256 MB on one rank
/// (`bench/RESULTS.md`). With this, 93,000 (86,000 with `standardize` working in place).
///
/// The price: a rank's resident memory stays near its peak (up to 1 GiB above what it
/// holds per heap: a rank whose decoding threads have arenas of their own may keep
/// several) until it ends. Nothing is changed when the user already tuned glibc's allocator
/// (`GLIBC_TUNABLES` naming `glibc.malloc`, or `MALLOC_TRIM_THRESHOLD_` /
/// `MALLOC_MMAP_THRESHOLD_`), or on other C libraries. Returns whether it was applied.
pub fn keep_freed_memory() -> bool {
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc"))
        || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
        || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some();
    if tuned {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Each on its own: a glibc that refuses one still takes the other.
        // SAFETY: mallopt(3) changes glibc's allocator settings; it reads no memory of ours,
        // and glibc applies the settings under its own locks.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) } == 1;
        // SAFETY: as above.
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) } == 1;
        mmap && trim
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}
