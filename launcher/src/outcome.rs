//! How a gang ended: the root cause from the run directory's records, the summary line and
//! the exit code of `gang run`. Pure functions of the records.

use gang_protocol::{signal_name, ExitRecord, ExitStatus, FailureKind, FailureRecord};
use std::path::Path;

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code for `gang run` (0 only when nothing failed).
    pub code: i32,
    /// What to print to stderr, if anything.
    pub message: Option<String>,
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

fn describe_failure(f: &FailureRecord) -> String {
    let what = match f.kind {
        FailureKind::Panic => "panicked",
        FailureKind::Error => "returned an error",
        _ => "failed",
    };
    format!("{what}: {}", f.message)
}

/// Judges an attempt.
///
/// * `stopped_by`: the signal that made `gang` stop the gang, if any;
/// * `failures`, `exits`: the records of the attempt (any order);
/// * `launcher`: how `mpirun`/`srun` itself ended, named `launcher_name`.
///
/// The root cause is the earliest failure record (a rank that knew why it failed), else
/// the earliest unsuccessful exit record, else the launcher's own status.
pub fn judge(
    stopped_by: Option<i32>,
    failures: &[FailureRecord],
    exits: &[ExitRecord],
    launcher: ExitStatus,
    launcher_name: &str,
    run_dir: &Path,
) -> Outcome {
    let records = run_dir.display();
    let launcher_code = code_of(launcher);
    if let Some(sig) = stopped_by {
        return Outcome {
            code: 128 + sig,
            message: Some(format!(
                "gang: received {}; the gang was stopped. Records: {records}",
                signal_name(sig)
            )),
        };
    }
    if let Some(f) = failures.iter().min_by_key(|f| (f.time_unix_ns, f.rank)) {
        // The failing rank's own exit tells the code, when its supervisor recorded one.
        let own_exit = exits
            .iter()
            .find(|e| e.rank == f.rank)
            .and_then(|e| code_of(e.status));
        return Outcome {
            code: own_exit.or(launcher_code).unwrap_or(1),
            message: Some(format!(
                "gang: rank {} failed first: {} (attempt {}, host {}). The gang was stopped. \
                 Records: {records}",
                f.rank,
                describe_failure(f),
                f.attempt,
                f.host
            )),
        };
    }
    if let Some(e) = exits
        .iter()
        .filter(|e| !e.status.success())
        .min_by_key(|e| (e.time_unix_ns, e.rank))
    {
        return Outcome {
            code: code_of(e.status).unwrap_or(1),
            message: Some(format!(
                "gang: rank {} failed first: {} (attempt {}, host {}). The gang was stopped. \
                 Records: {records}",
                e.rank, e.status, e.attempt, e.host
            )),
        };
    }
    match launcher_code {
        None => Outcome {
            code: 0,
            message: None,
        },
        Some(code) => Outcome {
            code,
            message: Some(format!(
                "gang: {launcher_name} {launcher} before any rank reported a failure (see its \
                 messages above). Records: {records}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(rank: usize, status: ExitStatus, t: u128) -> ExitRecord {
        ExitRecord {
            rank,
            attempt: 0,
            pid: 100 + rank as u32,
            status,
            host: "n1".into(),
            time_unix_ns: t,
        }
    }

    fn failure(rank: usize, kind: FailureKind, msg: &str, t: u128) -> FailureRecord {
        let mut f = FailureRecord::now(rank, 0, kind, msg.into());
        f.host = "n1".into();
        f.time_unix_ns = t;
        f
    }

    fn judge_(failures: &[FailureRecord], exits: &[ExitRecord], launcher: ExitStatus) -> Outcome {
        judge(
            None,
            failures,
            exits,
            launcher,
            "mpirun",
            Path::new("/runs/r"),
        )
    }

    #[test]
    fn success_is_quiet() {
        let o = judge_(
            &[],
            &[
                exit(0, ExitStatus::Code(0), 1),
                exit(1, ExitStatus::Code(0), 2),
            ],
            ExitStatus::Code(0),
        );
        assert_eq!(
            o,
            Outcome {
                code: 0,
                message: None
            }
        );
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
            m.starts_with("gang: rank 1 failed first: exited with code 3 (attempt 0"),
            "{m}"
        );
        assert!(m.ends_with("Records: /runs/r"), "{m}");
    }

    #[test]
    fn a_signal_exit_maps_to_128_plus_signal() {
        let o = judge_(
            &[],
            &[exit(2, ExitStatus::Signal(9), 1)],
            ExitStatus::Code(137),
        );
        assert_eq!(o.code, 137);
        assert!(o
            .message
            .unwrap()
            .contains("rank 2 failed first: was killed by signal 9 (SIGKILL)"));
    }

    #[test]
    fn failure_records_beat_earlier_exits() {
        let exits = [
            exit(0, ExitStatus::Signal(15), 1),
            exit(3, ExitStatus::Code(7), 50),
        ];
        let failures = [
            failure(3, FailureKind::Error, "data.parquet: bad magic", 40),
            failure(1, FailureKind::Panic, "later", 45),
        ];
        let o = judge_(&failures, &exits, ExitStatus::Code(1));
        assert_eq!(o.code, 7, "the failing rank's own exit code");
        let m = o.message.unwrap();
        assert!(
            m.contains("rank 3 failed first: returned an error: data.parquet: bad magic"),
            "{m}"
        );
    }

    #[test]
    fn failure_without_own_exit_uses_the_launcher_code_then_1() {
        let failures = [failure(1, FailureKind::Panic, "boom", 1)];
        assert_eq!(judge_(&failures, &[], ExitStatus::Code(6)).code, 6);
        // A rank that reported a failure never yields exit code 0, even if all else was fine.
        let o = judge_(
            &failures,
            &[exit(1, ExitStatus::Code(0), 2)],
            ExitStatus::Code(0),
        );
        assert_eq!(o.code, 1);
        assert!(o.message.unwrap().contains("panicked: boom"));
    }

    #[test]
    fn launcher_failure_without_records() {
        let o = judge_(&[], &[], ExitStatus::Code(2));
        assert_eq!(o.code, 2);
        assert!(o
            .message
            .unwrap()
            .starts_with("gang: mpirun exited with code 2 before any rank"));
        assert_eq!(judge_(&[], &[], ExitStatus::Signal(9)).code, 137);
    }

    #[test]
    fn a_stop_signal_wins() {
        let o = judge(
            Some(15),
            &[],
            &[exit(0, ExitStatus::Signal(15), 1)],
            ExitStatus::Code(1),
            "srun",
            Path::new("/r"),
        );
        assert_eq!(o.code, 143);
        assert!(o.message.unwrap().contains("received SIGTERM"));
    }
}
