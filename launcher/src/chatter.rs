//! What of mpirun's (or srun's) stderr reaches the terminal.
//!
//! The ranks' own lines come through mpirun's stderr too, each tagged `[rank R] ` by its
//! supervisor; they are shown as they come. What mpirun, Open MPI's daemons, MPICH's hydra
//! or Slurm print about a failure they have seen (Open MPI's dashed help blocks such as
//! "Primary job terminated normally, but 1 process returned a non-zero exit code" or
//! "MPI_ABORT was invoked on rank 0", its `[host:pid] ... ORTE_ERROR_LOG` lines, hydra's
//! `=====` blocks and `[mpiexec@host] ...` lines, MPICH's `Abort(1) on node 0 ...` line on
//! the aborting rank's stderr, `srun: error: ... task 1: Exited with exit code 2`) only
//! repeats, at length, what gang's last line says. The same holds for a failing rank's own
//! announcement ("gang: rank 1 failed: ...; stopping the gang"), printed by every rank that
//! meets the same error. Such lines are held back: every line goes to the run directory's
//! `launcher.log`, and at the end of the attempt the held lines are printed only when no
//! rank's failure explains the end (mpirun failed on its own, or succeeded with warnings),
//! so a real mpirun error ("mpirun was unable to find the specified executable", "not
//! enough slots") is never swallowed. `--verbose` shows everything as it comes.
//!
//! Hydra reports a failed rank on stdout, among the ranks' output: with MPICH, stdout goes
//! through [`StdoutFilter`], which holds back that report only.

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
    /// The rank tags (`[rank R] `, or "" untagged) inside an announcement of several lines
    /// (an error whose message holds a table, such as the GPU placement check's).
    in_announcement: Vec<String>,
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
            if is_mpich_abort(rest) {
                return Some(Held::Launcher);
            }
            let tag = &line[..line.len() - rest.len()];
            return self.announcement(tag, rest).then_some(Held::Announcement);
        }
        let t = line.trim_end();
        if self.in_announcement.iter().any(|a| a.is_empty()) {
            self.announcement("", t);
            return Some(Held::Announcement);
        }
        if is_rule(t, '-') || is_rule(t, '=') {
            self.in_block = !self.in_block;
            return Some(Held::Launcher);
        }
        if self.in_block {
            return Some(Held::Launcher);
        }
        // Untagged: a rank run with --no-tag-output may announce its failure too.
        if self.announcement("", t) {
            return Some(Held::Announcement);
        }
        let launcher_says = is_host_pid_line(t)
            || is_hydra_line(t)
            || is_mpich_abort(t)
            || HYDRA_AFTERWORD.contains(&t)
            || t.starts_with("srun: ")
            || t.starts_with("slurmstepd: ")
            || t.starts_with("YOUR APPLICATION TERMINATED WITH THE EXIT STRING");
        launcher_says.then_some(Held::Launcher)
    }

    /// Whether `rest`, a line of the rank tagged `tag`, belongs to an announcement: one
    /// line, or the first or a later line of one that spans several (it ends with the
    /// line that ends "; stopping the gang").
    fn announcement(&mut self, tag: &str, rest: &str) -> bool {
        let ends = rest.trim_end().ends_with("; stopping the gang");
        if let Some(i) = self.in_announcement.iter().position(|a| a == tag) {
            if ends {
                self.in_announcement.swap_remove(i);
            }
            return true;
        }
        if is_announcement(rest) {
            return true;
        }
        if is_announcement_start(rest) && !ends {
            self.in_announcement.push(tag.to_string());
            return true;
        }
        false
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

/// Sorts the lines of hydra's stdout, where MPICH's `mpiexec` reports a failed rank among
/// the ranks' own output:
///
/// ```text
///
/// ===================================================================================
/// =   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
/// =   PID 9847 RUNNING AT vm
/// =   EXIT CODE: 9
/// ...
/// ===================================================================================
/// YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)
/// This typically refers to a problem with your application.
/// Please see the FAQ page for debugging suggestions
/// ```
///
/// Only that report is held back. The ranks' stdout is their data (and under
/// `--no-tag-output` a rank may print rules of its own), so a rule of `=` is held only
/// while the next line may still show it to be hydra's (a line starting `=   `), and an
/// empty line only while a rule may follow it; otherwise they are printed in order.
#[derive(Debug, Default)]
pub struct StdoutFilter {
    /// An empty line and/or a rule not yet known to be hydra's.
    pending: Vec<Vec<u8>>,
    in_block: bool,
    after_block: bool,
    held: Vec<Vec<u8>>,
}

impl StdoutFilter {
    /// A filter with nothing held.
    pub fn new() -> StdoutFilter {
        StdoutFilter::default()
    }

    /// Takes one line (without its newline; the ranks' data, so bytes rather than text);
    /// returns the lines to print now, in order.
    pub fn take(&mut self, line: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let text = String::from_utf8_lossy(line);
        let t = text.trim_end();
        if self.in_block {
            if is_rule(t, '=') {
                self.in_block = false;
                self.after_block = true;
            }
            self.held.push(line.to_vec());
            return out;
        }
        if self.after_block {
            if t.starts_with("YOUR APPLICATION TERMINATED WITH THE EXIT STRING") || HYDRA_AFTERWORD.contains(&t) {
                self.held.push(line.to_vec());
                return out;
            }
            self.after_block = false;
        }
        let rule_pending = self.pending.last().is_some_and(|p| is_rule(String::from_utf8_lossy(p).trim_end(), '='));
        if rule_pending && t.starts_with("=   ") {
            self.held.append(&mut self.pending);
            self.held.push(line.to_vec());
            self.in_block = true;
            return out;
        }
        if !rule_pending && !self.pending.is_empty() && is_rule(t, '=') {
            // The empty line before hydra's opening rule.
            self.pending.push(line.to_vec());
            return out;
        }
        out.append(&mut self.pending);
        if t.is_empty() || is_rule(t, '=') {
            self.pending.push(line.to_vec());
        } else {
            out.push(line.to_vec());
        }
        out
    }

    /// At the end of the stream: the lines still pending, to print.
    pub fn finish(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.pending)
    }

    /// What was held back, in order.
    pub fn held(&self) -> &[Vec<u8>] {
        &self.held
    }

    /// The held lines to print at the end of the attempt: none when a rank's failure (or
    /// the user's signal) explains the end, all of them otherwise (as [`Filter::release`]).
    pub fn release(self, rank_failed: bool) -> Vec<String> {
        if rank_failed {
            return Vec::new();
        }
        self.held.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect()
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

/// The first line of a rank's announcement of its own failure (the whole announcement when
/// it ends with "; stopping the gang").
fn is_announcement_start(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("gang: rank ") else { return false };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    rest.starts_with(" failed: ") || rest.starts_with(" panicked: ")
}

/// A line of one character repeated (Open MPI's and hydra's block rules are 70-80 long).
fn is_rule(t: &str, c: char) -> bool {
    t.len() >= 20 && t.chars().all(|x| x == c)
}

/// MPICH's hydra: `[mpiexec@host] ...` and its proxies' `[proxy:0:0@host] ...`.
fn is_hydra_line(t: &str) -> bool {
    let Some(rest) = t.strip_prefix('[') else { return false };
    let Some((inside, after)) = rest.split_once(']') else { return false };
    (inside.starts_with("mpiexec@") || inside.starts_with("proxy:")) && after.starts_with(' ')
}

/// What MPICH's library prints on a rank's stderr when it calls `MPI_Abort`: `Abort(1) on
/// node 0 (rank 0 in comm 496): application called MPI_Abort(comm=0x84000002, 1) - process 0`.
fn is_mpich_abort(s: &str) -> bool {
    s.starts_with("Abort(") && s.contains(") on node ") && s.contains("application called MPI_Abort(")
}

/// The lines hydra prints after its `BAD TERMINATION` block and exit string.
const HYDRA_AFTERWORD: [&str; 2] =
    ["This typically refers to a problem with your application.", "Please see the FAQ page for debugging suggestions"];

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
        // An announcement of several lines (a table), interleaved with another rank's
        // output: held whole; the other rank's lines and what follows are shown.
        assert!(!f.show("[rank 2] gang: rank 2 failed: GPU placement check failed:"));
        assert!(f.show("[rank 0] epoch 1"));
        assert!(!f.show("[rank 2]   rank  host  device"));
        assert!(!f.show("[rank 2]      0  vm    cuda:0; stopping the gang"));
        assert!(f.show("[rank 2] after"));
        assert!(!f.show("gang: rank 1 failed: placement:"));
        assert!(!f.show("     0  vm    cuda:0; stopping the gang"));
        assert!(f.show("plain output"));
        assert!(f.show("[rank 0] gang: rank 0 failed to say something else"));
        assert!(f.show("[rank 12] thread 'main' panicked at src/x.rs:3:5:"));
        // No record: the announcements are all the user has.
        assert_eq!(f.release(true, false).len(), 9);
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

    /// What hydra prints on stdout after a rank exited 3 and it killed the others.
    const HYDRA_REPORT: &str = "
===================================================================================
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
=   PID 9847 RUNNING AT vm
=   EXIT CODE: 9
=   CLEANING UP REMAINING PROCESSES
=   YOU CAN IGNORE THE BELOW CLEANUP MESSAGES
===================================================================================
YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)
This typically refers to a problem with your application.
Please see the FAQ page for debugging suggestions";

    fn stdout_through(f: &mut StdoutFilter, text: &str) -> Vec<String> {
        let mut shown: Vec<Vec<u8>> = text.lines().flat_map(|l| f.take(l.as_bytes())).collect();
        shown.extend(f.finish());
        shown.into_iter().map(|l| String::from_utf8(l).unwrap()).collect()
    }

    #[test]
    fn hydra_s_report_on_stdout_is_held_and_the_ranks_output_is_not() {
        let mut f = StdoutFilter::new();
        let text = format!("[rank 0] rank 0 of 4 ready\n[rank 1] done\n{HYDRA_REPORT}\n[rank 2] late line");
        let shown = stdout_through(&mut f, &text);
        assert_eq!(shown, ["[rank 0] rank 0 of 4 ready", "[rank 1] done", "[rank 2] late line"]);
        assert_eq!(f.held().len(), HYDRA_REPORT.lines().count());
        assert_eq!(f.release(false).len(), 11);
    }

    #[test]
    fn a_rank_s_own_rules_and_empty_lines_on_stdout_pass_in_order() {
        let mut f = StdoutFilter::new();
        let rule = "=".repeat(30);
        let text = format!("table\n\n{rule}\n= not hydra\n{rule}\n\n\nend\n{rule}");
        let shown = stdout_through(&mut f, &text);
        assert_eq!(shown, text.lines().collect::<Vec<_>>());
        assert!(f.held().is_empty());
        // The last empty line is printed once the stream ends.
        let mut f = StdoutFilter::new();
        assert!(f.take(b"").is_empty());
        assert_eq!(f.finish(), [b""]);
        // Bytes that are not UTF-8 pass unchanged.
        assert_eq!(f.take(b"[rank 0] \xff\xfe"), [b"[rank 0] \xff\xfe"]);
    }

    #[test]
    fn mpich_s_abort_line_and_hydra_s_messages_are_launcher_lines() {
        let mut f = Filter::new();
        for l in [
            "[rank 0] Abort(1) on node 0 (rank 0 in comm 496): application called MPI_Abort(comm=0x84000002, 1) - process 0",
            "Abort(101) on node 1 (rank 1 in comm 0): application called MPI_Abort(MPI_COMM_WORLD, 101) - process 1",
            "[mpiexec@vm] HYDU_process_mfile_token (utils/args/args.c:295): token slots not supported at this time",
            "[proxy:0:0@vm] HYD_pmcd_pmip_control_cmd_cb (pm/pmiserv/pmip_cb.c:480): assert (!closed) failed",
            "This typically refers to a problem with your application.",
        ] {
            assert!(!f.show(l), "{l}");
        }
        assert!(f.show("[rank 0] Abort(3) is what my program prints"));
        assert!(f.show("[mpiexec is not a host]"));
        assert_eq!(f.release(false, false).len(), 5);
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
