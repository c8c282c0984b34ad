//! How a gang ended: the root cause from the run directory's records (and the launcher's
//! own stall detection), the summary lines and the exit code of `gang run`. Pure functions.

use crate::heartbeat::Stall;
use gang_protocol::heartbeat::Progress;
use gang_protocol::{signal_name, ExitRecord, ExitStatus, FailureClass, FailureKind, FailureRecord};
use std::path::Path;
use std::time::Duration;

/// Exit code of `gang run` when the gang was stopped because a rank stalled (as
/// `timeout(1)`).
pub const EXIT_STALLED: i32 = 124;

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code for `gang run` (0 only when nothing failed).
    pub code: i32,
    /// What to print to stderr, if anything: the root cause with its class, without the
    /// run directory (see [`final_line`]).
    pub message: Option<String>,
    /// The root cause of a failed attempt (`None` on success or when stopped by a signal).
    pub cause: Option<Cause>,
}

/// Why an attempt failed: the first failing rank and its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A rank recorded why it failed.
    Recorded {
        /// World rank.
        rank: usize,
        /// Panic or error.
        kind: FailureKind,
        /// Whether a restart can help, as the rank judged it.
        class: FailureClass,
        /// Its message.
        message: String,
        /// Its host, named when the gang spans several hosts.
        host: Option<String>,
    },
    /// A rank's process ended unsuccessfully without saying why.
    Exited {
        /// World rank.
        rank: usize,
        /// How it ended.
        status: ExitStatus,
        /// Its host, named when the gang spans several hosts.
        host: Option<String>,
    },
    /// The launcher found a rank stalled and stopped the gang.
    Stalled(Stall),
    /// `mpirun`/`srun` failed before any rank reported a failure.
    Launcher {
        /// `mpirun` or `srun`.
        name: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// Not every rank had started when the start timeout ran out.
    NotStarted {
        /// `mpirun` or `srun`.
        name: String,
        /// Ranks that had started.
        started: usize,
        /// Ranks of the gang.
        world: usize,
        /// The timeout, in whole seconds.
        secs: u64,
    },
}

impl Cause {
    /// The rank the cause is about, if any.
    pub fn rank(&self) -> Option<usize> {
        match self {
            Cause::Recorded { rank, .. } | Cause::Exited { rank, .. } => Some(*rank),
            Cause::Stalled(s) => Some(s.rank),
            Cause::Launcher { .. } | Cause::NotStarted { .. } => None,
        }
    }

    /// Whether a restart can mend it: a rank's own verdict when it recorded one, else
    /// transient (a rank died or stalled, the launcher failed).
    pub fn class(&self) -> FailureClass {
        match self {
            Cause::Recorded { class, .. } => *class,
            _ => FailureClass::Transient,
        }
    }
}

/// Why a failure of `class` is not restarted, for a class that no restart can mend.
pub fn why_not_restarted(class: FailureClass) -> Option<String> {
    let fix = match class {
        FailureClass::Usage => "fix the command's options",
        FailureClass::Input => "fix the input",
        _ => return None,
    };
    let article = if class == FailureClass::Input { "an" } else { "a" };
    Some(format!("not restarted: {article} {class} failure cannot be mended by a restart ({fix} and run it again)"))
}

/// The last line of a failed run: `message` (the root cause with its class), then why it
/// was not restarted, if that is to be said, then where the records are.
pub fn final_line(message: &str, not_restarted: Option<&str>, run_dir: &Path) -> String {
    match not_restarted {
        Some(why) => format!("{message}; {why}. Records: {}", run_dir.display()),
        None => format!("{message}. Records: {}", run_dir.display()),
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Recorded { rank, kind, message, host, .. } => {
                write!(f, "rank {rank}{} {}", on(host), describe_failure(*kind, message))
            }
            Cause::Exited { rank, status, host } => write!(f, "rank {rank}{} {status}", on(host)),
            Cause::Stalled(s) => write!(f, "{s}"),
            Cause::Launcher { name, status } => {
                write!(f, "{name} {status} before any rank reported a failure")
            }
            Cause::NotStarted { name, started, world, secs } => {
                write!(f, "only {started} of {world} ranks started within {secs} s ({name} did not start the others)")
            }
        }
    }
}

/// ` on HOST`, or nothing.
fn on(host: &Option<String>) -> String {
    host.as_ref().map(|h| format!(" on {h}")).unwrap_or_default()
}

/// A failed attempt, for the restart lines and the final summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    /// Attempt number.
    pub attempt: u32,
    /// Root cause.
    pub cause: Cause,
    /// The last progress the failing rank reported, if any (a stall names its own).
    pub progress: Option<Progress>,
}

impl std::fmt::Display for FailedAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.cause)?;
        match (&self.cause, &self.progress) {
            (Cause::Stalled(_), _) | (_, None) => Ok(()),
            (_, Some(p)) => write!(f, " at {p}"),
        }
    }
}

/// The exit code that reports `status`: the code itself, 128+signal for a signal, `None`
/// for success.
pub fn code_of(status: ExitStatus) -> Option<i32> {
    match status {
        ExitStatus::Code(0) => None,
        ExitStatus::Code(c) => Some(c),
        ExitStatus::Signal(s) => Some(128 + s),
    }
}

fn describe_failure(kind: FailureKind, message: &str) -> String {
    let what = match kind {
        FailureKind::Panic => "panicked",
        FailureKind::Error => "returned an error",
        _ => "failed",
    };
    format!("{what}: {message}")
}

/// Judges an attempt.
///
/// * `stopped_by`: the signal that made `gang` stop the gang, if any;
/// * `stall`: the stall for which `gang` stopped the gang, if any;
/// * `failures`, `exits`: the records of the attempt (any order);
/// * `launcher`: how `mpirun`/`srun` itself ended, named `launcher_name`;
/// * `abort_code`: whether the launcher's exit code is that of a rank's `MPI_Abort` (Open
///   MPI's mpirun), not only the status of the ranks it killed (hydra exits 9 when it
///   SIGKILLed them).
///
/// The message names the root cause and its class; [`final_line`] adds the run directory.
///
/// The root cause is the earliest failure record (a rank that knew why it failed), else
/// the stall, else the earliest unsuccessful exit record (after a stall every rank was
/// killed, so exits say nothing), else the launcher's own status. When the gang spans
/// `several_hosts`, the cause names the failing rank's host.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    several_hosts: bool,
    stopped_by: Option<i32>,
    stall: Option<&Stall>,
    failures: &[FailureRecord],
    exits: &[ExitRecord],
    launcher: ExitStatus,
    launcher_name: &str,
    abort_code: bool,
) -> Outcome {
    let launcher_code = code_of(launcher);
    if let Some(sig) = stopped_by {
        return Outcome {
            code: 128 + sig,
            message: Some(format!("gang: received {}; the gang was stopped", signal_name(sig))),
            cause: None,
        };
    }
    // The same error recorded by several ranks is one decision that reached them all (rank 0
    // decides and every rank gets its error, e.g. an unreadable input found while planning):
    // the lowest of those ranks is named, whichever wrote its record first.
    let earliest = failures.iter().min_by_key(|f| (f.time_unix_ns, f.rank));
    let root = earliest.and_then(|e| {
        failures
            .iter()
            .filter(|g| g.message == e.message && g.class == e.class && g.attempt == e.attempt)
            .min_by_key(|g| g.rank)
    });
    if let Some(f) = root {
        // The failing rank's own exit code tells, when its supervisor recorded one. A rank
        // that recorded a failure may still be killed by a signal before it exits on its own
        // (peers abort at the same moment): that signal says nothing, so then mpirun's code
        // (MPI_Abort's error code, where it is that) or the code of the failure's kind.
        let own_exit = exits.iter().find(|e| e.rank == f.rank).and_then(|e| match e.status {
            ExitStatus::Code(c) if c != 0 => Some(c),
            _ => None,
        });
        let of_kind = match f.kind {
            gang_protocol::FailureKind::Panic => 101,
            _ => 1,
        };
        return Outcome {
            code: own_exit.or(launcher_code.filter(|&c| abort_code && c != 0 && c < 128)).unwrap_or(of_kind),
            message: Some(format!(
                "gang: rank {} failed first: {} (attempt {}, host {}; {} failure). The gang was stopped",
                f.rank,
                describe_failure(f.kind, &f.message),
                f.attempt,
                f.host,
                f.class
            )),
            cause: Some(Cause::Recorded {
                rank: f.rank,
                kind: f.kind,
                class: f.class,
                message: f.message.clone(),
                host: several_hosts.then(|| f.host.clone()),
            }),
        };
    }
    if let Some(s) = stall {
        return Outcome {
            code: EXIT_STALLED,
            message: Some(format!("gang: {s} (attempt {}; transient failure). The gang was stopped", s.attempt)),
            cause: Some(Cause::Stalled(s.clone())),
        };
    }
    if let Some(e) = exits.iter().filter(|e| !e.status.success()).min_by_key(|e| (e.time_unix_ns, e.rank)) {
        return Outcome {
            code: code_of(e.status).unwrap_or(1),
            message: Some(format!(
                "gang: rank {} failed first: {} (attempt {}, host {}; transient failure). The gang was stopped",
                e.rank, e.status, e.attempt, e.host
            )),
            cause: Some(Cause::Exited { rank: e.rank, status: e.status, host: several_hosts.then(|| e.host.clone()) }),
        };
    }
    match launcher_code {
        None => Outcome { code: 0, message: None, cause: None },
        Some(code) => Outcome {
            code,
            message: Some(format!(
                "gang: {launcher_name} {launcher} before any rank reported a failure (see its \
                 messages above; transient failure)"
            )),
            cause: Some(Cause::Launcher { name: launcher_name.to_string(), status: launcher }),
        },
    }
}

/// The outcome of an attempt stopped because only `started` of `world` ranks had started
/// within the start timeout of `secs` seconds.
pub fn not_started(name: &str, started: usize, world: usize, secs: u64, attempt: u32) -> Outcome {
    let cause = Cause::NotStarted { name: name.to_string(), started, world, secs };
    Outcome {
        code: EXIT_STALLED,
        message: Some(format!(
            "gang: {cause}: a node it cannot reach, a proxy that cannot call back, or an allocation \
             that does not give the CPUs (see launcher.log; --start-timeout) (attempt {attempt}; transient \
             failure). The gang was stopped"
        )),
        cause: Some(cause),
    }
}

/// Delay before restart number `restart` (1 for the first): `base`, doubling with each
/// restart, capped at [`MAX_BACKOFF`] (or at `base` itself when that is larger).
pub fn backoff(base: Duration, restart: u32) -> Duration {
    let cap = base.max(MAX_BACKOFF);
    let factor = 1u32 << restart.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(cap)
}

/// Upper bound of the doubling restart backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `1 s`, `0.25 s`, `30 s`.
pub fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// The line printed when a failed attempt is followed by restart `restart` of `max`.
pub fn restart_line(failed: &FailedAttempt, delay: Duration, restart: u32, max: u32) -> String {
    format!(
        "gang: attempt {} failed: {failed}; restarting in {} (restart {restart} of {max})",
        failed.attempt,
        seconds(delay)
    )
}

/// The failed attempts in a few words: the first and the last, each with whether it was
/// restarted, and how many there were in between. `restarted` is how many of `failed`
/// (from the first) were followed by a restart.
pub fn history(failed: &[FailedAttempt], restarted: usize, max: u32) -> String {
    let part = |i: usize| {
        let f = &failed[i];
        if i < restarted {
            format!("attempt {}: {f}; restarted ({} of {max})", f.attempt, i + 1)
        } else {
            format!("attempt {}: {f}", f.attempt)
        }
    };
    match failed.len() {
        0 => String::new(),
        1 => part(0),
        2 => format!("{}; {}", part(0), part(1)),
        n => format!(
            "{}; ... ({} more failed attempt{}); {}",
            part(0),
            n - 2,
            if n == 3 { "" } else { "s" },
            part(n - 1)
        ),
    }
}

/// The summary of a job that succeeded on attempt `attempt` after the restarts of `failed`.
pub fn success_summary(failed: &[FailedAttempt], max: u32, attempt: u32, run_dir: &Path) -> String {
    format!("gang: {}; attempt {attempt} succeeded. Records: {}", history(failed, failed.len(), max), run_dir.display())
}

/// The summary of a job whose restart budget `max` is used up (the last of `failed` was not
/// restarted); the root cause's [`final_line`] follows it.
pub fn exhausted_summary(failed: &[FailedAttempt], max: u32) -> String {
    format!(
        "gang: giving up: all {max} restart{} used (--max-restarts {max}); {}",
        if max == 1 { "" } else { "s" },
        history(failed, failed.len().saturating_sub(1), max),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(rank: usize, status: ExitStatus, t: u128) -> ExitRecord {
        ExitRecord { rank, attempt: 0, pid: 100 + rank as u32, status, host: "n1".into(), time_unix_ns: t }
    }

    fn failure(rank: usize, kind: FailureKind, msg: &str, t: u128) -> FailureRecord {
        let mut f = FailureRecord::now(rank, 0, kind, msg.into());
        f.host = "n1".into();
        f.time_unix_ns = t;
        f
    }

    #[test]
    fn ranks_that_never_start_are_a_transient_failure_naming_the_count() {
        let o = not_started("mpirun", 2, 4, 300, 0);
        assert_eq!(o.code, EXIT_STALLED);
        let cause = o.cause.unwrap();
        assert_eq!(cause.to_string(), "only 2 of 4 ranks started within 300 s (mpirun did not start the others)");
        assert_eq!((cause.class(), cause.rank()), (FailureClass::Transient, None));
        assert!(o.message.unwrap().ends_with("(attempt 0; transient failure). The gang was stopped"));
    }

    #[test]
    fn a_gang_over_several_hosts_names_the_failing_ranks_host_in_its_cause() {
        let mut e = exit(3, ExitStatus::Signal(9), 5);
        e.host = "n2".into();
        let exits = [exit(0, ExitStatus::Code(0), 1), e];
        let o = judge(true, None, None, &[], &exits, ExitStatus::Code(143), "srun", true);
        assert_eq!(o.cause.unwrap().to_string(), "rank 3 on n2 was killed by signal 9 (SIGKILL)");
        let o = judge(false, None, None, &[], &exits, ExitStatus::Code(143), "srun", true);
        assert_eq!(o.cause.unwrap().to_string(), "rank 3 was killed by signal 9 (SIGKILL)");
        let f = failure(1, FailureKind::Error, "Input/output error", 2);
        let o = judge(true, None, None, &[f], &exits, ExitStatus::Code(143), "srun", true);
        assert_eq!(o.cause.unwrap().to_string(), "rank 1 on n1 returned an error: Input/output error");
    }

    fn judge_(failures: &[FailureRecord], exits: &[ExitRecord], launcher: ExitStatus) -> Outcome {
        judge(false, None, None, failures, exits, launcher, "mpirun", true)
    }

    #[test]
    fn the_same_error_on_several_ranks_names_the_lowest_rank() {
        let failures = [
            failure(1, FailureKind::Error, "x.parquet (footer, rank 0): bad", 10),
            failure(0, FailureKind::Error, "x.parquet (footer, rank 0): bad", 12),
        ];
        let m = judge_(&failures, &[], ExitStatus::Code(1)).message.unwrap();
        assert!(m.starts_with("gang: rank 0 failed first"), "{m}");
        let failures = [failure(1, FailureKind::Error, "disk full", 10), failure(0, FailureKind::Error, "later", 12)];
        let m = judge_(&failures, &[], ExitStatus::Code(1)).message.unwrap();
        assert!(m.starts_with("gang: rank 1 failed first"), "{m}");
    }

    #[test]
    fn success_is_quiet() {
        let o = judge_(&[], &[exit(0, ExitStatus::Code(0), 1), exit(1, ExitStatus::Code(0), 2)], ExitStatus::Code(0));
        assert_eq!(o, Outcome { code: 0, message: None, cause: None });
    }

    #[test]
    fn earliest_bad_exit_is_the_root_cause() {
        let exits = [
            exit(0, ExitStatus::Signal(15), 30), // killed by mpirun after rank 1 failed
            exit(1, ExitStatus::Code(3), 10),
            exit(2, ExitStatus::Code(0), 5),
        ];
        let o = judge_(&[], &exits, ExitStatus::Code(1));
        assert_eq!(o.code, 3);
        let m = o.message.unwrap();
        assert!(
            m.starts_with("gang: rank 1 failed first: exited with code 3 (attempt 0, host n1; transient failure)"),
            "{m}"
        );
        assert_eq!(final_line(&m, None, Path::new("/runs/r")), format!("{m}. Records: /runs/r"),);
    }

    #[test]
    fn a_signal_exit_maps_to_128_plus_signal() {
        let o = judge_(&[], &[exit(2, ExitStatus::Signal(9), 1)], ExitStatus::Code(137));
        assert_eq!(o.code, 137);
        assert!(o.message.unwrap().contains("rank 2 failed first: was killed by signal 9 (SIGKILL)"));
    }

    #[test]
    fn failure_records_beat_earlier_exits() {
        let exits = [exit(0, ExitStatus::Signal(15), 1), exit(3, ExitStatus::Code(7), 50)];
        let failures = [
            failure(3, FailureKind::Error, "data.parquet: bad magic", 40),
            failure(1, FailureKind::Panic, "later", 45),
        ];
        let o = judge_(&failures, &exits, ExitStatus::Code(1));
        assert_eq!(o.code, 7, "the failing rank's own exit code");
        let m = o.message.unwrap();
        assert!(m.contains("rank 3 failed first: returned an error: data.parquet: bad magic"), "{m}");
    }

    #[test]
    fn failure_without_own_exit_uses_the_launcher_code_then_the_kinds() {
        let failures = [failure(1, FailureKind::Panic, "boom", 1)];
        assert_eq!(judge_(&failures, &[], ExitStatus::Code(6)).code, 6);
        // A rank that reported a failure never yields exit code 0, even if all else was fine:
        // a panic reports 101, an error 1.
        let o = judge_(&failures, &[exit(1, ExitStatus::Code(0), 2)], ExitStatus::Code(0));
        assert_eq!(o.code, 101);
        assert!(o.message.unwrap().contains("panicked: boom"));
        let errors = [failure(1, FailureKind::Error, "bad input", 1)];
        assert_eq!(judge_(&errors, &[], ExitStatus::Code(0)).code, 1);
        // Killed by a signal after recording its failure (its peers aborted first): the
        // signal is not the rank's code; mpirun's code (MPI_Abort's) is.
        let o = judge_(&errors, &[exit(1, ExitStatus::Signal(15), 3)], ExitStatus::Code(1));
        assert_eq!(o.code, 1);
        // Hydra's 9 is the SIGKILL it sent the ranks, not MPI_Abort's code: the kind's code.
        let o = judge(false, None, None, &failures, &[], ExitStatus::Code(9), "mpirun", false);
        assert_eq!(o.code, 101);
    }

    #[test]
    fn the_rank_s_class_is_the_cause_s_class() {
        let f = failure(0, FailureKind::Error, "data.txt: unknown input format", 1).with_class(FailureClass::Input);
        let o = judge_(&[f], &[exit(0, ExitStatus::Code(2), 2)], ExitStatus::Code(2));
        let cause = o.cause.unwrap();
        assert_eq!(cause.class(), FailureClass::Input);
        let m = o.message.unwrap();
        assert!(
            m.contains("returned an error: data.txt: unknown input format (attempt 0, host n1; input failure)"),
            "{m}"
        );
        let why = why_not_restarted(cause.class()).unwrap();
        assert_eq!(
            why,
            "not restarted: an input failure cannot be mended by a restart (fix the input and run it again)"
        );
        assert!(why_not_restarted(FailureClass::Usage).unwrap().starts_with("not restarted: a usage failure"));
        assert_eq!(why_not_restarted(FailureClass::Transient), None);
        assert_eq!(
            Cause::Exited { rank: 0, status: ExitStatus::Signal(9), host: None }.class(),
            FailureClass::Transient
        );
        assert_eq!(
            final_line("gang: x", Some(&why), Path::new("/r")),
            "gang: x; not restarted: an input failure cannot be mended by a restart (fix the input and run it \
             again). Records: /r"
        );
    }

    #[test]
    fn launcher_failure_without_records() {
        let o = judge_(&[], &[], ExitStatus::Code(2));
        assert_eq!(o.code, 2);
        assert!(o.message.unwrap().starts_with("gang: mpirun exited with code 2 before any rank"));
        assert_eq!(judge_(&[], &[], ExitStatus::Signal(9)).code, 137);
    }

    #[test]
    fn a_stop_signal_wins() {
        let o =
            judge(false, Some(15), None, &[], &[exit(0, ExitStatus::Signal(15), 1)], ExitStatus::Code(1), "srun", true);
        assert_eq!(o.code, 143);
        assert!(o.message.unwrap().contains("received SIGTERM"));
    }

    fn failed(attempt: u32, cause: Cause, progress: Option<Progress>) -> FailedAttempt {
        FailedAttempt { attempt, cause, progress }
    }

    fn killed(rank: usize) -> Cause {
        Cause::Exited { rank, status: ExitStatus::Signal(9), host: None }
    }

    fn at(step: u64) -> Option<Progress> {
        Some(Progress { step, total: 100, what: "train".into(), updates: step + 1, waiting: false })
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let s = Duration::from_secs;
        let got: Vec<Duration> = (1..=7).map(|r| backoff(s(1), r)).collect();
        assert_eq!(got, [s(1), s(2), s(4), s(8), s(16), s(30), s(30)]);
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
        assert_eq!(backoff(Duration::from_millis(200), 2), Duration::from_millis(400));
        assert_eq!(backoff(s(45), 3), s(45), "a base above the cap is kept");
        assert_eq!(backoff(s(1), 1000), s(30));
        assert_eq!(seconds(s(1)), "1 s");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25 s");
    }

    #[test]
    fn causes_read_as_the_rank_and_its_error() {
        let f = failed(0, killed(1), at(40));
        assert_eq!(f.to_string(), "rank 1 was killed by signal 9 (SIGKILL) at train step 40 of 100");
        let e = Cause::Recorded {
            rank: 2,
            kind: FailureKind::Panic,
            class: FailureClass::Transient,
            message: "boom at x.rs:3".into(),
            host: None,
        };
        assert_eq!(failed(1, e, None).to_string(), "rank 2 panicked: boom at x.rs:3");
        let l = Cause::Launcher { name: "mpirun".into(), status: ExitStatus::Code(2) };
        assert_eq!(l.to_string(), "mpirun exited with code 2 before any rank reported a failure");
        assert_eq!(l.rank(), None);
        let stall = Stall {
            host: None,
            rank: 1,
            attempt: 0,
            kind: crate::heartbeat::StallKind::Silent,
            secs: 5,
            progress: at(40),
            others: vec![],
        };
        // A stall names its progress itself, once.
        assert_eq!(
            failed(0, Cause::Stalled(stall), at(40)).to_string(),
            "rank 1 stalled (no heartbeat for 5 s, last progress: train step 40 of 100)"
        );
    }

    #[test]
    fn restart_lines_and_summaries_name_the_root_causes() {
        let f0 = failed(0, killed(1), at(40));
        assert_eq!(
            restart_line(&f0, Duration::from_secs(1), 1, 3),
            "gang: attempt 0 failed: rank 1 was killed by signal 9 (SIGKILL) at train step 40 \
             of 100; restarting in 1 s (restart 1 of 3)"
        );
        let dir = Path::new("/runs/r");
        assert_eq!(
            success_summary(std::slice::from_ref(&f0), 2, 1, dir),
            "gang: attempt 0: rank 1 was killed by signal 9 (SIGKILL) at train step 40 of 100; \
             restarted (1 of 2); attempt 1 succeeded. Records: /runs/r"
        );
        let f1 = failed(1, Cause::Exited { rank: 0, status: ExitStatus::Code(3), host: None }, None);
        assert_eq!(
            exhausted_summary(&[f0.clone(), f1.clone()], 1),
            "gang: giving up: all 1 restart used (--max-restarts 1); attempt 0: rank 1 was \
             killed by signal 9 (SIGKILL) at train step 40 of 100; restarted (1 of 1); \
             attempt 1: rank 0 exited with code 3"
        );
        // Only the first and the last failure are spelled out.
        let many = [f0.clone(), f1.clone(), f1.clone(), failed(3, killed(2), None)];
        let h = history(&many, 3, 3);
        assert!(h.starts_with("attempt 0: rank 1 was killed"), "{h}");
        assert!(h.contains("; ... (2 more failed attempts); attempt 3: rank 2 was killed"), "{h}");
        assert!(h.ends_with("(SIGKILL)"), "{h}");
    }

    #[test]
    fn a_stall_is_the_cause_unless_a_rank_recorded_one() {
        let stall = Stall {
            host: None,
            rank: 1,
            attempt: 0,
            kind: crate::heartbeat::StallKind::NoProgress,
            secs: 12,
            progress: at(40),
            others: vec![0],
        };
        // After a stall every rank was killed by the launcher: those exits are not the cause.
        let exits = [exit(0, ExitStatus::Signal(15), 1), exit(1, ExitStatus::Signal(15), 2)];
        let o = judge(false, None, Some(&stall), &[], &exits, ExitStatus::Code(1), "mpirun", true);
        assert_eq!(o.code, EXIT_STALLED);
        assert_eq!(o.cause, Some(Cause::Stalled(stall.clone())));
        assert!(o.message.unwrap().starts_with("gang: rank 1 stalled (no progress for 12 s"));
        let failures = [failure(2, FailureKind::Error, "disk full", 5)];
        let o = judge(false, None, Some(&stall), &failures, &exits, ExitStatus::Code(1), "mpirun", true);
        assert_eq!(o.cause.unwrap().rank(), Some(2));
    }
}
