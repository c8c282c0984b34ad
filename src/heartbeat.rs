//! Heartbeats and progress from a rank to the `gang` launcher.
//!
//! Under MPI, when the launcher set [`vars::HEARTBEAT`] and [`vars::TOKEN`], [`crate::init`]
//! starts one background thread that sends a [`Heartbeat`] every second (rank, attempt,
//! token, pid and the latest progress). The launcher kills and restarts a gang in which a
//! rank that has sent heartbeats falls silent, or a rank that has reported progress stops
//! reporting it, for `--stall-timeout` seconds (see `gang run --help`).
//!
//! [`report`] (what [`Context::progress`](crate::Context::progress) calls) only stores
//! into atomics and, when the description changes, a mutex-guarded string: no system call,
//! no allocation in the steady state. The thread never blocks the rank: its socket is
//! non-blocking and every send error (the launcher is gone or busy) is ignored.
//!
//! The progress slot is per process: on the Local backend the ranks (threads) of the
//! process share it, last writer wins; heartbeats are only sent under MPI.

// Heartbeats are sent by ranks of Process scope (MPI) only.
#![cfg_attr(not(feature = "mpi"), allow(dead_code))]

use gang_protocol::heartbeat::{Address, Heartbeat, HeartbeatSender, Progress, INTERVAL};
use gang_protocol::vars;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

/// The latest progress of this process.
struct ProgressSlot {
    updates: AtomicU64,
    step: AtomicU64,
    total: AtomicU64,
    what: Mutex<String>,
}

static PROGRESS: ProgressSlot = ProgressSlot {
    updates: AtomicU64::new(0),
    step: AtomicU64::new(0),
    total: AtomicU64::new(0),
    what: Mutex::new(String::new()),
};

/// Scopes in which this process waits for the other ranks ([`waiting_for_peers`]).
static WAITING: AtomicU64 = AtomicU64::new(0);

static STARTED: Once = Once::new();

/// Records this rank's progress: step `step` of `total` (0 when unknown) of `what`.
/// Cheap enough to call on every step.
pub fn report(step: u64, total: u64, what: &str) {
    PROGRESS.step.store(step, Ordering::Relaxed);
    PROGRESS.total.store(total, Ordering::Relaxed);
    // The heartbeat thread holds the lock for a copy once a second; a poisoned lock
    // (impossible: nothing panics while holding it) just keeps the old description.
    if let Ok(mut w) = PROGRESS.what.lock() {
        if *w != what {
            w.clear();
            w.push_str(what);
        }
    }
    PROGRESS.updates.fetch_add(1, Ordering::Release);
}

/// Counts as progress without changing what was last reported: for long work inside a
/// step (writing a checkpoint), so that the launcher does not take it for a stall. Nothing
/// happens before the first [`report`].
pub(crate) fn pulse() {
    let _ = PROGRESS.updates.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u > 0).then_some(u + 1));
}

/// Marks this rank as waiting in a collective for the other ranks until the guard drops:
/// the launcher does not count its lack of progress as a stall while another rank still
/// progresses (a straggler writing its checkpoint shard).
pub(crate) fn waiting_for_peers() -> WaitingForPeers {
    WAITING.fetch_add(1, Ordering::AcqRel);
    // A new update, so that the launcher takes the heartbeat that says it (it keeps a
    // rank's progress only when the count of updates changes).
    pulse();
    WaitingForPeers(())
}

/// The guard of [`waiting_for_peers`].
pub(crate) struct WaitingForPeers(());

impl Drop for WaitingForPeers {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::AcqRel);
        pulse();
    }
}

/// The latest progress, or `None` before the first [`report`].
pub fn latest() -> Option<Progress> {
    let updates = PROGRESS.updates.load(Ordering::Acquire);
    if updates == 0 {
        return None;
    }
    Some(Progress {
        step: PROGRESS.step.load(Ordering::Relaxed),
        total: PROGRESS.total.load(Ordering::Relaxed),
        what: PROGRESS.what.lock().map(|w| w.clone()).unwrap_or_default(),
        updates,
        waiting: WAITING.load(Ordering::Acquire) > 0,
    })
}

/// Starts the heartbeat thread of this process's rank, once, if the launcher asked for
/// heartbeats. Problems are printed, never returned: heartbeats must not stop a rank.
pub(crate) fn start(rank: usize, attempt: u32) {
    let (Some(addr), Some(token)) = (env(vars::HEARTBEAT), env(vars::TOKEN)) else {
        return;
    };
    STARTED.call_once(|| {
        let addr = match Address::parse(&addr) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("gang: rank {rank}: no heartbeats: {e}");
                return;
            }
        };
        let sender = match HeartbeatSender::connect(&addr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gang: rank {rank}: no heartbeats: could not open a socket: {e}");
                return;
            }
        };
        let spawned = std::thread::Builder::new().name("gang-heartbeat".into()).spawn(move || {
            let mut beat = Heartbeat::new(&token, rank, attempt, std::process::id());
            beat.host = Some(gang_protocol::hostname());
            beat_forever(&sender, beat)
        });
        if let Err(e) = spawned {
            eprintln!("gang: rank {rank}: no heartbeats: could not start the thread: {e}");
        }
    });
}

fn beat_forever(sender: &HeartbeatSender, mut beat: Heartbeat) {
    loop {
        beat.progress = latest();
        // Ignored: the launcher may be gone (then the rank is about to be stopped anyway)
        // or busy; the next beat is a second away.
        let _ = sender.send(&beat);
        beat.seq += 1;
        std::thread::sleep(INTERVAL);
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_stored_and_counted() {
        let before = latest().map(|p| p.updates).unwrap_or(0);
        report(3, 10, "train");
        report(4, 10, "train");
        let p = latest().unwrap();
        // Other tests of this process may report too; only monotonic facts are checked.
        assert!(p.updates >= before + 2);
        report(7, 0, "map");
        let p = latest().unwrap();
        assert!(p.updates >= before + 3);
        // A pulse counts as progress.
        pulse();
        assert!(latest().unwrap().updates > p.updates);
        // Waiting for peers is said while the guard lives, each change with a new update
        // (the launcher keeps a rank's progress only when the updates change).
        let before = latest().unwrap().updates;
        let guard = waiting_for_peers();
        let p = latest().unwrap();
        assert!(p.waiting && p.updates > before);
        drop(guard);
        assert!(latest().unwrap().updates > p.updates);
    }
}
