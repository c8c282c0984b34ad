//! How a rank fails: one place for the panic hook, the failure record, the panic-payload
//! extractor and the stopping of the gang.
//!
//! A failing rank records why (rank, stage, message, [`FailureClass`]) in the run
//! directory, prints it once, and stops the gang through its communicator: under MPI
//! ([`FailureScope::Process`]) `MPI_Abort` ends every process of the job, so no peer is
//! left waiting in a collective; on the Local backend ([`FailureScope::Thread`]) every
//! peer's current or next collective returns [`Error::GangFailed`]. The class tells the
//! launcher whether a restart can help: [`Error::class`] gives it for gang's errors.

// Without the `mpi` feature no backend of this crate has Process scope, but the hook
// stays: it is what such a backend (one rank per process) claims.
#![cfg_attr(not(feature = "mpi"), allow(dead_code))]

use crate::comm::{Comm, FailureScope};
use crate::error::Error;
pub use gang_protocol::FailureClass;
use gang_protocol::{FailureKind, FailureRecord, RunDir};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

/// Exit code of a rank that aborts the gang because its code returned an error.
pub const EXIT_RANK_ERROR: i32 = 1;
/// Exit code of a rank that aborts the gang because its code panicked (Rust's own).
pub const EXIT_RANK_PANIC: i32 = 101;

/// What a rank's storage and stages need to know about the run it belongs to, beyond its
/// communicator: which attempt of the gang this is and where the launcher keeps the
/// run's records. Plain data: [`Context`](crate::Context) makes one from the launcher's
/// environment, and a program that adopts its own communicator can make its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunInfo {
    /// Attempt number: 0 on the first launch, k after k restarts of the gang.
    pub attempt: u32,
    /// The run directory the launcher created (records of failures go there), if any.
    pub run_dir: Option<PathBuf>,
}

impl RunInfo {
    /// A run of attempt `attempt` with no run directory.
    pub fn new(attempt: u32) -> RunInfo {
        RunInfo { attempt, run_dir: None }
    }

    /// The same run with records kept in `dir`.
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> RunInfo {
        self.run_dir = Some(dir.into());
        self
    }
}

/// The message of a panic payload (`&str` or `String`; other payloads read `panic`).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

thread_local! {
    /// Whether a panic on this thread is caught by [`catch_panic`] (and so is not the
    /// rank's failure).
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into its message instead of the rank's failure: the panic
/// hook leaves panics inside `f` to this function (a reader that panics on a corrupt
/// file becomes an input error naming the file, not a crash of the gang).
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let outer = CATCHING.replace(true);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.set(outer);
    out.map_err(|p| panic_message(p.as_ref()))
}

/// Prints why `rank` failed, once, and records it in the run directory (best effort: a
/// failure to record is printed too), before the caller stops the gang.
pub(crate) fn record(rank: usize, run: &RunInfo, kind: FailureKind, class: FailureClass, message: &str) {
    let what = match kind {
        FailureKind::Panic => "panicked",
        _ => "failed",
    };
    eprintln!("gang: rank {rank} {what}: {message}; stopping the gang");
    if let Some(dir) = &run.run_dir {
        write_record(dir, rank, run.attempt, kind, class, message);
    }
}

fn write_record(dir: &Path, rank: usize, attempt: u32, kind: FailureKind, class: FailureClass, message: &str) {
    let rec = FailureRecord::now(rank, attempt, kind, message.to_string()).with_class(class);
    if let Err(e) = RunDir::open(dir).with_attempt(attempt).write_failure(&rec) {
        eprintln!("gang: rank {rank}: could not record the failure in {}: {e}", dir.display());
    }
}

/// The stage of an error returned from the function [`crate::execute`] runs.
pub(crate) const EXECUTE: &str = "execute";

/// Records `error` as this rank's failure in `stage` and stops the gang. Under
/// [`FailureScope::Process`] this does not return. A [`Error::GangFailed`] (a peer's
/// failure reaching this rank) is not recorded again: the gang is already stopping.
pub(crate) fn fail_gang(comm: &Comm, run: &RunInfo, stage: &str, error: &Error, code: i32) {
    let message = error.to_string();
    if !matches!(error, Error::GangFailed { .. }) {
        // An error returned from the rank's function as a whole needs no stage name.
        let text = if stage == EXECUTE { message.clone() } else { format!("{stage}: {message}") };
        record(comm.rank(), run, FailureKind::Error, error.class(), &text);
    }
    comm.abort_gang(stage, &message, code);
}

/// The rank of this process and the stages it is inside of, for the panic hook. Set
/// when a communicator with [`FailureScope::Process`] (one rank per process) is made.
struct ProcessRank {
    rank: usize,
    run: RunInfo,
    /// Innermost last: a stage's name and its current step.
    stages: Vec<(String, Arc<AtomicU64>)>,
}

static PROCESS: Mutex<Option<ProcessRank>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// Makes a panic anywhere in this process the failure of `comm`'s rank: the panic is
/// printed, recorded (naming the innermost stage entered with [`enter_stage`]) and the
/// gang is stopped (`MPI_Abort`: unwinding would finalize MPI while the peers wait in a
/// collective, a hang that never ends). For communicators of
/// [`FailureScope::Process`] only; others catch panics per rank thread.
pub(crate) fn claim_process(comm: &Comm, run: &RunInfo) {
    if comm.failure_scope() != FailureScope::Process {
        return;
    }
    *lock() = Some(ProcessRank { rank: comm.rank(), run: run.clone(), stages: Vec::new() });
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |p| {
            previous(p);
            if CATCHING.get() {
                return;
            }
            // try_lock: a panic while the lock is held (by this very thread) must not
            // deadlock; the record is then written without the stage.
            let guard = PROCESS.try_lock();
            let Ok(guard) = guard else { crate::comm::abort_process(EXIT_RANK_PANIC) };
            let Some(me) = guard.as_ref() else { return };
            if !crate::comm::process_scope_active() {
                return;
            }
            let location = p.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let payload = panic_message(p.payload());
            let message = match me.stages.last() {
                Some((name, step)) => {
                    format!("{}: panicked: {payload}{location}", stage_label(name, step.load(Ordering::Relaxed)))
                }
                None => format!("{payload}{location}"),
            };
            let (rank, run) = (me.rank, me.run.clone());
            drop(guard);
            record(rank, &run, FailureKind::Panic, FailureClass::Transient, &message);
            crate::comm::abort_process(EXIT_RANK_PANIC);
        }));
    });
}

fn lock() -> std::sync::MutexGuard<'static, Option<ProcessRank>> {
    PROCESS.lock().unwrap_or_else(|p| p.into_inner())
}

/// `section <name> step <step>`: how a stage is named in records.
pub(crate) fn stage_label(name: &str, step: u64) -> String {
    format!("section {name} step {step}")
}

/// Marks this process as inside stage `name` (its step read from `step`) until dropped,
/// so a panic names it. No effect unless the process's rank was claimed.
pub(crate) struct StageMark {
    active: bool,
}

pub(crate) fn enter_stage(comm: &Comm, name: &str, step: Arc<AtomicU64>) -> StageMark {
    if comm.failure_scope() != FailureScope::Process {
        return StageMark { active: false };
    }
    let mut g = lock();
    match g.as_mut() {
        Some(me) => {
            me.stages.push((name.to_string(), step));
            StageMark { active: true }
        }
        None => StageMark { active: false },
    }
}

impl Drop for StageMark {
    fn drop(&mut self) {
        if self.active {
            if let Some(me) = lock().as_mut() {
                me.stages.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_as_text() {
        let a: Box<dyn std::any::Any + Send> = Box::new("static");
        let b: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        let c: Box<dyn std::any::Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(a.as_ref()), "static");
        assert_eq!(panic_message(b.as_ref()), "owned");
        assert_eq!(panic_message(c.as_ref()), "panic");
    }

    #[test]
    fn records_carry_the_class() {
        let dir = std::env::temp_dir().join(format!("gang-failure-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run = RunInfo::new(1).with_run_dir(&dir);
        record(3, &run, FailureKind::Error, FailureClass::Input, "x.parquet: bad magic");
        let got = RunDir::open(&dir).with_attempt(1).failures().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].rank, got[0].attempt, got[0].class), (3, 1, FailureClass::Input));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
