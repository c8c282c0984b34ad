//! The operating-system calls the launcher needs, behind safe wrappers.
//!
//! This is the only module of the crate with `unsafe` code: `prctl`, `kill`, `waitpid`,
//! `getppid`, `geteuid`, `getifaddrs` and the `pre_exec` hook. It also holds the `/proc` readers (safe
//! code) used to tell whether a recorded process is still alive and to find orphans.
#![allow(unsafe_code)]

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGTERM};

/// Turns a `-1` return of a libc call into the `errno` error.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A pid as libc wants it. Refuses 0 and anything that is not a positive `pid_t`, because
/// `kill(0, ..)` and `kill(-1, ..)` would signal far more than one process.
fn to_pid(pid: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(pid) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid pid {pid}"))),
    }
}

/// The effective user id of this process (0 for root).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The pid of this process's parent.
pub fn parent_pid() -> u32 {
    // SAFETY: getppid takes no arguments, has no preconditions and cannot fail.
    let ppid = unsafe { libc::getppid() };
    ppid as u32
}

/// Asks the kernel to SIGKILL this process when the thread that forked it exits.
///
/// # Errors
/// The `prctl` error, which Linux only returns for invalid arguments.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes one integer argument (a valid signal number); the
    // remaining variadic arguments are ignored integers. No memory is passed.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret).map(drop)
}

/// Makes this process the reaper of its orphaned descendants: when a child dies, its own
/// children are re-parented here instead of to PID 1, so the launcher can find and kill
/// them (and reap them, which PID 1 in a container may never do).
///
/// # Errors
/// The `prctl` error (only on kernels older than 3.4).
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument; no memory is passed.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret).map(drop)
}

/// Runs in the forked child before `exec`: send `signal` to the child when `parent` dies, and fail
/// the spawn if `parent` already died between `fork` and the `prctl` (then the death signal
/// would never come).
///
/// Only async-signal-safe system calls, no allocation: this runs between fork and exec.
fn child_dies_with(parent: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: as in `die_with_parent`: integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            signal as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret)?;
    // SAFETY: getppid has no preconditions and cannot fail.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Makes the process that `cmd` spawns receive `signal` when this process dies.
///
/// The death signal fires when the *thread* that spawned the child exits, so spawn from a
/// thread that lives as long as the process (the main thread).
pub fn signal_child_when_we_die(cmd: &mut Command, signal: i32) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook runs in the child between fork and exec; `child_dies_with` only makes
    // the async-signal-safe calls prctl and getppid, allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || child_dies_with(parent, signal));
    }
}

/// Sends `sig` to the process `pid`.
///
/// # Errors
/// `ESRCH` when the process is gone, `EPERM` when it is not ours.
pub fn send_signal(pid: u32, sig: i32) -> io::Result<()> {
    let pid = to_pid(pid)?;
    // SAFETY: kill takes plain integers; `pid` is positive so exactly one process is meant.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Sends `sig` to every process of the process group `pgid`.
///
/// # Errors
/// `ESRCH` when the group has no members left.
pub fn signal_group(pgid: u32, sig: i32) -> io::Result<()> {
    let pgid = to_pid(pgid)?;
    // SAFETY: kill takes plain integers; `-pgid` with pgid > 1 names one process group.
    check(unsafe { libc::kill(-pgid, sig) }).map(drop)
}

/// Reaps one exited child of this process without blocking; its pid, or `None` when no
/// child has exited.
pub fn reap_one_child() -> Option<u32> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable c_int for the duration of the call.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some(pid as u32)
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// State letter: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Parent pid.
    pub ppid: u32,
}

/// Parses the contents of `/proc/<pid>/stat`. The command name (field 2) may contain spaces
/// and parentheses, so the fields are counted from its last `)`.
pub fn parse_stat(stat: &str) -> Option<ProcStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid })
}

/// The state of process `pid`, or `None` when it does not exist.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `pid` exists and is not a zombie (a zombie has exited; only its parent's
/// bookkeeping is left).
pub fn is_running(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// Whether the environment `pid` was started with contains the entry `entry`
/// (e.g. `GANG_RUN_ID=...`). False when it cannot be read.
pub fn environ_has(pid: u32, entry: &str) -> bool {
    match fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env.split(|b| *b == 0).any(|e| e == entry.as_bytes()),
        Err(_) => false,
    }
}

/// Pids of the processes whose parent is `ppid` (zombies included).
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| matches!(proc_stat(*pid), Some(s) if s.ppid == ppid))
        .collect()
}

/// The IPv4 addresses of this host's interfaces that are up, other than loopback, in the
/// order the kernel lists them (what a rank on another node may reach the launcher at).
pub fn host_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that freeifaddrs releases below; every
    // node is read only while the list is alive.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & (libc::IFF_UP as libc::c_uint) != 0;
            if up && !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !out.contains(&std::net::IpAddr::V4(ip)) {
                    out.push(std::net::IpAddr::V4(ip));
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let s = "4242 (my (odd) prog) S 17 4242 4242 0 -1 4194560 100 0";
        assert_eq!(parse_stat(s), Some(ProcStat { state: 'S', ppid: 17 }));
        assert_eq!(parse_stat("1 (init) Z 0"), Some(ProcStat { state: 'Z', ppid: 0 }));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_running_and_sees_itself() {
        let me = std::process::id();
        assert!(is_running(me));
        assert_eq!(proc_stat(me).unwrap().ppid, parent_pid());
        assert!(!is_running(u32::MAX / 2 + 7));
    }

    #[test]
    fn refuses_pids_that_would_signal_many_processes() {
        assert!(send_signal(0, 0).is_err());
        assert!(signal_group(0, 0).is_err());
        assert!(send_signal(u32::MAX, 0).is_err()); // would be kill(-1, ..)
        assert!(send_signal(std::process::id(), 0).is_ok());
    }

    #[test]
    fn children_are_found_and_die_with_their_parent_hook() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        signal_child_when_we_die(&mut cmd, SIGKILL);
        let mut child = cmd.spawn().unwrap();
        assert!(children_of(std::process::id()).contains(&child.id()));
        send_signal(child.id(), SIGKILL).unwrap();
        child.wait().unwrap();
        assert!(!is_running(child.id()));
    }
}
