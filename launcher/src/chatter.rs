//! What of mpirun's (or srun's) stderr reaches the terminal.
//!
//! The ranks' own lines come through mpirun's stderr too, each tagged `[rank R] ` by its
//! supervisor; they are shown as they come. What mpirun, Open MPI's daemons, MPICH's hydra
//! or Slurm print about a failure they have seen (Open MPI's dashed help blocks such as
//! "Primary job terminated normally, but 1 process returned a non-zero exit code" or
//! "MPI_ABORT was invoked on rank 0", its `[host:pid] ... ORTE_ERROR_LOG` lines, hydra's
//! `=====` blocks, `srun: error: ... task 1: Exited with exit code 2`) only repeats, at
//! length, what gang's last line says. The same holds for a failing rank's own
//! announcement ("gang: rank 1 failed: ...; stopping the gang"), printed by every rank that
//! meets the same error. Such lines are held back: every line goes to the run directory's
//! `launcher.log`, and at the end of the attempt the held lines are printed only when no
//! rank's failure explains the end (mpirun failed on its own, or succeeded with warnings),
//! so a real mpirun error ("mpirun was unable to find the specified executable", "not
//! enough slots") is never swallowed. `--verbose` shows everything as it comes.

/// Why a line was held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// mpirun's, its daemons' or Slurm's own words about the job.
    Launcher,
    /// A rank's announcement of its own failure (the root cause line repeats it).
    Announcement,
}

/// Sorts the lines of mpirun's stderr into shown now and held back.
#[derive(Debug, Default)]
pub struct Filter {
    /// Inside an Open MPI `-----` or a hydra `=====` block.
    in_block: bool,
    held: Vec<(Held, String)>,
}

impl Filter {
    /// A filter with nothing held.
    pub fn new() -> Filter {
        Filter::default()
    }

    /// Takes one line (without its newline); returns whether to show it now. A line not
    /// shown is kept for [`Filter::release`].
    pub fn show(&mut self, line: &str) -> bool {
        match self.classify(line) {
            None => true,
            Some(kind) => {
                self.held.push((kind, line.to_string()));
                false
            }
        }
    }

    fn classify(&mut self, line: &str) -> Option<Held> {
        if let Some(rest) = strip_rank_tag(line) {
            return is_announcement(rest).then_some(Held::Announcement);
        }
        let t = line.trim_end();
        if is_rule(t, '-') || is_rule(t, '=') {
            self.in_block = !self.in_block;
            return Some(Held::Launcher);
        }
        if self.in_block {
            return Some(Held::Launcher);
        }
        // Untagged: a rank run with --no-tag-output may announce its failure too.
        if is_announcement(t) {
            return Some(Held::Announcement);
        }
        let launcher_says = is_host_pid_line(t)
            || t.starts_with("srun: ")
            || t.starts_with("slurmstepd: ")
            || t.starts_with("YOUR APPLICATION TERMINATED WITH THE EXIT STRING");
        launcher_says.then_some(Held::Launcher)
    }

    /// The held lines to print at the end of the attempt: none of mpirun's when a rank's
    /// failure (or the user's signal) explains the end, all of them otherwise; the ranks'
    /// announcements only when no rank recorded its failure (the root cause line then names
    /// only an exit code).
    pub fn release(self, rank_failed: bool, recorded: bool) -> Vec<String> {
        self.held
            .into_iter()
            .filter(|(kind, _)| match kind {
                Held::Launcher => !rank_failed,
                Held::Announcement => !recorded,
            })
            .map(|(_, l)| l)
            .collect()
    }
}

/// The rest of a `[rank R] ` line.
fn strip_rank_tag(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("[rank ")?;
    let (digits, rest) = rest.split_once("] ").or_else(|| rest.strip_suffix(']').map(|d| (d, "")))?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(rest)
}

/// A rank's announcement of its own failure: the gang library's "gang: rank R failed: ...;
/// stopping the gang" (or "panicked"), and gang-rank's "gang-rank: ..." for an error found
/// before the gang's work began.
fn is_announcement(s: &str) -> bool {
    if s.starts_with("gang-rank: ") {
        return true;
    }
    let Some(rest) = s.strip_prefix("gang: rank ") else { return false };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    (rest.starts_with(" failed: ") || rest.starts_with(" panicked: ")) && s.ends_with("; stopping the gang")
}

/// A line of one character repeated (Open MPI's and hydra's block rules are 70-80 long).
fn is_rule(t: &str, c: char) -> bool {
    t.len() >= 20 && t.chars().all(|x| x == c)
}

/// Open MPI's `[host:pid] ...` prefix (its ORTE_ERROR_LOG lines, "1 more process has sent
/// help message", "Set MCA parameter ...").
fn is_host_pid_line(t: &str) -> bool {
    let Some(rest) = t.strip_prefix('[') else { return false };
    let Some((inside, after)) = rest.split_once(']') else { return false };
    let Some((host, pid)) = inside.rsplit_once(':') else { return false };
    !host.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && after.starts_with(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Open MPI 4.1 prints after a rank exits with code 2 and another calls MPI_Abort.
    const OPEN_MPI: &str = "\
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
MPI_ABORT was invoked on rank 0 in communicator MPI_COMM_WORLD
with errorcode 1.
--------------------------------------------------------------------------
[vm:11683] 1 more process has sent help message help-mpi-api.txt / mpi-abort
[vm:11683] Set MCA parameter \"orte_base_help_aggregate\" to 0 to see all help / error messages
[vm:01234] [[16728,0],0] ORTE_ERROR_LOG: Not found in file base/plm_base_launch_support.c at line 1234";

    #[test]
    fn open_mpi_banners_are_held_and_rank_lines_shown() {
        let mut f = Filter::new();
        assert!(f.show("[rank 0] epoch 1: loss 0.5"));
        for l in OPEN_MPI.lines() {
            assert!(!f.show(l), "{l}");
        }
        // After the blocks, ordinary lines pass again.
        assert!(f.show("[rank 1] ------------------------------"), "a rank's own rule is its output");
        assert!(f.show("gang: warning: something the supervisor said"));
        assert!(f.release(true, true).is_empty());
    }

    #[test]
    fn announcements_are_held_once_recorded() {
        let mut f = Filter::new();
        assert!(!f.show("[rank 0] gang: rank 0 failed: execute: x.parquet: bad magic; stopping the gang"));
        assert!(!f.show("[rank 1] gang: rank 1 panicked: boom at src/x.rs:3; stopping the gang"));
        assert!(!f.show("[rank 0] gang-rank: data.txt: unknown input format"));
        assert!(!f.show("gang: rank 3 failed: init: mismatch; stopping the gang"));
        assert!(f.show("[rank 0] gang: rank 0 failed to say something else"));
        assert!(f.show("[rank 12] thread 'main' panicked at src/x.rs:3:5:"));
        // No record: the announcements are all the user has.
        assert_eq!(f.release(true, false).len(), 4);
    }

    #[test]
    fn mpirun_s_own_failure_is_shown_at_the_end() {
        let mut f = Filter::new();
        let block = "\
--------------------------------------------------------------------------
mpirun was unable to find the specified executable file, and therefore
did not launch the job.
--------------------------------------------------------------------------";
        for l in block.lines() {
            assert!(!f.show(l));
        }
        assert_eq!(f.release(false, false), block.lines().collect::<Vec<_>>());
    }

    #[test]
    fn hydra_and_slurm_lines_are_launcher_lines() {
        let mut f = Filter::new();
        for l in [
            "===================================================================================",
            "=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES",
            "=   EXIT CODE: 9",
            "===================================================================================",
            "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)",
            "srun: error: n1: task 1: Exited with exit code 3",
            "slurmstepd: error: *** STEP 12.0 ON n1 CANCELLED AT 2026-12-01T10:00:00 ***",
        ] {
            assert!(!f.show(l), "{l}");
        }
        assert!(f.show("[rank x] not a tag"));
        assert!(f.show("[not:a pid] x"));
    }
}
