//! Fault injection for tests and demos: `GANG_FAULT`, honoured only when set.
//!
//! ```text
//! GANG_FAULT="rank=1,step=40,kind=kill"
//! GANG_FAULT="rank=0,step=20,kind=crash-during-checkpoint; rank=2,step=60,kind=hang"
//! ```
//!
//! Each fault names a rank, a step (of training, or a partition count: whatever the code
//! that calls [`FaultPlan::check`] counts), a kind, and optionally the attempt it fires in
//! (`attempt=0` by default, so that a restarted gang runs clean). Kinds:
//! `kill` (SIGKILL, no last words), `panic`, `hang` (sleeps forever: a stall),
//! `exit` (exit code 3), `crash-during-checkpoint` (dies after writing its checkpoint shard,
//! before the vote), `corrupt-latest-checkpoint` (damages the newest complete
//! checkpoint, then dies) and `slow` (sleeps `ms=N` milliseconds at this step and every
//! later one: a slow rank, or a long job to interrupt from outside).

use crate::error::{Error, Result};

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL this process.
    Kill,
    /// Panic.
    Panic,
    /// Stop making progress forever (a stalled rank).
    Hang,
    /// Exit with code 3.
    Exit,
    /// Die between writing this rank's checkpoint shard and the vote.
    CrashDuringCheckpoint,
    /// Damage the newest complete checkpoint, then die.
    CorruptLatestCheckpoint,
    /// Sleep this many milliseconds at the step and at every later one.
    Slow(u64),
    /// Take this many milliseconds longer to write this rank's shard of the step's
    /// checkpoint, reporting progress as a slow disk's writer does (a straggler).
    SlowCheckpoint(u64),
}

impl std::str::FromStr for FaultKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "kill" => FaultKind::Kill,
            "panic" => FaultKind::Panic,
            "hang" => FaultKind::Hang,
            "exit" => FaultKind::Exit,
            "crash-during-checkpoint" => FaultKind::CrashDuringCheckpoint,
            "corrupt-latest-checkpoint" => FaultKind::CorruptLatestCheckpoint,
            "slow" => FaultKind::Slow(0),
            "slow-checkpoint" => FaultKind::SlowCheckpoint(0),
            other => {
                return Err(Error::Environment(format!(
                    "GANG_FAULT: unknown kind {other:?} (kill, panic, hang, exit, crash-during-checkpoint, \
                     corrupt-latest-checkpoint, slow, slow-checkpoint)"
                )))
            }
        })
    }
}

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The rank it hits.
    pub rank: usize,
    /// The step at which it fires.
    pub step: u64,
    /// What it does.
    pub kind: FaultKind,
    /// The attempt in which it fires.
    pub attempt: u32,
}

/// The faults of this run (empty unless `GANG_FAULT` is set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    faults: Vec<Fault>,
}

impl FaultPlan {
    /// Reads `GANG_FAULT`.
    ///
    /// # Errors
    /// [`Error::Environment`] describing the malformed part.
    pub fn from_env() -> Result<FaultPlan> {
        match std::env::var("GANG_FAULT") {
            Ok(v) if !v.trim().is_empty() => FaultPlan::parse(&v),
            _ => Ok(FaultPlan::default()),
        }
    }

    /// Parses `rank=R,step=S,kind=K[,attempt=A][,ms=M]` items separated by `;` (`ms` is the
    /// sleep of `kind=slow`).
    ///
    /// # Errors
    /// [`Error::Environment`] describing the malformed part.
    pub fn parse(spec: &str) -> Result<FaultPlan> {
        let mut faults = Vec::new();
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (mut rank, mut step, mut kind, mut attempt, mut ms) = (None, None, None, 0u32, None);
            for kv in item.split(',').map(str::trim) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| Error::Environment(format!("GANG_FAULT: {kv:?} is not key=value (in {item:?})")))?;
                let num = |v: &str| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| Error::Environment(format!("GANG_FAULT: {k}={v:?} is not a number")))
                };
                match k.trim() {
                    "rank" => rank = Some(num(v)? as usize),
                    "step" => step = Some(num(v)?),
                    "attempt" => attempt = num(v)? as u32,
                    "ms" => ms = Some(num(v)?),
                    "kind" => kind = Some(v.trim().parse::<FaultKind>()?),
                    other => {
                        return Err(Error::Environment(format!(
                            "GANG_FAULT: unknown key {other:?} (rank, step, kind, attempt, ms)"
                        )))
                    }
                }
            }
            let missing = |what: &str| Error::Environment(format!("GANG_FAULT: {item:?} has no {what}"));
            let kind = match (kind.ok_or_else(|| missing("kind"))?, ms) {
                (FaultKind::Slow(_), Some(ms)) => FaultKind::Slow(ms),
                (FaultKind::Slow(_), None) => return Err(missing("ms (the sleep of kind=slow)")),
                (FaultKind::SlowCheckpoint(_), Some(ms)) => FaultKind::SlowCheckpoint(ms),
                (FaultKind::SlowCheckpoint(_), None) => return Err(missing("ms (the delay of kind=slow-checkpoint)")),
                (_, Some(_)) => {
                    return Err(Error::Environment(format!(
                        "GANG_FAULT: {item:?}: ms is only for kind=slow and kind=slow-checkpoint"
                    )))
                }
                (k, None) => k,
            };
            faults.push(Fault {
                rank: rank.ok_or_else(|| missing("rank"))?,
                step: step.ok_or_else(|| missing("step"))?,
                kind,
                attempt,
            });
        }
        Ok(FaultPlan { faults })
    }

    /// Whether no fault is planned.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// The fault planned for `rank` at `step` in `attempt`, if any, without firing it
    /// (for faults the caller acts out itself, such as the checkpoint ones).
    pub fn due(&self, rank: usize, step: u64, attempt: u32) -> Option<FaultKind> {
        self.faults
            .iter()
            .find(|f| f.rank == rank && f.step == step && f.attempt == attempt && !matches!(f.kind, FaultKind::Slow(_)))
            .map(|f| f.kind)
    }

    /// Fires the process-level fault (`kill`, `panic`, `hang`, `exit`) planned for `rank` at
    /// `step` in `attempt`; returns the checkpoint kinds for the caller to act out, or
    /// `None` when nothing is due.
    pub fn check(&self, rank: usize, step: u64, attempt: u32) -> Option<FaultKind> {
        for f in &self.faults {
            if let (FaultKind::Slow(ms), true) = (f.kind, f.rank == rank && f.attempt == attempt && step >= f.step) {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
        let kind = self.due(rank, step, attempt)?;
        match kind {
            FaultKind::Kill | FaultKind::Panic | FaultKind::Hang | FaultKind::Exit => fire(kind, rank, step),
            _ => Some(kind),
        }
    }
}

/// Acts out a process-level fault. Does not return for `kill`, `panic`, `hang`, `exit`.
pub fn fire(kind: FaultKind, rank: usize, step: u64) -> Option<FaultKind> {
    eprintln!("gang: GANG_FAULT: rank {rank} injects {kind:?} at step {step}");
    match kind {
        FaultKind::Kill => crate::sys::kill_self(),
        FaultKind::Panic => panic!("GANG_FAULT: injected panic on rank {rank} at step {step}"),
        FaultKind::Hang => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        FaultKind::Exit => std::process::exit(3),
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_faults_with_defaults() {
        let p = FaultPlan::parse("rank=1,step=40,kind=kill; rank=0, step=7, kind=corrupt-latest-checkpoint, attempt=1")
            .unwrap();
        assert_eq!(p.due(1, 40, 0), Some(FaultKind::Kill));
        assert_eq!(p.due(1, 40, 1), None, "faults fire in attempt 0 unless told otherwise");
        assert_eq!(p.due(0, 7, 1), Some(FaultKind::CorruptLatestCheckpoint));
        assert_eq!(p.due(0, 8, 1), None);
        // Checkpoint kinds are returned for the caller to act out.
        assert_eq!(p.check(0, 7, 1), Some(FaultKind::CorruptLatestCheckpoint));
        assert!(FaultPlan::parse("").unwrap().is_empty());
        // A slow rank sleeps from its step on and is never "due" (nothing to act out).
        let p = FaultPlan::parse("rank=0,step=2,kind=slow,ms=30; rank=0,step=3,kind=panic,attempt=1").unwrap();
        assert_eq!(p.due(0, 2, 0), None);
        let t = std::time::Instant::now();
        assert_eq!(p.check(0, 1, 0), None);
        assert!(t.elapsed() < std::time::Duration::from_millis(30), "not slow before its step");
        assert_eq!(p.check(0, 5, 0), None);
        assert!(t.elapsed() >= std::time::Duration::from_millis(30), "slow at a later step");
        // A slow checkpoint is the checkpoint's to act out, at its step only.
        let p = FaultPlan::parse("rank=2,step=12,kind=slow-checkpoint,ms=9000").unwrap();
        assert_eq!(p.due(2, 12, 0), Some(FaultKind::SlowCheckpoint(9000)));
        assert_eq!(p.check(2, 12, 0), Some(FaultKind::SlowCheckpoint(9000)));
        assert_eq!(p.due(2, 13, 0), None);
    }

    #[test]
    fn malformed_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("rank=1,step=2", "no kind"),
            ("rank=1,step=x,kind=kill", "step=\"x\""),
            ("rank=1,step=2,kind=explode", "unknown kind"),
            ("rank=1,step=2,kind=slow", "has no ms"),
            ("rank=1,step=2,kind=slow-checkpoint", "has no ms"),
            ("rank=1,step=2,kind=kill,ms=5", "only for kind=slow"),
            ("rank=1,step=2,kind=kill,when=now", "unknown key"),
            ("rank1,step=2,kind=kill", "not key=value"),
        ] {
            let e = FaultPlan::parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
