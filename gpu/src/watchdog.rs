//! Waiting on the device without ever hanging: the state machine behind every NCCL wait.
//!
//! A rank that blocks in `cudaStreamSynchronize` or in a blocking NCCL call when a peer has
//! died waits forever, and so does the whole gang (torch and Horovod users report exactly
//! this). NCCL's maintainers' advice (NVIDIA/nccl #829, #863) is followed here: never block;
//! poll the stream and the communicator's asynchronous error in a loop with a deadline; when
//! the deadline passes or an error shows, abort the communicator, and do that on a helper
//! thread, because `ncclCommAbort` can itself hang. The waiting rank then returns the error;
//! its caller records the failure and exits, and the launcher restarts the gang.
//!
//! What is polled is a [`Watched`]: [`StreamWatch`] over a CUDA stream (and a communicator's
//! health) on a GPU, a fake one in the tests. So the state machine is tested without a GPU.
//!
//! ```
//! use gang_gpu::watchdog::{wait, Poll, Watched};
//! use std::time::{Duration, Instant};
//!
//! /// Done on the third poll.
//! struct Countdown(u32);
//! impl Watched for Countdown {
//!     fn query(&mut self) -> Poll {
//!         self.0 -= 1;
//!         if self.0 == 0 { Poll::Done } else { Poll::Pending }
//!     }
//! }
//! wait(&mut Countdown(3), Instant::now() + Duration::from_secs(1), "a countdown").unwrap();
//! ```
#![allow(unsafe_code)] // cuStreamQuery in `StreamWatch`, nothing else.

use crate::error::{Error, Result};
use cudarc::driver::sys;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The state of what is waited for, as one poll sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Still running.
    Pending,
    /// Finished.
    Done,
    /// Failed: the device reported this error (a CUDA error name and message).
    Failed(String),
}

/// An error a communicator reported asynchronously (NCCL's `ncclCommGetAsyncError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommFault {
    /// The NCCL call that reported it (`ncclCommGetAsyncError`, `ncclCommInitRankConfig`).
    pub call: &'static str,
    /// The result code, as NCCL names it (`ncclRemoteError`).
    pub code: String,
    /// NCCL's last error message, if it gave one.
    pub detail: String,
}

impl From<CommFault> for Error {
    fn from(f: CommFault) -> Error {
        Error::Nccl { call: f.call, code: f.code, detail: f.detail }
    }
}

/// What runs on a helper thread when a wait fails: `ncclCommAbort` of the communicator.
pub type AbortHook = Box<dyn FnOnce() + Send + 'static>;

/// Something a rank waits for without blocking: a stream of device work, a communicator
/// being initialized or finalized.
pub trait Watched {
    /// One non-blocking look at the work's state.
    fn query(&mut self) -> Poll;

    /// The communicator's asynchronous error, if any (`Ok` when there is none or no
    /// communicator is involved).
    ///
    /// # Errors
    /// The fault the communicator reported: a peer died, the network failed.
    fn async_error(&mut self) -> std::result::Result<(), CommFault> {
        Ok(())
    }

    /// What to run, once, on a helper thread when the wait fails (deadline or error):
    /// `ncclCommAbort`. `None` when there is nothing to abort or it was already taken.
    fn abort_hook(&mut self) -> Option<AbortHook> {
        None
    }
}

/// How [`Watchdog::wait`] polls: spin briefly (device work that is about to finish is seen
/// at once), then sleep with a backoff that doubles up to `max_sleep` (a rank waiting
/// minutes for a slow peer costs no core), and how long a failed wait gives the abort hook
/// before returning anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// Poll without sleeping (yielding the core) for this long first. Default 50 µs.
    pub spin: Duration,
    /// The first sleep between polls after the spin; doubles each poll. Default 10 µs.
    pub min_sleep: Duration,
    /// The longest sleep between polls. Default 1 ms.
    pub max_sleep: Duration,
    /// How long a failed wait waits for the abort hook before returning without it (the
    /// hook goes on on its detached thread). Default 5 s.
    pub abort_grace: Duration,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            spin: Duration::from_micros(50),
            min_sleep: Duration::from_micros(10),
            max_sleep: Duration::from_millis(1),
            abort_grace: Duration::from_secs(5),
        }
    }
}

impl Watchdog {
    /// This policy with another [`Watchdog::abort_grace`].
    pub fn with_abort_grace(self, abort_grace: Duration) -> Self {
        Watchdog { abort_grace, ..self }
    }

    /// Polls `w` until it is done, fails, or `deadline` passes; `what` names it in errors
    /// ("allreduce of 1048576 f32 on rank 3").
    ///
    /// On failure the abort hook of `w` runs on a helper thread ([`run_detached`]), and
    /// the error is returned after at most [`Watchdog::abort_grace`] more, whether the
    /// abort finished or not. The caller records the failure and exits: the communicator
    /// is gone and the launcher restarts the gang.
    ///
    /// # Errors
    /// - [`Error::Timeout`] naming `what` when the deadline passes;
    /// - [`Error::Nccl`] when the communicator reports an asynchronous error;
    /// - [`Error::Driver`] when the device reports an error on the stream.
    pub fn wait<W: Watched + ?Sized>(&self, w: &mut W, deadline: Instant, what: &str) -> Result<()> {
        let start = Instant::now();
        let spin_until = start + self.spin;
        let mut sleep = self.min_sleep;
        loop {
            let failure = match w.query() {
                Poll::Done => return Ok(()),
                Poll::Failed(detail) => Some(Error::Driver { what: format!("waiting for {what}"), detail }),
                Poll::Pending => match w.async_error() {
                    Err(fault) => Some(Error::from(fault)),
                    Ok(()) => None,
                },
            };
            let failure = failure.or_else(|| {
                let now = Instant::now();
                (now >= deadline).then(|| Error::Timeout {
                    what: what.to_string(),
                    after: deadline.saturating_duration_since(start),
                })
            });
            if let Some(e) = failure {
                if let Some(hook) = w.abort_hook() {
                    if !run_detached(hook, self.abort_grace) {
                        eprintln!(
                            "gang: aborting the NCCL communicator after \"{e}\" did not finish within {:.1} s; \
                             leaving it to a helper thread",
                            self.abort_grace.as_secs_f64()
                        );
                    }
                }
                return Err(e);
            }
            let now = Instant::now();
            if now < spin_until {
                std::thread::yield_now();
            } else {
                std::thread::sleep(sleep.min(deadline.saturating_duration_since(now)));
                sleep = (sleep * 2).min(self.max_sleep);
            }
        }
    }
}

/// [`Watchdog::wait`] with the default policy.
///
/// # Errors
/// See [`Watchdog::wait`].
pub fn wait<W: Watched + ?Sized>(w: &mut W, deadline: Instant, what: &str) -> Result<()> {
    Watchdog::default().wait(w, deadline, what)
}

/// Runs `hook` (an `ncclCommAbort`, an `ncclCommDestroy`) on a detached helper thread and
/// waits at most `grace` for it: `true` when it finished in time. A hook that hangs
/// (`ncclCommAbort` can) is left running; the process exits around it.
pub fn run_detached(hook: AbortHook, grace: Duration) -> bool {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new().name("gang-nccl-watchdog".into()).spawn(move || {
        hook();
        let _ = done_tx.send(());
    });
    match spawned {
        // The JoinHandle is dropped: the thread is detached.
        Ok(_) => done_rx.recv_timeout(grace).is_ok(),
        Err(e) => {
            // Running the hook here could hang this rank: better not abort at all.
            eprintln!("gang: could not start a helper thread for NCCL: {e}");
            false
        }
    }
}

/// A CUDA stream (`cuStreamQuery`: `CUDA_ERROR_NOT_READY` is pending) and, optionally, the
/// health of the communicator whose work is on it: its asynchronous error and its abort.
pub struct StreamWatch<'a> {
    stream: sys::CUstream,
    comm: Option<&'a mut dyn Watched>,
}

impl<'a> StreamWatch<'a> {
    /// Watches `stream`, and `comm`'s [`Watched::async_error`] and
    /// [`Watched::abort_hook`] when given (its `query` is not used).
    ///
    /// # Errors
    /// [`Error::LibraryMissing`] when the CUDA driver library is not there.
    ///
    /// # Safety
    /// `stream` is a stream of a live CUDA context (or null for the legacy default stream
    /// of the context current on this thread), and stays valid while the watch is used.
    pub unsafe fn new(stream: sys::CUstream, comm: Option<&'a mut dyn Watched>) -> Result<Self> {
        if !driver_present() {
            return Err(Error::LibraryMissing {
                library: "the CUDA driver (libcuda)",
                hint: "libcuda.so.1 was not found: this machine has no NVIDIA driver".into(),
            });
        }
        Ok(StreamWatch { stream, comm })
    }
}

impl Watched for StreamWatch<'_> {
    fn query(&mut self) -> Poll {
        // SAFETY: the driver library is present (checked in `new`), and `new`'s contract
        // makes `stream` a valid stream handle.
        let r = unsafe { sys::cuStreamQuery(self.stream) };
        match r {
            sys::CUresult::CUDA_SUCCESS => Poll::Done,
            sys::CUresult::CUDA_ERROR_NOT_READY => Poll::Pending,
            e => Poll::Failed(cuda_error_text(e)),
        }
    }

    fn async_error(&mut self) -> std::result::Result<(), CommFault> {
        match &mut self.comm {
            Some(c) => c.async_error(),
            None => Ok(()),
        }
    }

    fn abort_hook(&mut self) -> Option<AbortHook> {
        self.comm.as_mut().and_then(|c| c.abort_hook())
    }
}

/// Whether the CUDA driver library (libcuda) can be loaded: cudarc's driver calls panic
/// without it, so check this first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    unsafe { sys::is_culib_present() }
}

/// `CUDA_ERROR_X: message` for a driver result.
fn cuda_error_text(e: sys::CUresult) -> String {
    let mut msg: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: only called after the driver library was found; `msg` is a valid out pointer,
    // and the string it receives is static in the driver.
    let r = unsafe { sys::cuGetErrorString(e, &mut msg) };
    if r == sys::CUresult::CUDA_SUCCESS && !msg.is_null() {
        // SAFETY: the driver returns a NUL-terminated static string.
        let text = unsafe { std::ffi::CStr::from_ptr(msg) }.to_string_lossy();
        format!("{e:?}: {text}")
    } else {
        format!("{e:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::ThreadId;

    /// A stream that finishes after `done_after` polls (never with `None`), a communicator
    /// that fails at poll `fault_at`, and an abort hook that records its thread and may hang.
    struct FakeStream {
        polls: u32,
        done_after: Option<u32>,
        fault_at: Option<u32>,
        stream_error_at: Option<u32>,
        abort_thread: Arc<Mutex<Option<ThreadId>>>,
        abort_hangs: bool,
        abort_taken: bool,
    }

    impl FakeStream {
        fn new(done_after: Option<u32>) -> Self {
            FakeStream {
                polls: 0,
                done_after,
                fault_at: None,
                stream_error_at: None,
                abort_thread: Arc::new(Mutex::new(None)),
                abort_hangs: false,
                abort_taken: false,
            }
        }
        fn aborted_on(&self) -> Option<ThreadId> {
            *self.abort_thread.lock().unwrap()
        }
    }

    impl Watched for FakeStream {
        fn query(&mut self) -> Poll {
            self.polls += 1;
            if self.stream_error_at == Some(self.polls) {
                return Poll::Failed("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access".into());
            }
            match self.done_after {
                Some(k) if self.polls >= k => Poll::Done,
                _ => Poll::Pending,
            }
        }
        fn async_error(&mut self) -> std::result::Result<(), CommFault> {
            match self.fault_at {
                Some(k) if self.polls >= k => Err(CommFault {
                    call: "ncclCommGetAsyncError",
                    code: "ncclRemoteError".into(),
                    detail: "peer rank 2 closed the connection".into(),
                }),
                _ => Ok(()),
            }
        }
        fn abort_hook(&mut self) -> Option<AbortHook> {
            if std::mem::replace(&mut self.abort_taken, true) {
                return None;
            }
            let slot = self.abort_thread.clone();
            let hangs = self.abort_hangs;
            Some(Box::new(move || {
                *slot.lock().unwrap() = Some(std::thread::current().id());
                if hangs {
                    // As a hanging ncclCommAbort: never returns within the test.
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }))
        }
    }

    fn quick() -> Watchdog {
        Watchdog::default().with_abort_grace(Duration::from_secs(2))
    }

    #[test]
    fn completes_after_k_polls_without_aborting() {
        for k in [1, 2, 50, 300] {
            let mut s = FakeStream::new(Some(k));
            quick().wait(&mut s, Instant::now() + Duration::from_secs(10), "a fake allreduce").unwrap();
            assert_eq!(s.polls, k);
            assert_eq!(s.aborted_on(), None, "no abort when the work completes");
        }
    }

    #[test]
    fn never_completing_times_out_within_the_deadline_and_aborts_on_another_thread() {
        let mut s = FakeStream::new(None);
        let start = Instant::now();
        let e = quick().wait(&mut s, start + Duration::from_millis(200), "allreduce of 1024 f32").unwrap_err();
        let elapsed = start.elapsed();
        match &e {
            Error::Timeout { what, after } => {
                assert_eq!(what, "allreduce of 1024 f32");
                assert!(*after <= Duration::from_millis(200) && *after >= Duration::from_millis(150), "{after:?}");
            }
            e => panic!("expected a timeout, got {e:?}"),
        }
        assert!(e.to_string().contains("allreduce of 1024 f32 did not finish within 0.2 s"), "{e}");
        assert!(elapsed >= Duration::from_millis(200), "returned before the deadline: {elapsed:?}");
        // The deadline plus the (quick) abort, with room for a loaded CI machine.
        assert!(elapsed < Duration::from_millis(1500), "overran the deadline: {elapsed:?}");
        let on = s.aborted_on().expect("the abort hook ran");
        assert_ne!(on, std::thread::current().id(), "the abort ran on the waiting thread");
        // It slept between polls rather than spinning for 200 ms.
        assert!(s.polls < 20_000, "{} polls", s.polls);
    }

    #[test]
    fn an_async_error_surfaces_as_an_nccl_error_and_aborts() {
        let mut s = FakeStream::new(None);
        s.fault_at = Some(3);
        let e = quick().wait(&mut s, Instant::now() + Duration::from_secs(10), "broadcast").unwrap_err();
        match &e {
            Error::Nccl { call, code, detail } => {
                assert_eq!(*call, "ncclCommGetAsyncError");
                assert_eq!(code, "ncclRemoteError");
                assert!(detail.contains("peer rank 2"));
            }
            e => panic!("expected an NCCL error, got {e:?}"),
        }
        assert_eq!(e.to_string(), "ncclCommGetAsyncError failed: ncclRemoteError (peer rank 2 closed the connection)");
        assert_eq!(s.polls, 3, "the error is seen at the poll that reports it");
        assert!(s.aborted_on().is_some_and(|t| t != std::thread::current().id()));
    }

    #[test]
    fn a_stream_error_surfaces_as_a_driver_error_naming_the_wait() {
        let mut s = FakeStream::new(None);
        s.stream_error_at = Some(2);
        let e = quick().wait(&mut s, Instant::now() + Duration::from_secs(10), "allgather").unwrap_err();
        assert!(
            matches!(&e, Error::Driver { what, detail } if what == "waiting for allgather" && detail.contains("ILLEGAL"))
        );
        assert!(s.aborted_on().is_some());
    }

    #[test]
    fn a_hanging_abort_does_not_block_the_wait() {
        let mut s = FakeStream::new(None);
        s.abort_hangs = true;
        let start = Instant::now();
        let dog = Watchdog::default().with_abort_grace(Duration::from_millis(100));
        let e = dog.wait(&mut s, start + Duration::from_millis(100), "allreduce").unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_millis(1500), "the wait blocked on the abort: {elapsed:?}");
        assert!(s.aborted_on().is_some(), "the abort was started");
    }

    #[test]
    fn the_abort_hook_is_taken_once() {
        let mut s = FakeStream::new(None);
        let d = Instant::now() + Duration::from_millis(20);
        assert!(quick().wait(&mut s, d, "first").is_err());
        *s.abort_thread.lock().unwrap() = None;
        assert!(quick().wait(&mut s, d, "second").is_err());
        assert_eq!(s.aborted_on(), None, "a second failure does not abort twice");
    }

    #[test]
    fn a_past_deadline_still_polls_once() {
        let mut s = FakeStream::new(Some(1));
        quick().wait(&mut s, Instant::now() - Duration::from_millis(1), "done already").unwrap();
        assert_eq!(s.polls, 1);
    }

    #[test]
    fn run_detached_reports_whether_the_hook_finished() {
        assert!(run_detached(Box::new(|| {}), Duration::from_secs(5)));
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let start = Instant::now();
        let finished = run_detached(
            Box::new(move || {
                while !r.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }),
            Duration::from_millis(50),
        );
        assert!(!finished);
        assert!(start.elapsed() < Duration::from_secs(2));
        release.store(true, Ordering::SeqCst);
    }

    #[test]
    fn stream_watch_without_a_driver_is_library_missing() {
        if driver_present() {
            eprintln!("SKIPPED: libcuda is present here; the no-driver path is not exercised");
            return;
        }
        // SAFETY: the stream is never queried: construction fails first.
        let e = unsafe { StreamWatch::new(std::ptr::null_mut(), None) }.err().expect("no driver here");
        assert!(matches!(e, Error::LibraryMissing { .. }), "{e:?}");
    }
}
